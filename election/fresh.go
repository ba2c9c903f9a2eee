package election

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecarhq/sidecar/api"
)

// A fresh server is one that starts with no Raft state (an empty or wiped
// data dir) and does not bootstrap the cluster itself. It may be a server
// whose disk was wiped: before, it may have voted in any term up to the
// highest one the cluster had reached, and it remembers none of those
// votes. hashicorp/raft would grant votes at once (an empty configuration
// grants to anyone), so a candidate could collect this server's vote a
// second time in a term it already helped another candidate win: two
// leaders in one term.
//
// The vote gate therefore sits between Raft and its transport. While the
// server is fresh it answers every RequestVote and pre-vote with Granted
// false, sends none (it does not stand for election, even when the
// snapshot it was sent lists it as a voter) and refuses a leadership
// transfer to it. It opens once the server has seen itself promoted: a
// committed configuration in which it is a voter, after a committed one in
// which it was not (the leader demotes a fresh voter, or adds a new server
// as a non-voter, and promotes it once it has caught up; see
// discovery.Formation). A server that bootstraps the cluster itself
// (Server.BootstrapCluster) founds it: it has never voted, and votes from
// the start.
//
// Why this is enough. While the gate is closed every election is won
// without this server's vote, so by quorum intersection the term T of the
// leader that promotes it is at least every term in which one of its lost
// votes elected a leader: two quorums share a server, which remembers its
// vote (a server other than this one holds it on disk). Once open, the gate
// still refuses votes in terms up to the term the server is in when it
// opens (the floor, at least T), so this server votes only in terms after
// every term its lost votes decided. (A candidate gives up a term after at
// most two election timeouts, far less than a restart, a catch-up and the
// leader's stabilisation period, so no vote lost in a later term is still
// being counted.) The gate lives in memory: once the server holds Raft
// state, a restart is not fresh, and raft's stable store remembers its
// votes again.

// errFresh is what the gate answers a leadership transfer with, and what a
// fresh server's own vote requests fail with.
var errFresh = errors.New("election: fresh server (started with no raft state): neither votes nor stands for election until a leader promotes it to voter")

// voteGate keeps a fresh server from voting and standing for election until
// it is promoted. Its methods are safe for concurrent use: Raft's transport
// goroutines, its FSM goroutine and the server's callers all reach it.
type voteGate struct {
	id   raft.ServerID
	addr raft.ServerAddress
	log  *slog.Logger
	// raft is set once Raft runs; the floor is its term when the gate opens.
	raft atomic.Pointer[raft.Raft]

	mu     sync.Mutex
	closed bool
	// notVoterAt is the index of the latest committed configuration seen in
	// which this server is not a voter (0: none yet).
	notVoterAt uint64
	// floor: once open, votes in terms up to it are still refused.
	floor uint64
	// loggedTerm is the last term a refusal was logged for (one line per
	// term, not one per retry).
	loggedTerm uint64

	refused atomic.Uint64
}

// gateFresh returns the FSM and transport Raft runs with: f and s.trans
// themselves, or, for a fresh server when cfg.GateFresh is set, both
// wrapped by a vote gate (s.gate).
func (s *Server) gateFresh(f raft.FSM, logs raft.LogStore, stable raft.StableStore, snaps raft.SnapshotStore) (raft.FSM, raft.Transport, error) {
	if !s.cfg.GateFresh || s.cfg.Bootstrap {
		return f, s.trans, nil
	}
	has, err := raft.HasExistingState(logs, stable, snaps)
	if err != nil {
		return nil, nil, fmt.Errorf("inspect raft state: %w", err)
	}
	if has {
		return f, s.trans, nil
	}
	s.gate = &voteGate{id: raft.ServerID(s.cfg.Node), addr: s.trans.LocalAddr(), log: s.log, closed: true}
	s.log.Warn("started with no raft state (empty data dir): neither voting nor standing for election until the leader has caught this server up and promoted it to voter")
	t := newGatedTransport(s.trans, s.gate)
	s.closer = append(s.closer, t)
	return gatedFSM{FSM: f, g: s.gate}, t, nil
}

// freshStarted gives the gate the running Raft and registers the gate's
// metrics (on every server, so that the series exist on each).
func (s *Server) freshStarted() {
	if s.gate != nil {
		s.gate.raft.Store(s.raft)
	}
	if s.m.reg == nil {
		return
	}
	cs := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sidecar_raft_fresh",
			Help: "1 while this server, started with no Raft state, waits to be promoted to voter (it neither votes nor stands for election).",
		}, func() float64 {
			if fresh, _ := s.Fresh(); fresh {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "sidecar_raft_fresh_votes_refused_total",
			Help: "Vote and pre-vote requests this server refused because it started with no Raft state and was not yet promoted (or because they were for a term it may have voted in before).",
		}, func() float64 {
			if s.gate == nil {
				return 0
			}
			return float64(s.gate.refused.Load())
		}),
	}
	for _, c := range cs {
		s.m.reg.MustRegister(c)
	}
	s.m.collectors = append(s.m.collectors, cs...)
}

// Fresh reports whether this server started with no Raft state and has not
// been promoted to voter yet (it neither votes nor stands for election),
// and the index of the latest committed configuration it has seen in which
// it is not a voter (0: none yet). A leader demotes a fresh voter that
// reports 0; one that reports more was made a non-voter already.
func (s *Server) Fresh() (fresh bool, notVoterAt uint64) {
	if s.gate == nil {
		return false, 0
	}
	s.gate.mu.Lock()
	defer s.gate.mu.Unlock()
	return s.gate.closed, s.gate.notVoterAt
}

// BootstrapCluster bootstraps Raft with conf, as every server of conf does
// in gossip formation. A fresh server that bootstraps founds the cluster:
// it has never voted, so its vote gate opens. So does one whose bootstrap
// finds the same configuration already arrived from a founder that was
// quicker (raft.ErrCantBootstrap): it is a founder all the same, and left
// gated it would withhold its vote until demoted and promoted again, so a
// leader lost in the cluster's first seconds could not be replaced.
func (s *Server) BootstrapCluster(conf raft.Configuration) error {
	err := s.raft.BootstrapCluster(conf).Error()
	if err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		return err
	}
	if s.gate != nil {
		why := "bootstrapped the cluster"
		if err != nil {
			why = "a founder: the bootstrap configuration arrived from another founder first"
		}
		s.gate.open(why, 0, false)
	}
	return err
}

// OpenAsFounder opens the vote gate of a fresh server that another founder
// counted, by this very run of its process, in the configuration the
// founders bootstrapped (discovery.Formation knows: a founder gossips the
// boot ids of the servers it counted). Such a server was running with no
// Raft state when the cluster began, so it has never voted in it; left
// gated, it would withhold its vote until the leader demoted and promoted
// it, and a cluster that lost its first leader before then could not elect
// another. It reports whether the gate was closed until now.
func (s *Server) OpenAsFounder(why string) bool {
	if s.gate == nil || !s.gate.isClosed() {
		return false
	}
	s.gate.open(why, 0, true)
	return !s.gate.isClosed()
}

// PeerStatus asks the server whose Raft/RPC address is addr for its view of
// Raft (a leader checks that a non-voter has caught up before promoting it).
func (s *Server) PeerStatus(ctx context.Context, addr string) (api.Status, error) {
	return s.rpc.status(ctx, addr)
}

// isClosed reports whether the gate still keeps this server out of
// elections.
func (g *voteGate) isClosed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed
}

// refuse reports whether a vote (or pre-vote) in term must be refused, and
// logs the first refusal of each term.
func (g *voteGate) refuse(term uint64, candidate []byte, pre bool) bool {
	g.mu.Lock()
	refuse := g.closed || term <= g.floor
	// equivalent mutant: which refusals are logged (the first of each term) is log output only
	logIt := refuse && term != g.loggedTerm
	if logIt {
		g.loggedTerm = term
	}
	closed, floor := g.closed, g.floor
	g.mu.Unlock()
	if !refuse {
		return false
	}
	g.refused.Add(1)
	if logIt {
		why := "not yet promoted to voter since it started with no raft state"
		if !closed {
			why = fmt.Sprintf("a term it may have voted in before it lost its raft state (it votes only after term %d)", floor)
		}
		g.log.Info("refusing vote", "candidate", string(candidate), "term", term, "pre_vote", pre, "why", why)
	}
	return true
}

// observe takes a committed configuration (applied from the log, or sent in
// a snapshot) and opens the gate at the first one that promotes this
// server.
func (g *voteGate) observe(index uint64, c raft.Configuration) {
	voter := false
	for _, srv := range c.Servers {
		if srv.ID == g.id && srv.Suffrage == raft.Voter {
			voter = true
		}
	}
	g.mu.Lock()
	if !g.closed {
		g.mu.Unlock()
		return
	}
	if !voter {
		// equivalent mutant: whether this is logged (once) is log output only
		first := g.notVoterAt == 0
		g.notVoterAt = max(g.notVoterAt, index)
		g.mu.Unlock()
		if first {
			g.log.Info("this fresh server is not a voter; the leader promotes it once it has caught up", "configuration_index", index)
		}
		return
	}
	// equivalent mutant: an index holds one configuration, so the one that said not voter never says voter
	promoted := g.notVoterAt > 0 && index > g.notVoterAt
	g.mu.Unlock()
	if promoted {
		g.open("promoted to voter by the leader", index, true)
	}
}

// open lets the server vote and stand again: in terms after the one it is
// in now when withFloor (a promotion), in any term when founding.
func (g *voteGate) open(why string, index uint64, withFloor bool) {
	var floor uint64
	if withFloor {
		r := g.raft.Load()
		if r == nil {
			return // not running yet; the next configuration opens it
		}
		floor = r.CurrentTerm()
	}
	g.mu.Lock()
	if !g.closed {
		g.mu.Unlock()
		return
	}
	g.closed, g.floor = false, floor
	g.mu.Unlock()
	g.log.Info("vote gate open: this server votes and stands for election again", "why", why,
		"configuration_index", index, "votes_after_term", floor)
}

// header is the RPC header of an answer the gate gives itself.
func (g *voteGate) header(trans raft.Transport) raft.RPCHeader {
	return raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(g.id), Addr: trans.EncodePeer(g.id, g.addr)}
}

// term is this server's current term (0 before Raft runs).
func (g *voteGate) term() uint64 {
	if r := g.raft.Load(); r != nil {
		return r.CurrentTerm()
	}
	return 0
}

// gatedFSM is the registry's FSM with raft.ConfigurationStore, through which
// Raft hands the gate every configuration entry once committed.
type gatedFSM struct {
	raft.FSM
	g *voteGate
}

func (f gatedFSM) StoreConfiguration(index uint64, c raft.Configuration) { f.g.observe(index, c) }

// gatedTransport is the transport Raft sees on a fresh server: incoming vote
// requests and leadership transfers pass through the gate on their way to
// Raft's consumer channel, outgoing vote requests are not sent while it is
// closed, and snapshots' configurations are shown to it.
type gatedTransport struct {
	raft.Transport
	g *voteGate

	start sync.Once
	out   chan raft.RPC
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once
}

// gatedPreVoteTransport is gatedTransport over a transport with pre-vote:
// Raft uses pre-vote only when its transport has it, so the wrapper has it
// exactly when the transport under it does.
type gatedPreVoteTransport struct {
	*gatedTransport
	pv raft.WithPreVote
}

func newGatedTransport(t raft.Transport, g *voteGate) interface {
	raft.Transport
	io.Closer
} {
	gt := &gatedTransport{Transport: t, g: g, out: make(chan raft.RPC), stop: make(chan struct{}), done: make(chan struct{})}
	if pv, ok := t.(raft.WithPreVote); ok {
		return gatedPreVoteTransport{gatedTransport: gt, pv: pv}
	}
	return gt
}

// Consumer is called once, by raft.NewRaft; the gate's goroutine starts
// then and ends with Close (raft's Shutdown closes its transport).
func (t *gatedTransport) Consumer() <-chan raft.RPC {
	t.start.Do(func() {
		in := t.Transport.Consumer()
		go t.run(in)
	})
	return t.out
}

func (t *gatedTransport) run(in <-chan raft.RPC) {
	defer close(t.done)
	for {
		select {
		case <-t.stop:
			return
		case rpc := <-in:
			if t.intercept(rpc) {
				continue
			}
			select {
			case t.out <- rpc:
			case <-t.stop:
				return
			}
		}
	}
}

// intercept answers the RPCs the gate decides on itself and reports whether
// it did; every other RPC goes on to Raft.
func (t *gatedTransport) intercept(rpc raft.RPC) bool {
	switch req := rpc.Command.(type) {
	case *raft.RequestVoteRequest:
		if t.g.refuse(req.Term, candidateOf(req.RPCHeader, req.Candidate), false) {
			rpc.Respond(&raft.RequestVoteResponse{RPCHeader: t.g.header(t.Transport), Term: t.g.term(), Granted: false}, nil)
			return true
		}
	case *raft.RequestPreVoteRequest:
		if t.g.refuse(req.Term, candidateOf(req.RPCHeader, nil), true) {
			rpc.Respond(&raft.RequestPreVoteResponse{RPCHeader: t.g.header(t.Transport), Term: t.g.term(), Granted: false}, nil)
			return true
		}
	case *raft.TimeoutNowRequest:
		if t.g.isClosed() {
			rpc.Respond(nil, errFresh)
			return true
		}
	case *raft.InstallSnapshotRequest:
		// A snapshot carries a committed configuration.
		if c, ok := decodeConfiguration(req.Configuration); ok {
			t.g.observe(req.ConfigurationIndex, c)
		}
	}
	return false
}

func candidateOf(h raft.RPCHeader, legacy []byte) []byte {
	if len(h.ID) > 0 {
		return h.ID
	}
	if len(h.Addr) > 0 {
		return h.Addr
	}
	return legacy
}

// decodeConfiguration is raft.DecodeConfiguration without its panic on a
// malformed configuration (Raft itself reports that one).
func decodeConfiguration(b []byte) (c raft.Configuration, ok bool) {
	if len(b) == 0 {
		return c, false
	}
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	return raft.DecodeConfiguration(b), true
}

func (t *gatedTransport) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	if t.g.isClosed() {
		return errFresh
	}
	return t.Transport.RequestVote(id, target, args, resp)
}

func (t gatedPreVoteTransport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	if t.g.isClosed() {
		return errFresh
	}
	return t.pv.RequestPreVote(id, target, args, resp)
}

// Close stops the gate's goroutine and closes the transport under it. Safe
// to call twice.
func (t *gatedTransport) Close() error {
	t.once.Do(func() {
		close(t.stop)
		t.start.Do(func() { close(t.done) }) // never started
		<-t.done
	})
	if c, ok := t.Transport.(raft.WithClose); ok {
		return c.Close()
	}
	return nil
}
