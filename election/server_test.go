package election_test

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/election"
)

// A server that fails to start after opening its Raft log returns an error
// (no panic) and releases the log, so a second start on the same data dir
// does not wait forever on bolt's file lock.
func TestNewServer_failedStartReleasesDataDir(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := t.TempDir()
	cfg := election.TestServerConfig()
	cfg.Node, cfg.DataDir, cfg.Bootstrap = "s1", dir, true
	cfg.RaftAddr = taken.Addr().String() // fails after the log is open
	if _, err := election.NewServer(cfg); err == nil || !strings.Contains(err.Error(), "listen raft") {
		t.Fatalf("NewServer on a taken address = %v, want a listen error", err)
	}

	cfg.RaftAddr = "127.0.0.1:0"
	done := make(chan error, 1)
	go func() {
		s, err := election.NewServer(cfg)
		if err == nil {
			err = s.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("second start on the same data dir: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("second start on the same data dir still waits for the Raft log's file lock")
	}
}
