package election_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/fsm"
	"github.com/sidecarhq/sidecar/internal/disktest"
)

// A single server whose data dir fills up: writes are refused with
// ErrDiskFull naming the disk, quickly, without the server losing its
// leadership; the server's own lease expiries still commit; once space is
// freed writes resume by themselves, and nothing acknowledged is lost.
func TestServer_diskFullRefusesWritesWithoutLosingLeadership(t *testing.T) {
	disk := disktest.Tmpfs(t, "12m")

	cfg := election.TestServerConfig()
	cfg.Node, cfg.DataDir, cfg.Bootstrap = "s1", filepath.Join(disk, "data"), true
	cfg.RaftAddr = "127.0.0.1:0"
	cfg.LogSegmentSize = 1 << 20
	cfg.SnapshotThreshold = 1 << 30 // no snapshot: only the log grows
	s, err := election.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	waitFor(t, 10*time.Second, "leader", s.IsLeader)
	term := s.Raft().CurrentTerm()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	id := func(i int) string { return fmt.Sprintf("i-%d", i) }
	register := func(i int) error {
		data, err := fsm.Encode(&fsm.RegisterInstance{Instance: fsm.Instance{
			ID: id(i), Name: "web", Node: "s1", Address: "10.0.0.1", Port: 80,
			Meta: map[string]string{"a": strings.Repeat("p", 500), "b": strings.Repeat("q", 500), "c": strings.Repeat("r", 500)}}})
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.ApplyEncoded(ctx, data)
		return err
	}
	if _, err := s.Apply(ctx, &fsm.RegisterNode{Name: "s1", Address: "127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	filler := disktest.Fill(t, disk)

	acked := 0
	var refusal error
	for i := 0; i < 5000; i++ {
		start := time.Now()
		err := register(i)
		if err == nil {
			acked = i + 1
			continue
		}
		if took := time.Since(start); took > time.Second {
			t.Fatalf("refusal took %v", took)
		}
		refusal = err
		break
	}
	if !errors.Is(refusal, election.ErrDiskFull) || !strings.Contains(refusal.Error(), disk) {
		t.Fatalf("after %d writes on a full disk: %v, want ErrDiskFull naming %s", acked, refusal, disk)
	}
	t.Logf("%d writes acknowledged, then: %v", acked, refusal)
	if err := s.DiskFull(); err == nil {
		t.Fatal("DiskFull says nothing")
	}
	// Each further write is refused at once, and the server keeps leading.
	for i := 0; i < 20; i++ {
		start := time.Now()
		if err := register(acked + i); !errors.Is(err, election.ErrDiskFull) {
			t.Fatalf("write %d on a full disk: %v", i, err)
		}
		if took := time.Since(start); took > time.Second {
			t.Fatalf("refusal took %v", took)
		}
	}
	// The server's own commands still commit in the room kept for them.
	lease, err := s.Apply(ctx, &fsm.GrantLease{TTL: int64(time.Second)})
	if err != nil {
		t.Fatalf("the server's own write on a full disk: %v", err)
	}
	waitFor(t, 10*time.Second, "the lease to expire on a full disk", func() bool {
		_, ok := s.FSM().Lease(lease.LeaseID)
		return !ok
	})
	if !s.IsLeader() || s.Raft().CurrentTerm() != term {
		t.Fatalf("leadership changed on a full disk: leader %v, term %d (was %d)", s.IsLeader(), s.Raft().CurrentTerm(), term)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	for register(acked) != nil {
		if time.Since(freed) > 5*time.Second {
			t.Fatal("writes did not resume within 5 s of freeing space")
		}
		time.Sleep(50 * time.Millisecond)
	}
	acked++
	t.Logf("writes resumed %v after space was freed", time.Since(freed).Round(time.Millisecond))

	// Restart: every acknowledged write is there.
	s.Close()
	cfg.Bootstrap = false
	s, err = election.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "leader after restart", s.IsLeader)
	if err := s.Raft().Barrier(10 * time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < acked; i++ {
		if _, ok := s.FSM().Instance("s1", id(i)); !ok {
			t.Fatalf("acknowledged write %d lost", i)
		}
	}
}
