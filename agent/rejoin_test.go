package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sidecarhq/sidecar/agent"
	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/discovery"
	"github.com/sidecarhq/sidecar/internal/termlog"
)

// tlog writes to t.Log until the test ends (raft and memberlist goroutines
// may log while winding down).
type tlog struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
}

func (w *tlog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// server is one agent of the test, run like agenttest.Run but with a
// logger that feeds the term log.
type server struct {
	*agent.Agent
	cfg    agent.Config
	url    string
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	stop   chan struct{}
}

func runServer(t *testing.T, cfg agent.Config, terms *termlog.Log) *server {
	t.Helper()
	w := &tlog{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	h := slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo})
	log := slog.New(termlog.Handler(h, cfg.Name, terms)).With("node", cfg.Name)
	a, err := agent.New(cfg, log)
	if err != nil {
		t.Fatalf("new agent %s: %v", cfg.Name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &server{Agent: a, cfg: cfg, cancel: cancel, done: make(chan error, 1), stop: make(chan struct{})}
	go func() { s.done <- a.Run(ctx) }()
	sampled := make(chan struct{})
	go func() { defer close(sampled); terms.Sample(cfg.Name, a.Server().Raft(), s.stop, nil) }()
	t.Cleanup(func() { s.halt(false); <-sampled })
	agenttest.WaitFor(t, 5*time.Second, cfg.Name+" listening", func() bool { return a.HTTPAddr() != "" })
	s.url = "http://" + a.HTTPAddr()
	return s
}

// halt stops the agent, as a crash would when kill is set. Safe twice.
func (s *server) halt(kill bool) {
	s.once.Do(func() {
		if kill {
			s.Agent.Kill()
		}
		s.cancel()
		<-s.done
		close(s.stop)
	})
}

func (s *server) ready() bool {
	resp, err := http.Get(s.url + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// services returns the ids of the instances of name in s's own registry.
func (s *server) services(name string) map[string]bool {
	resp, err := http.Get(s.url + "/v1/services/" + name)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var list []struct {
		ID string `json:"id"`
	}
	json.NewDecoder(resp.Body).Decode(&list)
	out := map[string]bool{}
	for _, i := range list {
		out[i.ID] = true
	}
	return out
}

// registerAt registers an instance through s, retrying while the cluster
// has no leader (503), until stop closes or a minute passes.
func registerAt(s *server, id, name string, stop <-chan struct{}) error {
	body := fmt.Sprintf(`{"id":%q,"name":%q,"port":8080}`, id, name)
	deadline := time.Now().Add(time.Minute)
	for {
		req, _ := http.NewRequest(http.MethodPut, s.url+"/v1/services", strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusOK:
			return nil
		case resp.StatusCode != http.StatusServiceUnavailable || time.Now().After(deadline):
			return fmt.Errorf("register %s: %s", id, resp.Status)
		}
		select {
		case <-stop:
			return fmt.Errorf("register %s: stopped", id)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func suffrageIn(leader *server, name string) (raft.ServerSuffrage, bool) {
	fut := leader.Server().Raft().GetConfiguration()
	if fut.Error() != nil {
		return 0, false
	}
	for _, s := range fut.Configuration().Servers {
		if string(s.ID) == name {
			return s.Suffrage, true
		}
	}
	return 0, false
}

func leaderAmong(nodes []*server) *server {
	for _, n := range nodes {
		if n.Server().IsLeader() {
			return n
		}
	}
	return nil
}

// A server that crashes and comes back with the same name and address but
// an empty data dir rejoins by itself: still a voter in the configuration,
// it neither votes nor stands (its gossip says it is fresh), the leader
// demotes it to non-voter, a snapshot catches it up, and the leader
// promotes it to voter once it has stayed caught up. It then holds every
// write, and no term ever had two leaders. A server joining for the first
// time is likewise a non-voter until caught up.
func TestCluster_wipedServerRejoinsAsNonvoterUntilCaughtUp(t *testing.T) {
	terms := &termlog.Log{}
	var nodes []*server
	for i := range 3 {
		cfg := agenttest.Config(fmt.Sprintf("server-%d", i))
		cfg.Server, cfg.BootstrapExpect, cfg.DataDir = true, 3, t.TempDir()
		if i > 0 {
			cfg.Join = []string{nodes[0].Gossip().Addr()}
		}
		nodes = append(nodes, runServer(t, cfg, terms))
	}
	for _, n := range nodes {
		agenttest.WaitFor(t, 30*time.Second, n.cfg.Name+" ready", n.ready)
	}
	agenttest.WaitFor(t, 30*time.Second, "3 voters", func() bool {
		l := leaderAmong(nodes)
		if l == nil {
			return false
		}
		n := 0
		for _, s := range l.Server().Raft().GetConfiguration().Configuration().Servers {
			if s.Suffrage == raft.Voter {
				n++
			}
		}
		return n == 3
	})

	// The victim is the leader: it voted for itself in its term, and the
	// others elect a successor while it is gone.
	var victim *server
	var survivors []*server
	agenttest.WaitFor(t, 10*time.Second, "a leader", func() bool { return leaderAmong(nodes) != nil })
	for _, n := range nodes {
		if victim == nil && n.Server().IsLeader() {
			victim = n
		} else {
			survivors = append(survivors, n)
		}
	}
	if victim == nil {
		t.Fatal("leadership moved while picking the victim")
	}
	// Data the victim holds before it loses it, registered through the
	// others (the victim's agent would take back, by anti-entropy, the
	// instances registered through it: its local state is wiped too).
	const before = 20
	for i := range before {
		if err := registerAt(survivors[i%2], fmt.Sprintf("pre-%d", i), "pre", nil); err != nil {
			t.Fatal(err)
		}
	}
	agenttest.WaitFor(t, 10*time.Second, "the victim to hold the data", func() bool { return len(victim.services("pre")) == before })

	gossipAddr, raftAddr := victim.Gossip().Addr(), string(victim.Server().Addr())
	victim.halt(true)
	if err := os.RemoveAll(victim.cfg.DataDir); err != nil {
		t.Fatal(err)
	}
	agenttest.WaitFor(t, 30*time.Second, "the victim failed in gossip", func() bool {
		m, ok := survivors[0].Gossip().Member(victim.cfg.Name)
		return ok && m.Status == discovery.StatusFailed
	})
	var l *server
	agenttest.WaitFor(t, 30*time.Second, "a new leader", func() bool { l = leaderAmong(survivors); return l != nil })
	if s, ok := suffrageIn(l, victim.cfg.Name); !ok || s != raft.Voter {
		t.Fatalf("crashed victim is not a voter in the configuration: %v %v", s, ok)
	}

	// Writes go on during the rejoin.
	stopWrites := make(chan struct{})
	writesDone := make(chan struct{})
	var acked atomic.Int64
	go func() {
		defer close(writesDone)
		for i := 0; ; i++ {
			select {
			case <-stopWrites:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if err := registerAt(survivors[i%2], fmt.Sprintf("during-%d", i), "during", stopWrites); err != nil {
				return // acknowledged in order: during-0 .. during-(acked-1)
			}
			acked.Store(int64(i + 1))
		}
	}()

	cfg := victim.cfg
	cfg.BindAddr, cfg.RaftAddr = gossipAddr, raftAddr
	cfg.Join = []string{survivors[0].Gossip().Addr()}
	restart := time.Now()
	back := runServer(t, cfg, terms)
	all := append(append([]*server{}, survivors...), back)

	// From its restart on, the wiped server is watched every few
	// milliseconds: until promoted it refuses to vote; it is a non-voter
	// before it is a voter again; it holds the data when promoted.
	type rejoin struct {
		demoted, promoted, opened time.Duration
		errs                      []string
	}
	var (
		watchMu sync.Mutex
		seen    rejoin
	)
	watchDone := make(chan struct{})
	stopWatch := make(chan struct{})
	go func() {
		defer close(watchDone)
		var r rejoin
		defer func() { watchMu.Lock(); seen = r; watchMu.Unlock() }()
		for r.opened == 0 {
			select {
			case <-stopWatch:
				return
			case <-time.After(2 * time.Millisecond):
			}
			// Fresh first: the leader's configuration promotes the
			// server before the server can apply its promotion.
			fresh, _ := back.Server().Fresh()
			l := leaderAmong(all)
			if l == nil {
				continue
			}
			s, ok := suffrageIn(l, cfg.Name)
			switch {
			case !ok:
				r.errs = append(r.errs, "the wiped server was removed from the configuration")
				return
			case s == raft.Nonvoter && r.demoted == 0:
				r.demoted = time.Since(restart)
			case s == raft.Voter && r.demoted != 0 && r.promoted == 0:
				r.promoted = time.Since(restart)
				if got := back.services("pre"); len(got) != before {
					r.errs = append(r.errs, fmt.Sprintf("promoted holding %d of the %d instances written before the wipe", len(got), before))
				}
				commit, applied := l.Server().Raft().CommitIndex(), back.Server().Raft().AppliedIndex()
				if applied < commit && commit-applied > discovery.DefaultFormationConfig().MaxLag {
					r.errs = append(r.errs, fmt.Sprintf("promoted %d entries behind the leader", commit-applied))
				}
			}
			if !fresh {
				r.opened = time.Since(restart)
				if r.promoted == 0 {
					r.errs = append(r.errs, fmt.Sprintf("the wiped server votes again %v after its restart, before the leader promoted it", r.opened))
				}
			}
		}
	}()
	t.Cleanup(func() { close(stopWatch); <-watchDone })

	// An election during the rejoin: the wiped server's vote is not
	// needed, and it gives none while fresh.
	agenttest.WaitFor(t, 30*time.Second, "the wiped server to hold the configuration", func() bool {
		return len(back.Server().Raft().GetConfiguration().Configuration().Servers) == 3
	})
	agenttest.WaitFor(t, 30*time.Second, "leadership to move between the survivors", func() bool {
		l := leaderAmong(survivors)
		if l == nil {
			return false
		}
		to := survivors[0]
		if to == l {
			to = survivors[1]
		}
		return l.Server().Raft().LeadershipTransferToServer(raft.ServerID(to.cfg.Name), to.Server().Addr()).Error() == nil
	})
	fresh, _ := back.Server().Fresh()
	t.Logf("leadership moved %v after the restart, the wiped server fresh: %v", time.Since(restart).Round(time.Millisecond), fresh)

	agenttest.WaitFor(t, 60*time.Second, "the wiped server demoted, promoted and voting", func() bool {
		select {
		case <-watchDone:
			return true
		default:
			return false
		}
	})
	watchMu.Lock()
	r := seen
	watchMu.Unlock()
	for _, e := range r.errs {
		t.Error(e)
	}
	if r.demoted == 0 || r.promoted == 0 {
		t.Fatalf("the wiped server was never seen a non-voter (%v) and then a voter (%v)", r.demoted, r.promoted)
	}
	t.Logf("wiped server: demoted %v, promoted %v, votes again %v after its restart", r.demoted.Round(time.Millisecond),
		r.promoted.Round(time.Millisecond), r.opened.Round(time.Millisecond))

	close(stopWrites)
	<-writesDone
	n := int(acked.Load())
	if n == 0 {
		t.Fatal("no write acknowledged during the rejoin")
	}
	agenttest.WaitFor(t, 10*time.Second, "the wiped server to hold every write", func() bool {
		got := back.services("during")
		for i := range n {
			if !got[fmt.Sprintf("during-%d", i)] {
				return false
			}
		}
		return len(back.services("pre")) == before
	})

	// A server that joins for the first time: a non-voter, then a voter.
	jcfg := agenttest.Config("server-3")
	jcfg.Server, jcfg.DataDir = true, t.TempDir()
	jcfg.Join = []string{survivors[0].Gossip().Addr()}
	joined := time.Now()
	newcomer := runServer(t, jcfg, terms)
	all = append(all, newcomer)
	var asNonvoter time.Duration
	agenttest.WaitFor(t, 60*time.Second, "the new server a non-voter, then a voter", func() bool {
		l := leaderAmong(all)
		if l == nil {
			return false
		}
		switch s, ok := suffrageIn(l, jcfg.Name); {
		case ok && s == raft.Nonvoter && asNonvoter == 0:
			asNonvoter = time.Since(joined)
		case ok && s == raft.Voter:
			if asNonvoter == 0 {
				t.Fatal("a new server was added as a voter")
			}
			return true
		}
		return false
	})
	t.Logf("new server: non-voter %v, voter %v after its start", asNonvoter.Round(time.Millisecond), time.Since(joined).Round(time.Millisecond))

	if two := terms.TwoLeaders(); len(two) > 0 {
		t.Fatalf("terms with two leaders: %v", two)
	}
	t.Logf("%d terms recorded, each with one leader", terms.Terms())
}
