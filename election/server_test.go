package election_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/election/electiontest"
	"github.com/sidecarhq/sidecar/fsm"
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

// A leader acknowledges a keepalive only once a quorum has confirmed, after
// the keepalive arrived, that it still leads. A leader cut off (or paused
// past its successor's election) that still believes it leads must not
// acknowledge: its successor keeps the lease's deadline on its own clock,
// and the holder would trust the lease past the moment the successor can
// expire it.
func TestServer_KeepAlive_notAcknowledgedWithoutQuorum(t *testing.T) {
	// A long leader lease keeps the cut-off leader believing it leads for
	// a while: the window in which an unconfirmed keepalive was acked.
	c := electiontest.NewCluster(t, 3, func(cfg *election.ServerConfig) {
		cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = time.Second, time.Second, time.Second
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	leader := c.WaitLeader(10 * time.Second)
	res, err := leader.Apply(ctx, &fsm.GrantLease{TTL: int64(5 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leader.KeepAlive(ctx, res.LeaseID); err != nil {
		t.Fatalf("keepalive on a connected leader: %v", err)
	}
	var mine *raft.InmemTransport
	for i, s := range c.Servers {
		if s == leader {
			mine = c.Trans[i]
		}
	}
	mine.DisconnectAll()
	for _, tr := range c.Trans {
		if tr != mine {
			tr.Disconnect(mine.LocalAddr())
		}
	}
	if !leader.IsLeader() {
		t.Skip("the leader stepped down before the keepalives could be sent")
	}
	// A consistent read needs the same confirmation: each of a few in a
	// row (see below) fails, and none is answered once the confirmation
	// has failed (Raft fails it by stepping down, so a read answered by a
	// server no longer leading is one its cut-off leader let through).
	errs := make(chan error, 3)
	go func() {
		var err error
		for range 3 {
			err = leader.ConsistentRead(ctx)
			if err == nil && !leader.IsLeader() {
				t.Error("a consistent read was answered although its leader could not confirm it still led")
			}
		}
		errs <- err
	}()
	// Neither an acknowledgement nor "unknown lease" (a successor may have
	// granted it) may come from a leader it cannot confirm. A heartbeat
	// answered just before the cut can still confirm a round already begun
	// (as it would have on a working network), so each id gets a few tries
	// in a row; without the confirmation all of them were answered at once.
	for _, id := range []string{res.LeaseID, "00000000ffffffff"} {
		go func() {
			var err error
			for range 3 {
				_, err = leader.KeepAlive(ctx, id)
			}
			errs <- err
		}()
	}
	for range 3 {
		if err := <-errs; !errors.Is(err, election.ErrNotLeader) && !errors.Is(err, election.ErrUnknownOutcome) {
			t.Errorf("keepalive or consistent read on a cut-off leader = %v, want not leader", err)
		}
	}
}

// Above SnapshotAdaptAbove records the snapshot threshold follows the
// registry's size, with the configured one as its floor: a snapshot of a
// large registry is taken about once per as many entries as it holds, not
// every few entries.
func TestServer_snapshotThresholdFollowsSize(t *testing.T) {
	cfg := election.TestServerConfig()
	cfg.Node, cfg.Bootstrap, cfg.InMemory = "s1", true, true
	cfg.SnapshotThreshold, cfg.SnapshotAdaptAbove = 64, 100
	s, err := election.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitFor(t, 10*time.Second, "s1 to lead", s.IsLeader)
	ctx := context.Background()
	if _, err := s.Apply(ctx, &fsm.RegisterNode{Name: "n1", Address: "10.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 300; i++ {
		if _, err := s.Apply(ctx, &fsm.RegisterInstance{Instance: fsm.Instance{ID: fmt.Sprintf("i-%d", i), Name: "web", Node: "n1"}}); err != nil {
			t.Fatal(err)
		}
	}
	// The threshold moves only when it is off by a quarter: a tick that saw
	// the registry part way through the writes leaves it there.
	waitFor(t, 10*time.Second, "the threshold to follow the registry", func() bool {
		rc := s.Raft().ReloadableConfig()
		th, size := rc.SnapshotThreshold, uint64(s.FSM().Size())
		return th > cfg.SnapshotThreshold && th <= size && th >= size-size/4 && rc.TrailingLogs >= th
	})
	// And back down when the registry shrinks by more than a quarter.
	high := s.Raft().ReloadableConfig().SnapshotThreshold
	for i := 0; i < 200; i++ {
		if _, err := s.Apply(ctx, &fsm.DeregisterInstance{Node: "n1", ID: fmt.Sprintf("i-%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "the threshold to come down with the registry", func() bool {
		th := s.Raft().ReloadableConfig().SnapshotThreshold
		return th < high-high/4
	})
}

// The leader counts the node sessions it expires apart from apps' own
// leases (the alert on node sessions reads it): two leases run out, one
// of them a node session.
func TestServer_countsNodeSessionExpiries(t *testing.T) {
	cfg := election.TestServerConfig()
	cfg.Node, cfg.Bootstrap, cfg.InMemory = "s1", true, true
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	s, err := election.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitFor(t, 10*time.Second, "s1 to lead", s.IsLeader)
	ctx := context.Background()
	for _, g := range []*fsm.GrantLease{
		{TTL: int64(time.Second), Node: "n1", Session: true},
		{TTL: int64(time.Second), Node: "n1"},
	} {
		if _, err := s.Apply(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "both leases to expire", func() bool { return len(s.FSM().Leases()) == 0 })
	if got := counter(t, reg, "sidecar_lease_expirations_total"); got != 2 {
		t.Errorf("lease expirations %v, want 2", got)
	}
	if got := counter(t, reg, "sidecar_node_session_expirations_total"); got != 1 {
		t.Errorf("node session expirations %v, want 1", got)
	}
}
