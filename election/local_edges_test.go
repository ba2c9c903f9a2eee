package election_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/fsm"
)

// callTimes records when something was called.
type callTimes struct {
	mu    sync.Mutex
	times []time.Time
}

func (c *callTimes) add() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.times = append(c.times, time.Now())
	return len(c.times)
}

func (c *callTimes) list() []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Time(nil), c.times...)
}

// Start retries opening the node session while no leader is known, 50 ms
// after the first failure and twice as long after each next one.
func TestLocal_Start_backsOffWhileNoLeader(t *testing.T) {
	t.Parallel()
	c, srv, ctx := oneServer(t)
	var grants callTimes
	hb := &hookBackend{Backend: c.Backend()}
	hb.apply = func(_ context.Context, cmd fsm.Command) (*fsm.Result, error) {
		if g, ok := cmd.(*fsm.GrantLease); ok && g.Session {
			if grants.add() <= 3 {
				return nil, fmt.Errorf("%w: no leader yet", election.ErrNotLeader)
			}
		}
		return nil, errPass
	}
	l := newLocal(t, "node-a", hb, srv.FSM())
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if s := l.NodeSession(); s == nil || !s.Live() {
		t.Fatal("no live node session after Start")
	}
	at := grants.list()
	if len(at) != 4 {
		t.Fatalf("%d grants, want 4 (three refused)", len(at))
	}
	for i, want := range []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond} {
		if gap := at[i+1].Sub(at[i]); gap < want {
			t.Fatalf("retry %d came %v after the previous attempt, want at least %v", i+1, gap, want)
		}
	}
}

// Revoking the node session through the API ends it as a loss would: a new
// node session opens; revoking a connection-bound hold's session ends that
// session at once (closed, not lost).
func TestLocal_RevokeLease_ownSessions(t *testing.T) {
	t.Parallel()
	c, srv, ctx := oneServer(t)
	l := newLocal(t, "node-a", c.Backend(), srv.FSM())
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	old := l.NodeSession()
	if err := l.RevokeLease(ctx, old.ID()); err != nil {
		t.Fatal(err)
	}
	if _, ok := srv.FSM().Lease(old.ID()); ok {
		t.Fatal("node session still on the servers after its revoke")
	}
	if !errors.Is(old.Err(), election.ErrSessionLost) {
		t.Fatalf("revoked node session ended with %v, want ErrSessionLost", old.Err())
	}
	waitFor(t, 5*time.Second, "a new node session", func() bool {
		s := l.NodeSession()
		return s.ID() != old.ID() && s.Live()
	})

	s, err := l.NewSession(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.RevokeLease(ctx, s.ID()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
	default:
		t.Fatal("session still running after its revoke")
	}
	if err := s.Err(); err == nil || errors.Is(err, election.ErrSessionLost) {
		t.Fatalf("revoked session ended with %v, want closed", err)
	}
	if _, ok := l.LeaseRemaining(s.ID()); ok {
		t.Fatal("the sidecar still tracks the revoked session")
	}
}

// Abandon stops everything without releasing anything, as a crash would:
// the candidacy stays until the servers expire the node session (the
// service turning critical no longer resigns it, the next candidate takes
// over in the expiry's entry), and the sidecar's metrics are unregistered.
func TestLocal_Abandon_holdsEndByTTLOnly(t *testing.T) {
	t.Parallel()
	c, srv, ctx := oneServer(t)
	setCheck := registerWeb(ctx, t, c.Backend())
	setCheck(fsm.StatusPassing)
	metrics := prometheus.NewRegistry()
	a := newLocalWith(t, "node-a", c.Backend(), srv.FSM(), func(cfg *election.LocalConfig) {
		cfg.Registerer = metrics
		cfg.SessionTTL = time.Second
	})
	b := newLocal(t, "node-b", c.Backend(), srv.FSM())
	for _, l := range []*election.Local{a, b} {
		if err := l.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if r, err := a.Campaign(ctx, election.CampaignSpec{Election: "db", Candidate: "a", Service: "web-1"}); err != nil || !r.Leader {
		t.Fatalf("campaign a: %+v %v", r, err)
	}
	if _, err := b.Campaign(ctx, election.CampaignSpec{Election: "db", Candidate: "b"}); err != nil {
		t.Fatal(err)
	}
	if len(leaderGauges(t, metrics)) == 0 {
		t.Fatal("no leader gauge before Abandon")
	}
	lease := a.NodeSession().ID()
	a.Abandon()
	if families, err := metrics.Gather(); err != nil || len(families) != 0 {
		t.Fatalf("metrics still registered after Abandon: %d families, %v", len(families), err)
	}
	if h := holderOfElection(srv.FSM(), "db"); h != "a" {
		t.Fatalf("leader %q right after Abandon, want a still", h)
	}
	setCheck(fsm.StatusCritical)
	for {
		ch := srv.FSM().Watch()
		if holderOfElection(srv.FSM(), "db") == "b" {
			if _, ok := srv.FSM().Lease(lease); ok {
				t.Fatal("b took over while a's node session was still live: the abandoned sidecar resigned")
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("b never took over")
		case <-ch:
		}
	}
}

// fakeBackend grants any lease and fails keepalives with keepErr.
type fakeBackend struct {
	keepErr error
	calls   callTimes
}

func (b *fakeBackend) Apply(_ context.Context, cmd fsm.Command) (*fsm.Result, error) {
	if _, ok := cmd.(*fsm.GrantLease); ok {
		return &fsm.Result{LeaseID: "lease-1"}, nil
	}
	return &fsm.Result{}, nil
}

func (b *fakeBackend) KeepAlive(context.Context, string) (time.Duration, error) {
	b.calls.add()
	return 0, b.keepErr
}

// A short session whose keepalives fail retries them every 20 ms (a tenth
// of its TTL would be less), is no longer live once its TTL runs out, but
// does not end: only the servers' "unknown lease" ends it, as lost.
func TestSession_failedKeepalivesRetryAndExpireTrust(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fb := &fakeBackend{keepErr: errors.New("connection refused")}
	l := newLocal(t, "node-a", fb, fsm.New())
	start := time.Now()
	s, err := l.NewSession(ctx, 150*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "eight keepalive attempts", func() bool { return len(fb.calls.list()) >= 8 })
	at := fb.calls.list()
	if d := at[0].Sub(start); d < 50*time.Millisecond {
		t.Fatalf("first keepalive %v after the grant, want a third of the TTL", d)
	}
	for i := 1; i < len(at); i++ {
		if gap := at[i].Sub(at[i-1]); gap < 20*time.Millisecond {
			t.Fatalf("keepalive retry %d came %v after the previous attempt, want at least 20ms", i, gap)
		}
	}
	if s.Live() {
		t.Fatal("session live past its TTL without an acknowledged keepalive")
	}
	select {
	case <-s.Done():
		t.Fatalf("session ended by failed keepalives: %v", s.Err())
	default:
	}

	lost := &fakeBackend{keepErr: fmt.Errorf("%w: %q", fsm.ErrUnknownLease, "lease-1")}
	l2 := newLocal(t, "node-b", lost, fsm.New())
	s2, err := l2.NewSession(ctx, 150*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-s2.Done():
	case <-ctx.Done():
		t.Fatal("session not ended by an unknown lease")
	}
	if !errors.Is(s2.Err(), election.ErrSessionLost) {
		t.Fatalf("session ended with %v, want ErrSessionLost", s2.Err())
	}
}

// TestLocal_KeepAlive_ofALeaseGrantedElsewhere: an app may keep alive,
// through this sidecar, a lease granted through another; the sidecar then
// knows how long it surely stays live. A keepalive of an unknown lease is
// refused and leaves nothing known.
func TestLocal_KeepAlive_ofALeaseGrantedElsewhere(t *testing.T) {
	t.Parallel()
	c, srv, ctx := oneServer(t)
	a := newLocal(t, "node-a", c.Backend(), srv.FSM())
	g, err := c.Backend().Apply(ctx, &fsm.GrantLease{TTL: int64(time.Minute), Node: "node-b"})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := a.LeaseRemaining(g.LeaseID); ok {
		t.Fatal("the sidecar knows a lease it never saw a keepalive of")
	}
	ttl, err := a.KeepAlive(ctx, g.LeaseID)
	if err != nil || ttl != time.Minute {
		t.Fatalf("keepalive: ttl %v, %v", ttl, err)
	}
	if d, ok := a.LeaseRemaining(g.LeaseID); !ok || d <= 0 || d > time.Minute {
		t.Fatalf("remaining after a keepalive: %v %v, want within the minute's TTL", d, ok)
	}
	if _, err := a.KeepAlive(ctx, "ffffffffffffffff"); !errors.Is(err, fsm.ErrUnknownLease) {
		t.Fatalf("keepalive of an unknown lease: %v", err)
	}
	if d, ok := a.LeaseRemaining("ffffffffffffffff"); ok {
		t.Fatalf("an unknown lease's keepalive left it known (%v)", d)
	}
}

// TestSession_Close_retriesThroughALeaderChange: closing a session whose
// revoke first meets no leader (an election under way) tries again, and
// the lease and what it held are gone when Close returns.
func TestSession_Close_retriesThroughALeaderChange(t *testing.T) {
	t.Parallel()
	c, srv, ctx := oneServer(t)
	var failed atomic.Int32
	hb := &hookBackend{Backend: c.Backend()}
	hb.apply = func(_ context.Context, cmd fsm.Command) (*fsm.Result, error) {
		if _, ok := cmd.(*fsm.RevokeLease); ok && failed.Add(1) <= 2 {
			return nil, fmt.Errorf("%w: an election is under way", election.ErrNotLeader)
		}
		return nil, errPass
	}
	l := newLocal(t, "node-a", hb, srv.FSM())
	s, err := l.NewSession(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := l.Lock(ctx, election.LockSpec{Name: "job", Lease: s.ID()}); err != nil || !r.Held {
		t.Fatalf("lock: %+v %v", r, err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatalf("close through a leader change: %v", err)
	}
	if _, ok := srv.FSM().Lease(s.ID()); ok {
		t.Fatal("the session's lease outlived Close")
	}
	if m, _ := srv.FSM().Lock("job"); m != nil && m.Holder != nil {
		t.Fatalf("the session's lock outlived Close: %+v", m.Holder)
	}
}
