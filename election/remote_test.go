package election_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/election/electiontest"
	"github.com/sidecarhq/sidecar/fsm"
)

// tcpCluster starts n servers on loopback TCP (Raft and RPC on one port)
// and bootstraps them together.
func tcpCluster(t *testing.T, n int) []*election.Server {
	t.Helper()
	return tcpClusterWith(t, n, nil)
}

// tcpClusterWith is tcpCluster with each server's configuration changed by
// edit (when set) before it starts.
func tcpClusterWith(t *testing.T, n int, edit func(*election.ServerConfig)) []*election.Server {
	t.Helper()
	var servers []*election.Server
	var conf raft.Configuration
	for i := 0; i < n; i++ {
		cfg := election.TestServerConfig()
		cfg.Node = "s" + string(rune('0'+i))
		cfg.InMemory = true
		cfg.RaftAddr = "127.0.0.1:0"
		cfg.Logger = electiontest.Logger(t, cfg.Node)
		if edit != nil {
			edit(&cfg)
		}
		s, err := election.NewServer(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		servers = append(servers, s)
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(cfg.Node), Address: s.Addr()})
	}
	if err := servers[0].Raft().BootstrapCluster(conf).Error(); err != nil {
		t.Fatal(err)
	}
	waitSettledLeader(t, servers)
	return servers
}

// waitSettledLeader waits until one server leads, every server names it,
// and every server's log holds the leader's. (Not applied: with a long
// commit timeout, followers learn of the last commit only with the next
// write.) A new leader is most fragile in its first round trips, while it
// backfills the followers' logs: under -race on a busy machine it could
// step down during a test's first write, which then failed with an
// unknown outcome.
func waitSettledLeader(t *testing.T, servers []*election.Server) {
	t.Helper()
	waitFor(t, 10*time.Second, "a leader whose log every server holds", func() bool {
		leader, _ := leaderAndFollower(servers)
		if leader == nil {
			return false
		}
		last := leader.Raft().LastIndex()
		for _, s := range servers {
			if _, addr := s.Leader(); addr != leader.Addr() || s.Raft().LastIndex() < last {
				return false
			}
		}
		return true
	})
}

func TestRemote_clientWritesAndFollowsThroughServers(t *testing.T) {
	servers := tcpCluster(t, 3)
	var follower *election.Server
	for _, s := range servers {
		if !s.IsLeader() {
			follower = s
			break
		}
	}
	alive := map[*election.Server]bool{servers[0]: true, servers[1]: true, servers[2]: true}
	addrs := func() []string {
		var out []string
		for _, s := range servers {
			if alive[s] {
				out = append(out, string(s.Addr()))
			}
		}
		return out
	}
	// A client: writes go to any server, which forwards to the leader.
	remote := election.NewRemote(nil, func() []string { return []string{string(follower.Addr())} })
	defer remote.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	if _, err := remote.Apply(ctx, &fsm.RegisterNode{Name: "client-1", Address: "10.0.0.9"}); err != nil {
		t.Fatalf("write through a follower: %v", err)
	}
	res, err := remote.Apply(ctx, &fsm.GrantLease{TTL: int64(5 * time.Second)})
	if err != nil || res.LeaseID == "" {
		t.Fatalf("grant through a follower: %+v %v", res, err)
	}
	if _, err := remote.KeepAlive(ctx, res.LeaseID); err != nil {
		t.Fatalf("keepalive through a follower: %v", err)
	}
	if _, err := remote.KeepAlive(ctx, "00000000deadbeef"); err == nil || !errorIs(err, fsm.ErrUnknownLease) {
		t.Fatalf("keepalive of an unknown lease: %v, want ErrUnknownLease across RPC", err)
	}
	if _, err := remote.Apply(ctx, &fsm.AcquireLock{Name: "job", Lease: "nope"}); !errorIs(err, fsm.ErrUnknownLease) {
		t.Fatalf("refused write: %v, want ErrUnknownLease across RPC", err)
	}

	// The client's copy follows a change stream.
	copyReg := fsm.New()
	replica := election.NewReplica(copyReg, addrs, electiontest.Logger(t, "client"))
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { replica.Run(rctx); close(done) }()
	defer func() { stop(); <-done }()
	waitFor(t, 10*time.Second, "copy current", func() bool { return replica.Current() == nil })
	if _, ok := copyReg.Node("client-1"); !ok {
		t.Fatal("copy lacks the node registered before it connected")
	}
	for i := 0; i < 20; i++ {
		in := fsm.Instance{ID: "web-" + string(rune('a'+i)), Name: "web", Node: "client-1", Port: 80 + i}
		if _, err := remote.Apply(ctx, &fsm.RegisterInstance{Instance: in}); err != nil {
			t.Fatal(err)
		}
	}
	// A consistent read through the client sees every acknowledged write.
	if err := remote.ConsistentRead(ctx, copyReg); err != nil {
		t.Fatal(err)
	}
	if n := len(copyReg.ServiceInstances("web")); n != 20 {
		t.Fatalf("copy holds %d instances after a consistent read, want 20", n)
	}

	// Kill every server but the leader's successor chain: the copy resumes
	// from another server.
	for _, s := range servers {
		if s != follower && !s.IsLeader() {
			alive[s] = false
			s.Close()
			break
		}
	}
	if _, err := remote.Apply(ctx, &fsm.RegisterInstance{Instance: fsm.Instance{ID: "after", Name: "web", Node: "client-1", Port: 1}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "copy resumed with the new instance", func() bool {
		_, ok := copyReg.Instance("client-1", "after")
		return ok
	})
	for _, s := range servers {
		if alive[s] && s.FSM().Digest() != copyReg.Digest() {
			waitFor(t, 5*time.Second, "copy converged", func() bool { return s.FSM().Digest() == copyReg.Digest() })
		}
	}
}

// countingProxy forwards TCP connections to addr and counts the bytes sent
// towards it.
func countingProxy(t *testing.T, addr string) (string, *atomic.Int64) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var sent atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				defer up.Close()
				go func() { io.Copy(c, up); c.Close() }()
				n, _ := io.Copy(countingWriter{up, &sent}, c)
				_ = n
			}()
		}
	}()
	return l.Addr().String(), &sent
}

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

// Write counts before it passes p on: the answer to p may reach the test
// before a count made after the write would.
func (c countingWriter) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	return c.w.Write(p)
}

// A client learns the leader from the servers' answers and sends its
// later requests there, not through a follower that forwards each one (a
// second HTTP round trip per write, half of a client's write cost).
func TestRemote_clientSendsToTheLeaderItWasTold(t *testing.T) {
	servers := tcpCluster(t, 3)
	var leader, follower *election.Server
	for _, s := range servers {
		if s.IsLeader() {
			leader = s
		} else if follower == nil {
			follower = s
		}
	}
	// The client knows the follower only through a proxy that counts what
	// it is sent, and the leader directly.
	viaProxy, sent := countingProxy(t, string(follower.Addr()))
	remote := election.NewRemote(nil, func() []string { return []string{string(leader.Addr()), viaProxy} })
	defer remote.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Until a first answer the client goes round the list: its first write
	// goes to the follower, which forwards it.
	for i := range 1 {
		if _, err := remote.Apply(ctx, &fsm.RegisterNode{Name: fmt.Sprint("n-", i), Address: "10.0.0.9"}); err != nil {
			t.Fatal(err)
		}
	}
	before := sent.Load()
	if before == 0 {
		t.Fatal("the first write did not go through the follower: the test shows nothing")
	}
	for i := range 20 {
		if _, err := remote.Apply(ctx, &fsm.RegisterNode{Name: fmt.Sprint("m-", i), Address: "10.0.0.9"}); err != nil {
			t.Fatal(err)
		}
	}
	if n := sent.Load() - before; n != 0 {
		t.Fatalf("%d bytes went to the follower for 20 writes after the leader was named", n)
	}
}

func errorIs(err, target error) bool {
	for e := err; e != nil; {
		if e == target {
			return true
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		e = u.Unwrap()
	}
	return false
}

// TestRemote_clientFollowsANewLeaderHint: once leadership moved, the old
// leader's answer names the new one, and the client sends its next writes
// there instead of through the old leader.
func TestRemote_clientFollowsANewLeaderHint(t *testing.T) {
	regs := map[string]*prometheus.Registry{}
	servers := tcpClusterWith(t, 3, func(cfg *election.ServerConfig) {
		regs[cfg.Node] = prometheus.NewRegistry()
		cfg.Registerer = regs[cfg.Node]
	})
	var addrs []string
	var old, next *election.Server
	for _, s := range servers {
		addrs = append(addrs, string(s.Addr()))
		if s.IsLeader() {
			old = s
		} else {
			next = s
		}
	}
	remote := election.NewRemote(nil, func() []string { return addrs })
	defer remote.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	write := func(name string) {
		t.Helper()
		if _, err := remote.Apply(ctx, &fsm.RegisterNode{Name: name, Address: "10.0.0.9"}); err != nil {
			t.Fatal(err)
		}
	}
	write("first") // the client learns the leader
	nextID, nextAddr := raft.ServerID(next.Status().Node), next.Addr()
	if err := old.Raft().LeadershipTransferToServer(nextID, nextAddr).Error(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the old leader to know the new one", func() bool {
		_, a := old.Leader()
		return a == nextAddr && next.IsLeader()
	})
	write("after") // to the old leader, which passes it on and names the new one
	batches := func() uint64 {
		families, err := regs[old.Status().Node].Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			if f.GetName() == "sidecar_rpc_apply_batch_entries" {
				return f.GetMetric()[0].GetHistogram().GetSampleCount()
			}
		}
		return 0
	}
	before := batches()
	for i := range 10 {
		write(fmt.Sprint("then-", i))
	}
	if n := batches() - before; n != 0 {
		if !next.IsLeader() {
			t.Skip("leadership moved again while the test wrote (a loaded machine): it shows nothing")
		}
		t.Fatalf("the old leader received %d more batches after naming the new leader", n)
	}
}

// TestRemote_ConsistentReadOnAnIdleCluster: a copy that already holds the
// leader's read index answers at once, with no later write to wait for.
func TestRemote_ConsistentReadOnAnIdleCluster(t *testing.T) {
	servers := tcpCluster(t, 1)
	remote := election.NewRemote(nil, func() []string { return []string{string(servers[0].Addr())} })
	defer remote.Close()
	if _, err := remote.Apply(t.Context(), &fsm.RegisterNode{Name: "n1", Address: "10.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := remote.ConsistentRead(ctx, servers[0].FSM()); err != nil {
		t.Fatalf("consistent read of an up-to-date copy: %v", err)
	}
	// A copy behind the servers is not read from: the call waits for it
	// and ends with the caller's deadline.
	behind, cancelBehind := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelBehind()
	if err := remote.ConsistentRead(behind, fsm.New()); err == nil {
		t.Fatal("a consistent read of an empty copy answered")
	}
	// With no server to confirm the read index, the read fails.
	unreachable := election.NewRemote(nil, func() []string { return []string{deadAddr(t)} })
	defer unreachable.Close()
	noServer, cancelNoServer := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelNoServer()
	if err := unreachable.ConsistentRead(noServer, servers[0].FSM()); err == nil {
		t.Fatal("a consistent read with no server reachable answered")
	}
}

// TestReplica_streamsFromThePreferredServerFirst: a client whose preferred
// server (the leader, for agents) is known streams from it from the start,
// not from the next server of its list.
func TestReplica_streamsFromThePreferredServerFirst(t *testing.T) {
	servers := tcpCluster(t, 3)
	leader, follower := leaderAndFollower(servers)
	if _, err := leader.Apply(t.Context(), &fsm.RegisterNode{Name: "n1", Address: "10.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	viaFollower, toFollower := countingProxy(t, string(follower.Addr()))
	reg := fsm.New()
	r := election.NewReplica(reg, func() []string { return []string{viaFollower} }, nil)
	r.Prefer(func() string { return string(leader.Addr()) })
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, 10*time.Second, "the copy to catch up", func() bool { return r.Current() == nil && reg.Index() >= leader.FSM().Index() })
	if n := toFollower.Load(); n != 0 {
		t.Fatalf("%d bytes went to the follower of the list although the preferred server was known", n)
	}
}

// replicaOnAFollower starts a replica streaming from a follower of a
// three-server cluster that learns of the leader (through a counting proxy,
// viaLeader) only once known is set. The replica stops with the test.
func replicaOnAFollower(t *testing.T) (r *election.Replica, viaLeader string, toLeader *atomic.Int64, known *atomic.Bool) {
	servers := tcpCluster(t, 3)
	leader, follower := leaderAndFollower(servers)
	viaLeader, toLeader = countingProxy(t, string(leader.Addr()))
	known = new(atomic.Bool)
	r = election.NewReplica(fsm.New(), func() []string { return []string{string(follower.Addr())} }, nil)
	r.Prefer(func() string {
		if known.Load() {
			return viaLeader
		}
		return ""
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, 10*time.Second, "a stream from the follower", func() bool { return r.Current() == nil })
	if toLeader.Load() != 0 {
		t.Fatal("the client reached the leader before it knew of it: the test shows nothing")
	}
	return r, viaLeader, toLeader, known
}

// TestReplica_movesToThePreferredServerOnceKnown: a client that started on
// a follower (no leader known yet) moves its stream to the leader once it
// learns of it (checked every preferCheck, 2 s).
func TestReplica_movesToThePreferredServerOnceKnown(t *testing.T) {
	t.Parallel()
	r, _, toLeader, known := replicaOnAFollower(t)
	known.Store(true)
	waitFor(t, 10*time.Second, "the stream to move to the leader", func() bool { return toLeader.Load() > 0 && r.Current() == nil })
}

// TestReplica_staysCurrentWhileItMoves: moving the stream to the leader is
// planned, so the copy stays current (and the agent ready) throughout; an
// agent's /readyz must not flap each time its stream changes servers.
func TestReplica_staysCurrentWhileItMoves(t *testing.T) {
	t.Parallel()
	r, viaLeader, toLeader, known := replicaOnAFollower(t)
	known.Store(true)
	deadline := time.Now().Add(10 * time.Second)
	for r.Server() != viaLeader || toLeader.Load() == 0 {
		if err := r.Current(); err != nil {
			t.Fatalf("the copy stopped being current while its stream moved to the leader: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("the stream did not move to the leader within 10s")
		}
		time.Sleep(time.Millisecond)
	}
	if err := r.Current(); err != nil {
		t.Fatalf("the copy is not current on the leader's stream: %v", err)
	}
}

// leaderAndFollower picks the leader of servers and one follower.
func leaderAndFollower(servers []*election.Server) (leader, follower *election.Server) {
	for _, s := range servers {
		if s.IsLeader() {
			leader = s
		} else {
			follower = s
		}
	}
	return leader, follower
}

// A consistent read through a follower takes its read index from the
// leader: an up-to-date copy answers, a copy behind the leader waits.
func TestRemote_ConsistentReadThroughAFollower(t *testing.T) {
	t.Parallel()
	servers := tcpCluster(t, 3)
	leader, follower := leaderAndFollower(servers)
	if _, err := leader.Apply(t.Context(), &fsm.RegisterNode{Name: "n1", Address: "10.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	remote := election.NewRemote(nil, func() []string { return []string{string(follower.Addr())} })
	defer remote.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := remote.ConsistentRead(ctx, leader.FSM()); err != nil {
		t.Fatalf("consistent read of the leader's copy through a follower: %v", err)
	}
	behind, cancelBehind := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelBehind()
	if err := remote.ConsistentRead(behind, fsm.New()); err == nil {
		t.Fatal("a consistent read of an empty copy through a follower answered")
	}
}
