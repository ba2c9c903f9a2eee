package election_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/fsm"
	"github.com/sidecarhq/sidecar/tlsutil"
)

// With TLS, a client certificate keeps alive its own node's session, and
// any lease that is no node session, but not another node's session (one
// cannot keep a dead node's holds); a server certificate may.
func TestServer_TLS_clientKeepsAliveItsOwnNodeSessionOnly(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	s1 := startTCPServer(t, "s1", p.loader(t, tlsutil.RoleServer, "s1"), true)
	waitFor(t, 10*time.Second, "s1 to lead", s1.IsLeader)
	remote := func(role tlsutil.Role, node string) *election.Remote {
		r := election.NewRemote(nil, func() []string { return []string{string(s1.Addr())} })
		r.UseTLS(p.loader(t, role, node))
		t.Cleanup(r.Close)
		return r
	}
	c1, c2, s9 := remote(tlsutil.RoleClient, "c1"), remote(tlsutil.RoleClient, "c2"), remote(tlsutil.RoleServer, "s9")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	grant := func(r *election.Remote, g *fsm.GrantLease) string {
		t.Helper()
		res, err := r.Apply(ctx, g)
		if err != nil {
			t.Fatalf("grant %+v: %v", g, err)
		}
		return res.LeaseID
	}
	session2 := grant(c2, &fsm.GrantLease{TTL: int64(time.Hour), Node: "c2", Session: true})
	plain := grant(c2, &fsm.GrantLease{TTL: int64(time.Hour), Node: "c2"})

	_, err := c1.KeepAlive(ctx, session2)
	if !errors.Is(err, fsm.ErrNotOwner) || !strings.Contains(err.Error(), `node session of "c2"`) {
		t.Fatalf("c1 keeping c2's node session alive: %v, want ErrNotOwner naming c2", err)
	}
	for _, c := range []struct {
		who string
		r   *election.Remote
		id  string
	}{{"c2, its own node session", c2, session2}, {"c1, a lease that is no node session", c1, plain}, {"a server, c2's node session", s9, session2}} {
		if ttl, err := c.r.KeepAlive(ctx, c.id); err != nil || ttl != time.Hour {
			t.Fatalf("keepalive by %s: %v %v, want the lease's TTL", c.who, ttl, err)
		}
	}
}

// deadAddr is a loopback address nothing listens on, for the whole test:
// its port stays bound to a socket that never listens, so a connection is
// refused at once and no other test's listener can take the port (a
// closed listener's port could be handed to the next server started).
func deadAddr(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
}

// A request to a server that cannot be reached was never sent: the client
// tries the next server (the outcome is not unknown) and succeeds there.
func TestRemote_unreachableServerIsSkipped(t *testing.T) {
	t.Parallel()
	s1 := startTCPServer(t, "s1", nil, true)
	waitFor(t, 10*time.Second, "s1 to lead", s1.IsLeader)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := s1.Apply(ctx, &fsm.GrantLease{TTL: int64(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	dead := deadAddr(t)
	// The first request goes to the second server listed: the dead one.
	r := election.NewRemote(nil, func() []string { return []string{string(s1.Addr()), dead} })
	t.Cleanup(r.Close)
	if ttl, err := r.KeepAlive(ctx, res.LeaseID); err != nil || ttl != time.Minute {
		t.Fatalf("keepalive with an unreachable server listed first: %v %v", ttl, err)
	}
	// Through the dead server alone, the failure is no unknown outcome.
	only := election.NewRemote(nil, func() []string { return []string{dead} })
	t.Cleanup(only.Close)
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	if _, err := only.KeepAlive(short, res.LeaseID); err == nil || errors.Is(err, election.ErrUnknownOutcome) {
		t.Fatalf("keepalive through an unreachable server: %v, want a failure known not to have happened", err)
	}
}

// A restore sent to a follower is passed on to the leader, which replaces
// the registry with it; a restore from a file given to the leader leaves
// the caller's file where it was (it is read through a copy). A server
// reports a peer's view of Raft.
func TestServer_restoreThroughAFollowerAndPeerStatus(t *testing.T) {
	t.Parallel()
	servers := tcpClusterWith(t, 3, func(cfg *election.ServerConfig) {
		// Calmer timings than the tests' own: no leader change on a busy
		// host while the restore travels.
		cfg.HeartbeatTimeout = 300 * time.Millisecond
		cfg.ElectionTimeout = 300 * time.Millisecond
		cfg.LeaderLeaseTimeout = 150 * time.Millisecond
	})
	leader, follower := leaderAndFollower(servers)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	register := func(name string) {
		t.Helper()
		if _, err := leader.Apply(ctx, &fsm.RegisterNode{Name: name, Address: "10.0.0.1"}); err != nil {
			t.Fatal(err)
		}
	}
	known := func(name string) bool { _, ok := leader.FSM().Node(name); return ok }

	id, _ := leader.Leader()
	st, err := follower.PeerStatus(ctx, string(leader.Addr()))
	if err != nil || st.Node != id || st.Leader != id || st.Term == 0 || len(st.Peers) != 3 {
		t.Fatalf("the leader's status asked by a follower: %+v %v", st, err)
	}
	if _, err := follower.PeerStatus(ctx, deadAddr(t)); err == nil {
		t.Fatal("status of an unreachable peer answered")
	}

	register("kept")
	var snap bytes.Buffer
	if err := leader.SaveSnapshot(&snap); err != nil {
		t.Fatal(err)
	}
	register("dropped")
	r := election.NewRemote(nil, func() []string { return []string{string(follower.Addr())} })
	t.Cleanup(r.Close)
	indexBefore := leader.FSM().Index()
	if err := r.RestoreFrom(ctx, bytes.NewReader(snap.Bytes())); err != nil {
		t.Fatalf("restore through a follower: %v", err)
	}
	// The registry's index moves on past what it was, so blocking
	// queries and streams see the restore as a change.
	if got := leader.FSM().Index(); got <= indexBefore {
		t.Fatalf("index after the restore %d, want above %d", got, indexBefore)
	}
	if !known("kept") || known("dropped") {
		t.Fatalf("after the restore: kept %v dropped %v, want the saved registry", known("kept"), known("dropped"))
	}
	// A snapshot the leader refuses is refused through the follower too.
	if err := r.RestoreFrom(ctx, bytes.NewReader([]byte("not a snapshot"))); err == nil {
		t.Fatal("a malformed snapshot restored through a follower reported success")
	}
	// Sent to the follower unchecked, it is the leader that refuses it,
	// and the follower passes the refusal on.
	if err := r.PostRestore(ctx, string(follower.Addr()), []byte("not a snapshot")); err == nil {
		t.Fatal("a malformed snapshot forwarded by a follower reported success")
	}
	if !known("kept") {
		t.Fatal("a refused restore changed the registry")
	}

	path := filepath.Join(t.TempDir(), "snap")
	if err := os.WriteFile(path, snap.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	register("dropped-again")
	if err := leader.RestoreSnapshot(ctx, f); err != nil {
		t.Fatalf("restore from a file: %v", err)
	}
	if !known("kept") || known("dropped-again") {
		t.Fatalf("after the file restore: kept %v dropped %v, want the saved registry", known("kept"), known("dropped-again"))
	}
	if off, err := f.Seek(0, io.SeekCurrent); err != nil || off != 0 {
		t.Fatalf("the caller's file was read from: offset %d %v", off, err)
	}
}
