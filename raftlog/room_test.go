package raftlog

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sidecarhq/sidecar/internal/disktest"
)

// TestDeleteRange_overwrittenEntriesNeverComeBack: entries a new leader
// replaced must not be read back after a restart, even where the new ones
// end before the old ones did.
func TestDeleteRange_overwrittenEntriesNeverComeBack(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{SegmentSize: 1 << 20})
	store(t, s, 1, 20)
	if err := s.DeleteRange(10, 20); err != nil {
		t.Fatal(err)
	}
	// Same sizes as the old entries: old records would line up.
	var batch []*raft.Log
	for i := uint64(10); i <= 12; i++ {
		e := entry(i)
		e.Term = 99
		batch = append(batch, e)
	}
	if err := s.StoreLogs(batch); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, dir, Options{SegmentSize: 1 << 20})
	if last, _ := s.LastIndex(); last != 12 {
		t.Fatalf("last index after restart %d, want 12: overwritten entries came back", last)
	}
	var l raft.Log
	if err := s.GetLog(12, &l); err != nil || l.Term != 99 {
		t.Fatalf("entry 12: %+v, %v", l, err)
	}
}

func TestRoom_fullDiskRefusesNewWritesAndRecovers(t *testing.T) {
	disk := disktest.Tmpfs(t, "8m")
	dir := filepath.Join(disk, "raft-log")
	const seg = 1 << 20
	s := open(t, dir, Options{SegmentSize: seg, Reserve: 64 << 10})
	if err := s.Room(); err != nil {
		t.Fatalf("room on an empty disk: %v", err)
	}
	filler := disktest.Fill(t, disk) // something else fills the disk

	// Writes go on into the allocated segments until Room says no.
	next := uint64(1)
	data := make([]byte, 4000)
	for i := 0; s.Room() == nil; i++ {
		if i > 10000 {
			t.Fatal("room never ran out on a full disk")
		}
		if err := s.StoreLogs([]*raft.Log{{Index: next, Term: 1, Data: data}}); err != nil {
			t.Fatalf("a write while Room said yes: %v", err)
		}
		next++
	}
	err := s.Room()
	if !errors.Is(err, ErrDiskFull) {
		t.Fatalf("room: %v", err)
	}
	t.Logf("refused: %v", err)
	// Raft's own entries still fit in the reserve.
	for i := 0; i < 5; i++ {
		if err := s.StoreLogs([]*raft.Log{{Index: next, Term: 2, Type: raft.LogNoop}}); err != nil {
			t.Fatalf("a no-op in the reserve: %v", err)
		}
		next++
	}
	// Space freed: writes come back by themselves.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.Room() != nil {
		if time.Now().After(deadline) {
			t.Fatal("room did not come back within 5 s of freeing space")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i := 0; i < 600; i++ { // past the current segment
		if err := s.StoreLogs([]*raft.Log{{Index: next, Term: 2, Data: data}}); err != nil {
			t.Fatalf("write %d after space was freed: %v", i, err)
		}
		next++
	}
	s.Close()
	s = open(t, dir, Options{SegmentSize: seg, Reserve: 64 << 10})
	if last, _ := s.LastIndex(); last != next-1 {
		t.Fatalf("last index after reopen %d, want %d", last, next-1)
	}
}

// TestStoreLogs_diskFullMidWriteChangesNothing: a batch larger than the
// room left fails with ErrDiskFull, leaves the log as it was, and the
// store takes writes again once there is space.
func TestStoreLogs_diskFullMidWriteChangesNothing(t *testing.T) {
	disk := disktest.Tmpfs(t, "4m")
	dir := filepath.Join(disk, "raft-log")
	s := open(t, dir, Options{SegmentSize: 1 << 20})
	store(t, s, 1, 10)
	filler := disktest.Fill(t, disk)
	big := make([]*raft.Log, 0, 3)
	for i := uint64(11); i <= 13; i++ {
		big = append(big, &raft.Log{Index: i, Term: 1, Data: make([]byte, 1<<20)})
	}
	err := s.StoreLogs(big)
	if !errors.Is(err, ErrDiskFull) {
		t.Fatalf("a batch larger than the disk: %v", err)
	}
	if last, _ := s.LastIndex(); last != 10 {
		t.Fatalf("last index %d after a refused batch", last)
	}
	os.Remove(filler)
	store(t, s, 11, 20)
	s.Close()
	check(t, open(t, dir, Options{SegmentSize: 1 << 20}), 1, 20)
}
