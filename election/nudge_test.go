package election_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/election/electiontest"
	"github.com/sidecarhq/sidecar/fsm"
)

// TestLocal_followerCopyHoldsItsWritesWhenTheyAreAnswered: lease, lock and
// unlock through a follower, with hashicorp/raft's commit timeout (its
// only other way to tell followers of a commit when no write follows) set
// to a minute. Each answer comes once the follower's own copy holds the
// change, as through the leader: the leader's barrier carried the commit
// index. Without it each call would wait out its deadline and the copy
// would still lack the change.
func TestLocal_followerCopyHoldsItsWritesWhenTheyAreAnswered(t *testing.T) {
	t.Parallel()
	servers := tcpClusterWith(t, 3, func(c *election.ServerConfig) { c.CommitTimeout = time.Minute })
	leader, follower := leaderAndFollower(servers)
	waitFor(t, 10*time.Second, "the follower to know the leader", func() bool {
		_, addr := follower.Leader()
		return addr == leader.Addr()
	})
	l := newLocal(t, "n1", election.NewRemote(follower, nil), follower.FSM())
	call := func(what string, f func(ctx context.Context) error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := f(ctx); err != nil {
			t.Fatalf("%s through a follower: %v", what, err)
		}
		if ctx.Err() != nil {
			t.Fatalf("%s through a follower took its whole 5 s deadline", what)
		}
	}
	var lease string
	call("grant a lease", func(ctx context.Context) error {
		var err error
		lease, err = l.GrantLease(ctx, time.Minute)
		return err
	})
	if _, ok := follower.FSM().Lease(lease); !ok {
		t.Fatalf("the follower's copy lacks lease %s when its grant is answered", lease)
	}
	call("lock", func(ctx context.Context) error {
		r, err := l.Lock(ctx, election.LockSpec{Name: "job", Lease: lease})
		if err == nil && !r.Held {
			t.Fatalf("lock not held: %+v", r)
		}
		return err
	})
	if m, _ := follower.FSM().Lock("job"); m == nil || m.Holder == nil || m.Holder.ID != lease {
		t.Fatalf("the follower's copy shows lock job as %+v when its acquisition is answered", m)
	}
	call("unlock", func(ctx context.Context) error { return l.UnlockToken(ctx, "job", lease, 0) })
	if m, _ := follower.FSM().Lock("job"); m != nil && m.Holder != nil {
		t.Fatalf("the follower's copy still shows lock job held by %+v when its release is answered", m.Holder)
	}
}

// A write whose writer reads the leader's own registry (an app on the
// leader's agent) holds its nudge back, but the nudge still comes: with
// hashicorp/raft's commit timeout at a minute, the followers' copies hold
// the write within seconds. Without the held nudge they would lack it for
// that minute.
func TestServer_leaderFedWriteStillReachesTheFollowers(t *testing.T) {
	t.Parallel()
	servers := tcpClusterWith(t, 3, func(c *election.ServerConfig) { c.CommitTimeout = time.Minute })
	leader, _ := leaderAndFollower(servers)
	l := newLocal(t, "n1", election.NewRemote(leader, nil), leader.FSM())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	lease, err := l.GrantLease(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	r, err := l.Lock(ctx, election.LockSpec{Name: "job", Lease: lease})
	if err != nil || !r.Held {
		t.Fatalf("lock through the leader: %+v %v", r, err)
	}
	for _, s := range servers {
		waitFor(t, 5*time.Second, "lock job in every server's copy", func() bool {
			m, _ := s.FSM().Lock("job")
			return m != nil && m.Holder != nil
		})
	}
}

// Writes whose writers read the leader's registry add no barrier at once:
// the leader's own agent's, and a client's whose copy streams from the
// leader (it says so on its batches). A client fed by another server gets
// its barrier at once, and that barrier tells the followers of every
// write before it.
func TestRemote_leaderFedWritesHoldTheirNudge(t *testing.T) {
	t.Parallel()
	regs := map[string]*prometheus.Registry{}
	servers := tcpClusterWith(t, 3, func(c *election.ServerConfig) {
		c.CommitTimeout = time.Minute
		election.SetNudgeHold(c, time.Minute)
		regs[c.Node] = prometheus.NewRegistry()
		c.Registerer = regs[c.Node]
	})
	leader, follower := leaderAndFollower(servers)
	var leaderReg *prometheus.Registry
	for _, s := range servers {
		if s == leader {
			leaderReg = regs[s.Status().Node]
		}
	}
	nudges := func() float64 { return counterValue(t, leaderReg, "sidecar_raft_commit_nudges_total") }
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The one barrier a term starts with (leases.go) comes before the
	// writes counted here.
	select {
	case <-leader.LeaseTrackerReady():
	case <-ctx.Done():
		t.Fatal("the leader's lease tracker never led")
	}
	waitFor(t, 5*time.Second, "the term's first barrier", func() bool { return nudges() >= 1 })
	register := func(r *election.Remote, node string) {
		t.Helper()
		if _, err := r.Apply(ctx, &fsm.RegisterNode{Name: node, Address: "10.0.0.1"}); err != nil {
			t.Fatalf("register %s: %v", node, err)
		}
	}
	leaderAddr := string(leader.Addr())
	onLeader := election.NewRemote(leader, nil)
	fedClient := election.NewRemote(nil, func() []string { return []string{leaderAddr} })
	fedClient.FedBy(func() string { return leaderAddr })
	t.Cleanup(fedClient.Close)
	before := nudges()
	for i := range 3 {
		register(onLeader, "on-leader-"+strconv.Itoa(i))
		register(fedClient, "fed-client-"+strconv.Itoa(i))
	}
	// Held, not merely late: none comes while the hold lasts.
	deadline := time.Now().Add(100 * time.Millisecond)
	for time.Now().Before(deadline) {
		if n := nudges() - before; n != 0 {
			t.Fatalf("%v barriers for writes whose writers read the leader's registry, want none yet", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	otherClient := election.NewRemote(nil, func() []string { return []string{leaderAddr} })
	otherClient.FedBy(func() string { return string(follower.Addr()) })
	t.Cleanup(otherClient.Close)
	register(otherClient, "other-client")
	waitFor(t, 5*time.Second, "a barrier for the client fed by a follower", func() bool { return nudges()-before >= 1 })
	for _, s := range servers {
		waitFor(t, 5*time.Second, "every write in every server's copy", func() bool {
			for _, n := range []string{"on-leader-2", "fed-client-2", "other-client"} {
				if _, ok := s.FSM().Node(n); !ok {
					return false
				}
			}
			return true
		})
	}
}

// TestServer_metrics_leaderAndDiskGauges: a one-server cluster on disk
// reports itself leader (sidecar_raft_leader 1) with room on its disk
// (sidecar_raft_disk_full 0).
func TestServer_metrics_leaderAndDiskGauges(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	cfg := election.TestServerConfig()
	cfg.Node, cfg.Bootstrap, cfg.DataDir, cfg.RaftAddr = "s0", true, t.TempDir(), "127.0.0.1:0"
	cfg.Registerer = reg
	cfg.Logger = electiontest.Logger(t, cfg.Node)
	s, err := election.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	waitFor(t, 10*time.Second, "leadership", s.IsLeader)
	gauge := func(name string) float64 {
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			if f.GetName() == name {
				return f.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatalf("no metric %s", name)
		return 0
	}
	if v := gauge("sidecar_raft_leader"); v != 1 {
		t.Errorf("sidecar_raft_leader = %v on the leader, want 1", v)
	}
	if v := gauge("sidecar_raft_disk_full"); v != 0 {
		t.Errorf("sidecar_raft_disk_full = %v with room on the disk, want 0", v)
	}
}

// TestSafetyMargin_coversDriftAndScheduling: a sidecar stops trusting a
// hold at least 2% of the TTL (clock-rate drift) plus 5 ms (scheduling)
// before the lease can expire, for short and long TTLs alike.
func TestSafetyMargin_coversDriftAndScheduling(t *testing.T) {
	for _, ttl := range []time.Duration{0, 100 * time.Millisecond, time.Second, 10 * time.Second, time.Hour} {
		if m, least := election.SafetyMargin(ttl), ttl/50+5*time.Millisecond; m < least {
			t.Errorf("SafetyMargin(%v) = %v, less than drift and scheduling (%v)", ttl, m, least)
		}
	}
}

// A one-server cluster has no follower to tell of a commit: no barrier
// follows its writes, however they come (a dev agent's writes were two
// log entries each).
func TestServer_oneServerAppendsNoNudges(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	servers := tcpClusterWith(t, 1, func(c *election.ServerConfig) { c.Registerer = reg })
	s := servers[0]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	select {
	case <-s.LeaseTrackerReady():
	case <-ctx.Done():
		t.Fatal("the lease tracker never led")
	}
	addr := string(s.Addr())
	local := election.NewRemote(s, nil)
	remote := election.NewRemote(nil, func() []string { return []string{addr} })
	remote.FedBy(func() string { return "elsewhere:1" }) // a writer that asks for its nudge at once
	t.Cleanup(remote.Close)
	var last uint64
	for i := range 3 {
		for _, r := range []*election.Remote{local, remote} {
			res, err := r.Apply(ctx, &fsm.RegisterNode{Name: "n" + strconv.Itoa(i), Address: "10.0.0.1"})
			if err != nil {
				t.Fatal(err)
			}
			last = res.Index
		}
	}
	deadline := time.Now().Add(100 * time.Millisecond)
	for time.Now().Before(deadline) {
		if n := counterValue(t, reg, "sidecar_raft_commit_nudges_total"); n != 0 {
			t.Fatalf("%v barriers on a one-server cluster", n)
		}
		if li := s.Raft().LastIndex(); li != last {
			t.Fatalf("log at %d after the last write at %d: something followed it", li, last)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
