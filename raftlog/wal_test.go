package raftlog

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func entry(i uint64) *raft.Log {
	return &raft.Log{Index: i, Term: 1 + i/10, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("command %d", i)),
		AppendedAt: time.Unix(0, int64(i)*1000)}
}

func store(t *testing.T, s *Store, from, to uint64) {
	t.Helper()
	var batch []*raft.Log
	for i := from; i <= to; i++ {
		batch = append(batch, entry(i))
		if len(batch) == 7 || i == to {
			if err := s.StoreLogs(batch); err != nil {
				t.Fatalf("store %d-%d: %v", batch[0].Index, i, err)
			}
			batch = nil
		}
	}
}

func open(t *testing.T, dir string, opts Options) *Store {
	t.Helper()
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// check asserts the store holds exactly first..last, each entry intact.
func check(t *testing.T, s *Store, first, last uint64) {
	t.Helper()
	f, _ := s.FirstIndex()
	l, _ := s.LastIndex()
	if f != first || l != last {
		t.Fatalf("first, last = %d, %d, want %d, %d", f, l, first, last)
	}
	for i := first; i <= last && last != 0; i++ {
		var got raft.Log
		if err := s.GetLog(i, &got); err != nil {
			t.Fatalf("get %d: %v", i, err)
		}
		want := entry(i)
		if got.Index != i || got.Term != want.Term || got.Type != want.Type || !bytes.Equal(got.Data, want.Data) || !got.AppendedAt.Equal(want.AppendedAt) {
			t.Fatalf("entry %d = %+v, want %+v", i, got, want)
		}
	}
	var l0 raft.Log
	if err := s.GetLog(last+1, &l0); !errors.Is(err, raft.ErrLogNotFound) {
		t.Fatalf("get past the end: %v", err)
	}
	if first > 1 {
		if err := s.GetLog(first-1, &l0); !errors.Is(err, raft.ErrLogNotFound) {
			t.Fatalf("get before the start: %v", err)
		}
	}
}

func TestStore_keepsEntriesAcrossReopenAndSegments(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentSize: 300} // a few entries per segment
	s := open(t, dir, opts)
	check(t, s, 0, 0)
	store(t, s, 1, 100)
	check(t, s, 1, 100)
	s.Close()
	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.wal"))
	if len(segs) < 5 {
		t.Fatalf("%d segments, want several", len(segs))
	}
	s = open(t, dir, opts)
	check(t, s, 1, 100)
	store(t, s, 101, 120)
	check(t, s, 1, 120)
}

func TestStore_deleteRange(t *testing.T) {
	dir := t.TempDir()
	opts := Options{SegmentSize: 300}
	s := open(t, dir, opts)
	store(t, s, 1, 100)

	// Compaction after a snapshot: a prefix.
	if err := s.DeleteRange(1, 60); err != nil {
		t.Fatal(err)
	}
	check(t, s, 61, 100)
	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.wal"))
	s.Close()
	s = open(t, dir, opts)
	if f, _ := s.FirstIndex(); f > 61 || f < 50 {
		t.Fatalf("first index after reopen %d: compaction removes whole segments only", f)
	}
	if err := s.DeleteRange(1, 60); err != nil {
		t.Fatal(err)
	}
	check(t, s, 61, 100)
	if len(segs) > 10 {
		t.Fatalf("%d segments left after compaction", len(segs))
	}

	// A new leader overwrites a suffix.
	if err := s.DeleteRange(90, 100); err != nil {
		t.Fatal(err)
	}
	check(t, s, 61, 89)
	store(t, s, 90, 95)
	check(t, s, 61, 95)
	s.Close()
	s = open(t, dir, opts)
	if err := s.DeleteRange(1, 60); err != nil {
		t.Fatal(err)
	}
	check(t, s, 61, 95)

	// A snapshot installed: everything, then entries from far ahead.
	if err := s.DeleteRange(61, 95); err != nil {
		t.Fatal(err)
	}
	check(t, s, 0, 0)
	store(t, s, 500, 510)
	check(t, s, 500, 510)
	s.Close()
	s = open(t, dir, opts)
	check(t, s, 500, 510)
	if err := s.StoreLogs([]*raft.Log{entry(600)}); err == nil {
		t.Fatal("a gap was stored")
	}
	if err := s.DeleteRange(503, 505); err == nil {
		t.Fatal("deleting from the middle succeeded")
	}
	check(t, s, 500, 510)
}

// segmentFile returns the one segment in dir.
func segmentFile(t *testing.T, dir string) string {
	t.Helper()
	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.wal"))
	if len(segs) != 1 {
		t.Fatalf("%d segments", len(segs))
	}
	return segs[0]
}

func TestOpen_refusesADamagedEntry(t *testing.T) {
	for _, which := range []uint64{1, 15, 30} { // first, middle, last
		t.Run(fmt.Sprint(which), func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir, Options{SegmentSize: 1 << 20})
			store(t, s, 1, 30)
			off := s.segs[0].offs[which-1] + headerSize + 20
			s.Close()
			path := segmentFile(t, dir)
			flip(t, path, off)
			_, err := Open(dir, Options{SegmentSize: 1 << 20})
			var ce *CorruptError
			if !errors.As(err, &ce) || ce.Index != which || ce.File != path {
				t.Fatalf("open after a flipped byte in entry %d: %v", which, err)
			}
			for _, want := range []string{path, fmt.Sprintf("entry %d ", which), "data dir aside"} {
				if !bytes.Contains([]byte(err.Error()), []byte(want)) {
					t.Fatalf("error %q does not name %q", err, want)
				}
			}
		})
	}
}

func flip(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := []byte{0}
	f.ReadAt(b, off)
	b[0] ^= 0x10
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestGetLog_damageFoundWhenReadIsFatal(t *testing.T) {
	dir := t.TempDir()
	var fatal []error
	s := open(t, dir, Options{Fatal: func(err error) { fatal = append(fatal, err) }})
	store(t, s, 1, 10)
	flip(t, segmentFile(t, dir), s.segs[0].offs[4]+headerSize+3)
	var l raft.Log
	err := s.GetLog(5, &l)
	var ce *CorruptError
	if !errors.As(err, &ce) || ce.Index != 5 {
		t.Fatalf("get a damaged entry: %v", err)
	}
	if len(fatal) != 1 {
		t.Fatalf("fatal told %d times", len(fatal))
	}
	if err := s.GetLog(6, &l); err != nil {
		t.Fatalf("the next entry: %v", err)
	}
}

func TestOpen_removesARecordTornByACrash(t *testing.T) {
	cases := map[string]func(t *testing.T, path string, lastOff, size int64){
		"cut short": func(t *testing.T, path string, lastOff, size int64) {
			if err := os.Truncate(path, lastOff+headerSize+5); err != nil {
				t.Fatal(err)
			}
		},
		"header cut short": func(t *testing.T, path string, lastOff, size int64) {
			if err := os.Truncate(path, lastOff+3); err != nil {
				t.Fatal(err)
			}
		},
		"a sector never written": func(t *testing.T, path string, lastOff, size int64) {
			// The last record made to span a sector boundary whose second
			// sector reads as zeroes.
			f, _ := os.OpenFile(path, os.O_RDWR, 0)
			defer f.Close()
			start := (lastOff/512 + 1) * 512
			if start >= size {
				t.Skip("last record within one sector")
			}
			f.WriteAt(make([]byte, size-start), start)
		},
	}
	for name, damage := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir, Options{SegmentSize: 1 << 20})
			store(t, s, 1, 20)
			big := entry(21)
			big.Data = bytes.Repeat([]byte("x"), 1500)
			if err := s.StoreLogs([]*raft.Log{big}); err != nil {
				t.Fatal(err)
			}
			lastOff, size := s.segs[0].offs[20], s.segs[0].size
			s.Close()
			damage(t, segmentFile(t, dir), lastOff, size)
			s = open(t, dir, Options{SegmentSize: 1 << 20})
			check(t, s, 1, 20)
			store(t, s, 21, 25)
			check(t, s, 1, 25)
		})
	}
}

func TestStable(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{SegmentSize: 1 << 20})
	if v, err := s.GetUint64([]byte("CurrentTerm")); v != 0 || err != nil {
		t.Fatalf("unset term: %d, %v", v, err)
	}
	if v, err := s.Get([]byte("LastVoteCand")); len(v) != 0 || err != nil {
		t.Fatalf("unset vote: %q, %v", v, err)
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 7); err != nil {
		t.Fatal(err)
	}
	if err := s.Set([]byte("LastVoteCand"), []byte("server-2")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, dir, Options{SegmentSize: 1 << 20})
	if v, _ := s.GetUint64([]byte("CurrentTerm")); v != 7 {
		t.Fatalf("term after reopen %d", v)
	}
	if v, _ := s.Get([]byte("LastVoteCand")); string(v) != "server-2" {
		t.Fatalf("vote after reopen %q", v)
	}
	s.Close()
	// The newer slot damaged (a write a crash tore): the older one holds
	// what was saved before that write.
	flip(t, filepath.Join(dir, stableName), slotSize+20)
	s = open(t, dir, Options{SegmentSize: 1 << 20})
	if v, _ := s.GetUint64([]byte("CurrentTerm")); v != 7 {
		t.Fatalf("term after the newer slot was damaged: %d", v)
	}
	if v, _ := s.Get([]byte("LastVoteCand")); len(v) != 0 {
		t.Fatalf("vote after the newer slot was damaged: %q", v)
	}
	s.Close()
	flip(t, filepath.Join(dir, stableName), 20)
	if _, err := Open(dir, Options{SegmentSize: 1 << 20}); err == nil || !bytes.Contains([]byte(err.Error()), []byte("stable store")) {
		t.Fatalf("open with both slots damaged: %v", err)
	}
}

func TestStoreLogs_refusesWritesAfterAFailure(t *testing.T) {
	dir := t.TempDir()
	var fatal int
	s := open(t, dir, Options{Fatal: func(error) { fatal++ }})
	store(t, s, 1, 5)
	s.segs[0].f.Close() // every write now fails as an I/O error would
	if err := s.StoreLogs([]*raft.Log{entry(6), entry(7)}); err == nil || !strings.Contains(err.Error(), "entries 6-7") {
		t.Fatalf("write to a closed file: %v", err)
	}
	if fatal != 1 {
		t.Fatalf("fatal told %d times", fatal)
	}
	if err := s.StoreLogs([]*raft.Log{entry(6)}); err == nil || !bytes.Contains([]byte(err.Error()), []byte("no more writes")) {
		t.Fatalf("a later write: %v", err)
	}
	if l, _ := s.LastIndex(); l != 5 {
		t.Fatalf("last index %d after failed writes", l)
	}
}

func TestStore_closedRefusesWrites(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{SegmentSize: 1 << 20})
	store(t, s, 1, 3)
	s.Close()
	if err := s.StoreLogs([]*raft.Log{entry(4)}); err == nil {
		t.Fatal("a write after Close succeeded")
	}
	var l raft.Log
	if err := s.GetLog(2, &l); !errors.Is(err, raft.ErrLogNotFound) {
		t.Fatalf("a read after Close: %v", err)
	}
	check(t, open(t, dir, Options{SegmentSize: 1 << 20}), 1, 3)
}

// Two stores on one directory would interleave their entries: the second
// open is refused while the first is open, and works once it is closed.
func TestOpen_oneProcessPerLog(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{SegmentSize: 1 << 20})
	if _, err := Open(dir, Options{SegmentSize: 1 << 20}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("a second open of the same log: %v", err)
	}
	s.Close()
	open(t, dir, Options{SegmentSize: 1 << 20}).Close()
}
