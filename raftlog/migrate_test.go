package raftlog

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

func TestMigrateBolt_movesLogAndVote(t *testing.T) {
	data := t.TempDir()
	boltPath, dir := filepath.Join(data, "raft.db"), filepath.Join(data, "raft-log")
	bolt, err := raftboltdb.NewBoltStore(boltPath)
	if err != nil {
		t.Fatal(err)
	}
	var logs []*raft.Log
	for i := uint64(11); i <= 1200; i++ {
		logs = append(logs, entry(i))
	}
	if err := bolt.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	bolt.SetUint64([]byte("CurrentTerm"), 9)
	bolt.SetUint64([]byte("LastVoteTerm"), 9)
	bolt.Set([]byte("LastVoteCand"), []byte("server-1"))
	bolt.Close()

	if err := MigrateBolt(boltPath, dir, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(boltPath + ".migrated"); err != nil {
		t.Fatalf("the bolt file is not kept aside: %v", err)
	}
	s := open(t, dir, Options{})
	check(t, s, 11, 1200)
	if v, _ := s.GetUint64([]byte("CurrentTerm")); v != 9 {
		t.Fatalf("term %d", v)
	}
	if v, _ := s.Get([]byte("LastVoteCand")); string(v) != "server-1" {
		t.Fatalf("vote %q", v)
	}
	// Once moved, a later start changes nothing.
	store(t, s, 1201, 1210)
	s.Close()
	if err := MigrateBolt(boltPath, dir, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	check(t, open(t, dir, Options{}), 11, 1210)
}

func TestMigrateBolt_damagedFileIsAClearError(t *testing.T) {
	data := t.TempDir()
	boltPath := filepath.Join(data, "raft.db")
	if err := os.WriteFile(boltPath, make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	err := MigrateBolt(boltPath, filepath.Join(data, "raft-log"), slog.New(slog.DiscardHandler))
	if err == nil {
		t.Fatal("a zeroed raft.db migrated")
	}
	t.Log(err)
	if _, serr := os.Stat(filepath.Join(data, "raft-log")); serr == nil {
		t.Fatal("a failed migration left a log behind")
	}
}

func TestMigrateBolt_fileCutShortIsAClearError(t *testing.T) {
	data := t.TempDir()
	boltPath := filepath.Join(data, "raft.db")
	bolt, err := raftboltdb.NewBoltStore(boltPath)
	if err != nil {
		t.Fatal(err)
	}
	var logs []*raft.Log
	for i := uint64(1); i <= 2000; i++ {
		logs = append(logs, entry(i))
	}
	bolt.StoreLogs(logs)
	bolt.Close()
	st, _ := os.Stat(boltPath)
	if err := os.Truncate(boltPath, st.Size()/3); err != nil {
		t.Fatal(err)
	}
	err = MigrateBolt(boltPath, filepath.Join(data, "raft-log"), slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), boltPath) || !strings.Contains(err.Error(), "data dir aside") {
		t.Fatalf("a raft.db cut short: %v", err)
	}
}
