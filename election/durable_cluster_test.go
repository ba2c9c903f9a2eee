package election_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/fsm"
)

// The leader's log write overlaps its replication, yet nothing is seen
// before the entry is on the leader's disk: with the leader's background
// sync held, a write the followers stored (Raft counts it committed) is
// neither answered nor applied on any server; once the sync runs, it is.
func TestServer_nothingIsSeenBeforeTheLeadersLogSync(t *testing.T) {
	var held atomic.Bool
	gate := make(chan struct{})
	servers := tcpClusterWith(t, 3, func(c *election.ServerConfig) {
		c.InMemory, c.DataDir = false, t.TempDir()
		c.LogBeforeSync = func(stop <-chan struct{}) {
			if held.Load() {
				select {
				case <-gate:
				case <-stop:
				}
			}
		}
	})
	released := false
	release := func() {
		if !released {
			released = true
			close(gate)
		}
	}
	defer release()
	leader, _ := leaderAndFollower(servers)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := leader.Apply(ctx, &fsm.RegisterNode{Name: "n1", Address: "10.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "every server to apply n1", func() bool {
		for _, s := range servers {
			if s.FSM().Index() < leader.FSM().Index() {
				return false
			}
		}
		return true
	})

	held.Store(true)
	base := leader.Raft().LastIndex()
	answered := make(chan error, 1)
	go func() {
		_, err := leader.Apply(ctx, &fsm.RegisterNode{Name: "n2", Address: "10.0.0.2"})
		answered <- err
	}()
	waitFor(t, 10*time.Second, "Raft to count the write committed", func() bool { return leader.Raft().CommitIndex() > base })
	// Long enough for the commit to reach the followers (the commit
	// timeout of the test timings is a few ms), had it been sent.
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) {
		select {
		case err := <-answered:
			t.Fatalf("the write was answered (%v) before the leader's own log sync", err)
		default:
		}
		for _, s := range servers {
			if s.FSM().Index() > base {
				t.Fatalf("%s applied the write before the leader's log sync (leader: %v)", s.Addr(), s.IsLeader())
			}
		}
		time.Sleep(5 * time.Millisecond)
	}

	release()
	select {
	case err := <-answered:
		if err != nil {
			t.Fatalf("the write after the sync: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the write was not answered after the sync")
	}
	waitFor(t, 10*time.Second, "every server to apply n2", func() bool {
		for _, s := range servers {
			if s.FSM().Index() <= base {
				return false
			}
		}
		return true
	})
}
