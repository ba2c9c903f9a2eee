package election

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sidecarhq/sidecar/internal/termlog"
)

// leaderLog is the term log of a gate cluster, with the server each node
// runs now (a restart replaces it, and its sampling stops).
type leaderLog struct {
	termlog.Log
	mu      sync.Mutex
	servers map[string]*Server
}

func newLeaderLog() *leaderLog { return &leaderLog{servers: map[string]*Server{}} }

// watch samples s (as node) until the test ends or s is replaced.
func (l *leaderLog) watch(t *testing.T, node string, s *Server) {
	l.mu.Lock()
	l.servers[node] = s
	l.mu.Unlock()
	stop := make(chan struct{})
	done := make(chan struct{})
	t.Cleanup(func() { close(stop); <-done })
	go func() {
		defer close(done)
		l.Sample(node, s.raft, stop, func() bool {
			l.mu.Lock()
			defer l.mu.Unlock()
			return l.servers[node] == s
		})
	}()
}

type tWriter struct {
	t     *testing.T
	mu    *sync.Mutex
	ended *bool
}

func (w tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !*w.ended {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func testLogger(t *testing.T, node string, l *leaderLog) *slog.Logger {
	mu, ended := &sync.Mutex{}, new(bool)
	t.Cleanup(func() { mu.Lock(); *ended = true; mu.Unlock() })
	h := slog.NewTextHandler(tWriter{t: t, mu: mu, ended: ended}, &slog.HandlerOptions{Level: slog.LevelInfo})
	return slog.New(termlog.Handler(h, node, &l.Log)).With("node", node)
}

type gateCluster struct {
	t     *testing.T
	log   *leaderLog
	srv   map[string]*Server
	trans map[string]*raft.InmemTransport
}

// newGateCluster starts three in-memory servers s0, s1, s2 (s0 bootstraps
// them) and waits for a leader.
func newGateCluster(t *testing.T) *gateCluster {
	c := &gateCluster{t: t, log: newLeaderLog(), srv: map[string]*Server{}, trans: map[string]*raft.InmemTransport{}}
	var servers []raft.Server
	for i := range 3 {
		id := fmt.Sprintf("s%d", i)
		_, tr := raft.NewInmemTransport(raft.ServerAddress(id))
		c.trans[id] = tr
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: raft.ServerAddress(id)})
	}
	for a, ta := range c.trans {
		for b, tb := range c.trans {
			if a != b {
				ta.Connect(raft.ServerAddress(b), tb)
			}
		}
	}
	for i := range 3 {
		id := fmt.Sprintf("s%d", i)
		c.start(id, c.trans[id], func(cfg *ServerConfig) {
			cfg.Bootstrap = i == 0
			cfg.BootstrapServers = servers
		})
	}
	l := c.waitLeader()
	waitUntil(t, 10*time.Second, "every server to follow the leader", func() bool {
		for _, s := range c.srv {
			if len(s.raft.GetConfiguration().Configuration().Servers) != 3 || s.raft.LastIndex() < l.raft.LastIndex() {
				return false
			}
		}
		return true
	})
	return c
}

func (c *gateCluster) start(id string, tr *raft.InmemTransport, tweak func(*ServerConfig)) *Server {
	c.t.Helper()
	cfg := TestServerConfig()
	cfg.Node, cfg.InMemory, cfg.Transport = id, true, tr
	cfg.Logger = testLogger(c.t, id, c.log)
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := NewServer(cfg)
	if err != nil {
		c.t.Fatalf("start %s: %v", id, err)
	}
	c.t.Cleanup(func() { s.Close() })
	c.srv[id] = s
	c.trans[id] = tr
	c.log.watch(c.t, id, s)
	return s
}

func (c *gateCluster) leader() *Server {
	for _, s := range c.srv {
		if s.IsLeader() {
			return s
		}
	}
	return nil
}

func (c *gateCluster) waitLeader() *Server {
	c.t.Helper()
	var l *Server
	waitUntil(c.t, 10*time.Second, "a leader", func() bool { l = c.leader(); return l != nil })
	return l
}

// onLeader runs a configuration change on the leader, again on the next
// leader when the leader it was given stepped down meanwhile (a loaded
// -race run misses the tests' short leader lease now and then), and returns the
// leader that took it.
func (c *gateCluster) onLeader(what string, change func(l *Server) error) *Server {
	c.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		l := c.waitLeader()
		err := change(l)
		if err == nil {
			return l
		}
		if !errors.Is(err, raft.ErrNotLeader) && !errors.Is(err, raft.ErrLeadershipLost) || time.Now().After(deadline) {
			c.t.Fatalf("%s: %v", what, err)
		}
	}
}

func (c *gateCluster) cut(a, b string) {
	c.trans[a].Disconnect(raft.ServerAddress(b))
	c.trans[b].Disconnect(raft.ServerAddress(a))
}

func (c *gateCluster) link(a, b string) {
	c.trans[a].Connect(raft.ServerAddress(b), c.trans[b])
	c.trans[b].Connect(raft.ServerAddress(a), c.trans[a])
}

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A server whose state is wiped may have voted in the term that is being
// decided: here c votes for a's election in term T (b is cut off and stays
// in an earlier term), then loses its state and comes back connected to b
// alone. Without the vote gate, b's election in term T collects c's vote a
// second time and b leads term T too. With it, c refuses b's (pre-)votes,
// stays a voter that does not vote until the leader demotes and promotes
// it, refuses a leadership transfer meanwhile, and once promoted still
// refuses votes in terms it may have voted in.
func TestServer_Fresh_wipedServerRefusesVotes(t *testing.T) {
	for _, gate := range []bool{false, true} {
		t.Run(fmt.Sprintf("gate=%v", gate), func(t *testing.T) {
			c := newGateCluster(t)
			old := c.waitLeader()
			cID := old.cfg.Node
			var aID, bID string
			for id := range c.srv {
				if id == cID {
					continue
				}
				if bID == "" {
					bID = id
				} else {
					aID = id
				}
			}
			// b is cut off: it stays in its term (pre-vote keeps an
			// isolated server from raising it).
			c.cut(bID, aID)
			c.cut(bID, cID)
			termB := c.srv[bID].raft.CurrentTerm()
			// c hands leadership to a: a's election in term T, c's vote.
			waitUntil(t, 10*time.Second, "a to lead after a transfer from c", func() bool {
				if c.srv[aID].IsLeader() {
					return true
				}
				if l := c.leader(); l != nil {
					l.raft.LeadershipTransferToServer(raft.ServerID(aID), raft.ServerAddress(aID)).Error()
				}
				return c.srv[aID].IsLeader()
			})
			termA := c.srv[aID].raft.CurrentTerm()
			if got := c.srv[bID].raft.CurrentTerm(); got != termB {
				t.Fatalf("cut-off b moved from term %d to %d", termB, got)
			}
			if termA != termB+1 {
				t.Skipf("the cluster churned: a leads term %d, b's next election is term %d", termA, termB+1)
			}

			// c loses its state and comes back, reachable from b only.
			c.srv[cID].Close()
			c.cut(aID, cID)
			_, tr := raft.NewInmemTransport(raft.ServerAddress(cID))
			fresh := c.start(cID, tr, func(cfg *ServerConfig) { cfg.GateFresh = gate })
			c.link(bID, cID)

			if !gate {
				waitUntil(t, 10*time.Second, "b to lead with the wiped server's vote", func() bool { return c.srv[bID].IsLeader() })
				if got := c.srv[bID].raft.CurrentTerm(); got != termA || !c.log.LeaderIn(termA, aID) {
					t.Fatalf("b leads term %d, a led term %d: want both in one term", got, termA)
				}
				if two := c.log.TwoLeaders(); len(two) == 0 {
					t.Fatalf("no term with two leaders recorded (%d terms)", c.log.Terms())
				}
				return // the hazard is real: the gate must prevent it
			}

			if f, _ := fresh.Fresh(); !f {
				t.Fatal("a server started with no state and GateFresh is not fresh")
			}
			waitUntil(t, 10*time.Second, "the wiped server to refuse b's vote requests", func() bool {
				return fresh.gate.refused.Load() >= 5
			})
			if c.srv[bID].IsLeader() {
				t.Fatalf("b leads with the vote of a wiped server")
			}

			// Heal: a leader (not b: its log is behind) catches c up; c
			// stays a voter that does not vote.
			c.link(aID, bID)
			c.link(aID, cID)
			l := c.waitLeader()
			waitUntil(t, 10*time.Second, "c to hold the configuration", func() bool {
				return len(fresh.raft.GetConfiguration().Configuration().Servers) == 3
			})
			if f, at := fresh.Fresh(); !f || at != 0 {
				t.Fatalf("fresh server reports fresh=%v, non-voter at %d before any demotion", f, at)
			}
			if err := l.raft.LeadershipTransferToServer(raft.ServerID(cID), raft.ServerAddress(cID)).Error(); err == nil {
				t.Fatal("leadership transferred to a fresh server")
			}
			l = c.onLeader("demote", func(l *Server) error {
				return l.raft.DemoteVoter(raft.ServerID(cID), 0, 5*time.Second).Error()
			})
			waitUntil(t, 10*time.Second, "c to see itself a non-voter", func() bool {
				_, at := fresh.Fresh()
				return at > 0
			})
			waitUntil(t, 10*time.Second, "c to catch up", func() bool {
				return fresh.raft.AppliedIndex() >= l.raft.CommitIndex()
			})
			l = c.onLeader("promote", func(l *Server) error {
				return l.raft.AddVoter(raft.ServerID(cID), raft.ServerAddress(cID), 0, 5*time.Second).Error()
			})
			waitUntil(t, 10*time.Second, "c's vote gate to open", func() bool {
				f, _ := fresh.Fresh()
				return !f
			})
			floor := fresh.gate.floor
			if floor < l.raft.CurrentTerm() {
				t.Fatalf("vote floor %d below the promoting leader's term %d", floor, l.raft.CurrentTerm())
			}
			if !fresh.gate.refuse(floor, []byte("x"), false) || fresh.gate.refuse(floor+1, []byte("x"), false) {
				t.Fatalf("promoted: want votes refused up to term %d and considered after", floor)
			}
			if two := c.log.TwoLeaders(); len(two) > 0 {
				t.Fatalf("terms with two leaders: %v", two)
			}
		})
	}
}

// A fresh server sends no vote requests and takes no leadership transfer.
func TestGatedTransport_freshDoesNotStand(t *testing.T) {
	_, under := raft.NewInmemTransport("c")
	_, peer := raft.NewInmemTransport("p")
	under.Connect("p", peer)
	peer.Connect("c", under)
	g := &voteGate{id: "c", addr: "c", log: slog.New(slog.DiscardHandler), closed: true}
	tr := newGatedTransport(under, g)
	defer tr.Close()
	defer peer.Close()

	if err := tr.RequestVote("p", "p", &raft.RequestVoteRequest{Term: 7}, &raft.RequestVoteResponse{}); !errors.Is(err, errFresh) {
		t.Fatalf("RequestVote while fresh: %v, want errFresh", err)
	}
	if err := tr.(raft.WithPreVote).RequestPreVote("p", "p", &raft.RequestPreVoteRequest{Term: 7}, &raft.RequestPreVoteResponse{}); !errors.Is(err, errFresh) {
		t.Fatalf("RequestPreVote while fresh: %v, want errFresh", err)
	}

	// Incoming: the gate answers votes and transfers itself; anything
	// else reaches Raft's consumer.
	consumer := tr.Consumer()
	var vote raft.RequestVoteResponse
	if err := peer.RequestVote("c", "c", &raft.RequestVoteRequest{RPCHeader: raft.RPCHeader{ID: []byte("p")}, Term: 7, LastLogIndex: 100, LastLogTerm: 6}, &vote); err != nil || vote.Granted {
		t.Fatalf("vote from a fresh server: granted=%v err=%v", vote.Granted, err)
	}
	if err := peer.TimeoutNow("c", "c", &raft.TimeoutNowRequest{}, &raft.TimeoutNowResponse{}); err == nil {
		t.Fatal("a fresh server took a leadership transfer")
	}
	go func() {
		rpc := <-consumer
		rpc.Respond(&raft.AppendEntriesResponse{Success: true}, nil)
	}()
	var ae raft.AppendEntriesResponse
	if err := peer.AppendEntries("c", "c", &raft.AppendEntriesRequest{Term: 7}, &ae); err != nil || !ae.Success {
		t.Fatalf("append entries through the gate: %v %v", ae.Success, err)
	}
	if n := g.refused.Load(); n != 1 {
		t.Fatalf("refused %d votes, want 1", n)
	}
}
