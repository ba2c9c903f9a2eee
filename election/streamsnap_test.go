package election_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/election/electiontest"
	"github.com/sidecarhq/sidecar/fsm"
)

// counter reads a counter from a registry.
func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

// A thousand clients whose change streams all need the registry again at
// once (after a leader change, after a restore) cost each server one
// snapshot encoding, not one per client, and all are caught up soon after.
func TestStream_manyClientsShareOneSnapshot(t *testing.T) {
	clients := 1000
	if raceEnabled {
		clients = 400 // the race detector allows 8,128 goroutines in all
	}
	var servers []*election.Server
	var regs []*prometheus.Registry
	var conf raft.Configuration
	for i := 0; i < 3; i++ {
		cfg := election.TestServerConfig()
		// A thousand streams fetching a snapshot at once keep the leader's
		// cores busy: with the tests' short leader lease it lost
		// leadership at every restore on a loaded machine, and the test
		// measures the streams, not elections.
		cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = 500*time.Millisecond, 500*time.Millisecond, 250*time.Millisecond
		cfg.Node = fmt.Sprintf("s%d", i)
		cfg.InMemory, cfg.RaftAddr = true, "127.0.0.1:0"
		cfg.Logger = electiontest.Logger(t, cfg.Node)
		reg := prometheus.NewRegistry()
		cfg.Registerer = reg
		s, err := election.NewServer(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		servers, regs = append(servers, s), append(regs, reg)
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(cfg.Node), Address: s.Addr()})
	}
	if err := servers[0].Raft().BootstrapCluster(conf).Error(); err != nil {
		t.Fatal(err)
	}
	leader := func() *election.Server {
		for _, s := range servers {
			if s.IsLeader() {
				return s
			}
		}
		return nil
	}
	waitFor(t, 10*time.Second, "a leader", func() bool { return leader() != nil })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	remote := election.NewRemote(nil, func() []string { return []string{string(servers[0].Addr()), string(servers[1].Addr())} })
	defer remote.Close()
	if _, err := remote.Apply(ctx, &fsm.RegisterNode{Name: "n", Address: "10.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		if _, err := remote.Apply(ctx, &fsm.RegisterInstance{Instance: fsm.Instance{ID: fmt.Sprint("web-", i), Name: "web", Node: "n", Port: i}}); err != nil {
			t.Fatal(err)
		}
	}
	addrs := func() []string {
		var out []string
		for _, s := range servers {
			out = append(out, string(s.Addr()))
		}
		return out
	}
	// Each client follows the leader, as agents do.
	replicas := make([]*fsm.FSM, clients)
	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	for i := range replicas {
		replicas[i] = fsm.New()
		r := election.NewReplica(replicas[i], addrs, nil)
		r.Prefer(func() string {
			if l := leader(); l != nil {
				return string(l.Addr())
			}
			return ""
		})
		wg.Add(1)
		go func() { defer wg.Done(); r.Run(rctx) }()
	}
	caughtUp := func(what string) time.Duration {
		start := time.Now()
		waitFor(t, 30*time.Second, what, func() bool {
			l := leader()
			if l == nil {
				return false
			}
			want := l.FSM().Index()
			for _, f := range replicas {
				if f.Index() < want {
					return false
				}
			}
			return true
		})
		return time.Since(start)
	}
	caughtUp("every client current")
	encoded := func() (n float64) {
		for _, reg := range regs {
			n += counter(t, reg, "sidecar_stream_snapshots_encoded_total")
		}
		return n
	}

	// A restore: every stream needs the whole registry again.
	before := encoded()
	var snap bytes.Buffer
	if err := servers[0].FSM().WriteSnapshot(&snap); err != nil {
		t.Fatal(err)
	}
	// Leadership may move on a busy machine: try again on the new leader
	// (restoring the same snapshot twice is harmless).
	// Only restores sent count towards the limit, not the polls between
	// elections (those once used it up during one long election).
	attempts := 0
	for {
		l := leader()
		if l == nil {
			if ctx.Err() != nil {
				t.Fatal("no leader to restore through")
			}
			time.Sleep(10 * time.Millisecond) // between elections
			continue
		}
		attempts++
		err := l.RestoreSnapshot(ctx, bytes.NewReader(snap.Bytes()))
		if err == nil {
			break
		}
		if attempts == 20 || !errors.Is(err, election.ErrNotLeader) && !errors.Is(err, election.ErrUnknownOutcome) {
			t.Fatalf("restore attempt %d: %v", attempts, err)
		}
	}
	took := caughtUp("every client current after a restore")
	// One per server and restore (a restore retried through a leader
	// change may have been applied twice), plus a few when leadership moved
	// on a busy machine: never one per client.
	if n := encoded() - before; n > float64(3*attempts+3) {
		t.Fatalf("%d clients re-fetching the registry after %d restores cost %v snapshot encodings, want about one per server and restore", clients, attempts, n)
	}
	t.Logf("%d clients caught up %v after %d restores, %v snapshot encodings", clients, took.Round(time.Millisecond), attempts, encoded()-before)

	// A leader change: the streams move to the new leader and resume.
	before = encoded()
	var old *election.Server
	waitFor(t, 10*time.Second, "a leader to move", func() bool { old = leader(); return old != nil })
	if err := old.TransferLeadership(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a new leader", func() bool { l := leader(); return l != nil && l != old })
	if _, err := remote.Apply(ctx, &fsm.RegisterInstance{Instance: fsm.Instance{ID: "after", Name: "web", Node: "n"}}); err != nil {
		t.Fatal(err)
	}
	took = caughtUp("every client current after a leader change")
	if n := encoded() - before; n > 3 {
		t.Fatalf("a leader change cost %v snapshot encodings", n)
	}
	t.Logf("%d clients caught up %v after a leader change", clients, took.Round(time.Millisecond))
}
