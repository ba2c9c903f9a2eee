package election_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/election/electiontest"
	"github.com/sidecarhq/sidecar/fsm"
)

// oneServer starts a one-server cluster and a context that bounds the
// test using it.
func oneServer(t *testing.T) (*electiontest.Cluster, *election.Server, context.Context) {
	t.Helper()
	c := electiontest.NewCluster(t, 1, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c, c.Servers[0], ctx
}

// newLocalWith is newLocal with cfg's Registerer and Now.
func newLocalWith(t *testing.T, node string, b election.Backend, reg *fsm.FSM, edit func(*election.LocalConfig)) *election.Local {
	t.Helper()
	cfg := election.LocalConfig{Node: node, SessionTTL: 2 * time.Second, Logger: electiontest.Logger(t, node)}
	edit(&cfg)
	l := election.NewLocal(cfg, b, reg)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		l.Close(ctx)
	})
	return l
}

// leaderGauges returns the sidecar_election_leader series of reg by
// election.
func leaderGauges(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "sidecar_election_leader" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "election" {
					out[lp.GetValue()] = m.GetGauge().GetValue()
				}
			}
		}
	}
	return out
}

// registerWeb registers node-a and its instance web-1, whose TTL check
// starts critical, and returns a function setting the check's status.
func registerWeb(ctx context.Context, t *testing.T, backend election.Backend) func(status string) {
	t.Helper()
	if _, err := backend.Apply(ctx, &fsm.RegisterNode{Name: "node-a", Address: "10.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	web := fsm.Instance{ID: "web-1", Name: "web", Node: "node-a", Port: 80, Checks: []fsm.Check{{ID: "hb", Type: "ttl", TTL: 10e9}}}
	if _, err := backend.Apply(ctx, &fsm.RegisterInstance{Instance: web}); err != nil {
		t.Fatal(err)
	}
	return func(status string) {
		t.Helper()
		if _, err := backend.Apply(ctx, &fsm.UpdateCheck{Node: "node-a", CheckID: "hb", Status: status}); err != nil {
			t.Fatal(err)
		}
	}
}

// A candidacy tied to a service, on an app's lease that ended while the
// service was critical, has nothing to campaign with when the service
// passes again: the sidecar drops it (its leader gauge goes) instead of
// campaigning on an unknown lease, and the election gains no candidate.
func TestLocal_followHealth_dropsACandidacyWhoseLeaseEnded(t *testing.T) {
	t.Parallel()
	c, srv, ctx := oneServer(t)
	setCheck := registerWeb(ctx, t, c.Backend())
	metrics := prometheus.NewRegistry()
	a := newLocalWith(t, "node-a", c.Backend(), srv.FSM(), func(cfg *election.LocalConfig) { cfg.Registerer = metrics })
	lease, err := a.GrantLease(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := a.Campaign(ctx, election.CampaignSpec{Election: "db", Candidate: "a", Service: "web-1", Lease: lease}); err != nil || r.Leader {
		t.Fatalf("campaign tied to a critical service: %+v %v", r, err)
	}
	if g, ok := leaderGauges(t, metrics)["db"]; !ok || g != 0 {
		t.Fatalf("leader gauge of a parked candidacy: %v %v, want 0", g, ok)
	}
	if err := a.RevokeLease(ctx, lease); err != nil {
		t.Fatal(err)
	}
	setCheck(fsm.StatusPassing)
	waitFor(t, 5*time.Second, "the candidacy on the ended lease dropped", func() bool {
		_, ok := leaderGauges(t, metrics)["db"]
		return !ok
	})
	if m, ok := srv.FSM().Election("db"); ok && (m.Holder != nil || len(m.Waiters) > 0) {
		t.Fatalf("a candidate entered on an ended lease: %+v", m)
	}
}

// WaitSelf answers at once when the elections index is past the one
// given, blocks until it moves otherwise, and also returns, with no index
// change, when the leader's own certainty of its lease runs out (the
// registry still showing it leading).
func TestLocal_WaitSelf_returnsOnChangeAndOnSelfDemotion(t *testing.T) {
	t.Parallel()
	c, srv, ctx := oneServer(t)
	var offset atomic.Int64 // a's clock runs ahead by this much
	cb := &cutBackend{Backend: c.Backend()}
	a := newLocalWith(t, "node-a", cb, srv.FSM(), func(cfg *election.LocalConfig) {
		cfg.Now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	})
	b := newLocal(t, "node-b", c.Backend(), srv.FSM())
	for _, l := range []*election.Local{a, b} {
		if err := l.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if r, err := a.Campaign(ctx, election.CampaignSpec{Election: "db", Candidate: "a"}); err != nil || !r.Leader {
		t.Fatalf("campaign a: %+v %v", r, err)
	}

	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	st, idx := a.WaitSelf(wctx, "db", 0)
	if wctx.Err() != nil || !st.Leader || st.Candidate != "a" || idx == 0 {
		t.Fatalf("WaitSelf from index 0: %+v at %d (ctx %v), want leading at once", st, idx, wctx.Err())
	}
	wcancel()

	type answer struct {
		st  api.SelfStatus
		idx uint64
	}
	got := make(chan answer, 1)
	go func() {
		st, idx := a.WaitSelf(ctx, "db", idx)
		got <- answer{st, idx}
	}()
	if _, err := b.Campaign(ctx, election.CampaignSpec{Election: "db", Candidate: "b"}); err != nil {
		t.Fatal(err)
	}
	ans := <-got
	if !ans.st.Leader || ans.idx <= idx {
		t.Fatalf("WaitSelf from index %d: %+v at %d, want leading at a later index", idx, ans.st, ans.idx)
	}
	idx = ans.idx

	// Cut a's keepalives right after one was acknowledged, and move its
	// clock so that its certainty runs out 300 ms from now, long before
	// the servers can expire the lease.
	s := a.NodeSession()
	select {
	case <-s.Changed():
	case <-ctx.Done():
		t.Fatal("no keepalive acknowledged")
	}
	cb.cut.Store(true)
	left, _ := a.LeaseRemaining(s.ID())
	if left < time.Second {
		t.Fatalf("only %v of certainty left right after a keepalive", left)
	}
	offset.Store(int64(left - 300*time.Millisecond))
	if !a.Self("db").Leader {
		t.Fatal("a not leading before its certainty runs out")
	}
	go func() {
		st, idx := a.WaitSelf(ctx, "db", idx)
		got <- answer{st, idx}
	}()
	ans = <-got
	if ans.st.Leader || ans.idx != idx {
		t.Fatalf("WaitSelf once a's certainty ran out: %+v at %d, want not leading at the same index %d", ans.st, ans.idx, idx)
	}
	if h := holderOfElection(srv.FSM(), "db"); h != "a" {
		t.Fatalf("the servers already hold %q as leader: the self-demotion came too late to tell", h)
	}
}

// A lock whose holder's lease expired stays vacant for its lock delay; a
// Lock waiting in line wakes when the delay ends and hands the lock to the
// head of the line (another waiter), then goes on waiting, and gets the
// lock when that one releases it.
func TestLocal_Lock_waitsOutALockDelay(t *testing.T) {
	t.Parallel()
	c, srv, ctx := oneServer(t)
	backend := c.Backend()
	cb := &cutBackend{Backend: backend}
	a := newLocal(t, "node-a", cb, srv.FSM())
	b := newLocal(t, "node-b", backend, srv.FSM())
	sa, err := a.NewSession(ctx, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	first, err := a.Lock(ctx, election.LockSpec{Name: "job", Lease: sa.ID(), LockDelay: 400 * time.Millisecond})
	if err != nil || !first.Held {
		t.Fatalf("a locks: %+v %v", first, err)
	}
	// c waits first in line, entered by hand: nothing acquires for it.
	grant, err := backend.Apply(ctx, &fsm.GrantLease{TTL: int64(10 * time.Second), Node: "node-c"})
	if err != nil {
		t.Fatal(err)
	}
	lc := grant.LeaseID
	if _, err := backend.Apply(ctx, &fsm.AcquireLock{Name: "job", Lease: lc, Node: "node-c", Queue: true, Now: time.Now().UnixNano()}); err != nil {
		t.Fatal(err)
	}
	sb, err := b.NewSession(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	type answer struct {
		r   api.LockResult
		err error
	}
	got := make(chan answer, 1)
	go func() {
		r, err := b.Lock(ctx, election.LockSpec{Name: "job", Lease: sb.ID(), Wait: 10 * time.Second})
		got <- answer{r, err}
	}()
	waitFor(t, 5*time.Second, "b in line behind c", func() bool {
		m, _ := srv.FSM().Lock("job")
		return m.WaiterIndex(lc) == 0 && m.WaiterIndex(sb.ID()) == 1
	})

	cb.cut.Store(true) // a's lease expires: the lock delay begins
	waitFor(t, 5*time.Second, "a's lease expired", func() bool {
		_, ok := srv.FSM().Lease(sa.ID())
		return !ok
	})
	m, _ := srv.FSM().Lock("job")
	if m.DelayUntil == 0 {
		t.Fatalf("no lock delay after an expiry: %+v", m)
	}
	delayEnd := time.Unix(0, m.DelayUntil)
	waitFor(t, 3*time.Second, "c handed the lock when the delay ended", func() bool {
		m, _ := srv.FSM().Lock("job")
		return m.Holder != nil && m.Holder.Lease == lc
	})
	m, _ = srv.FSM().Lock("job")
	if since := time.Unix(0, m.Holder.Since); since.Before(delayEnd) {
		t.Fatalf("c handed the lock at %v, before the delay ended at %v", since, delayEnd)
	}
	select {
	case a := <-got:
		t.Fatalf("b's Lock answered %+v %v while c holds and b is in line", a.r, a.err)
	default:
	}
	if _, err := backend.Apply(ctx, &fsm.ReleaseLock{Name: "job", Lease: lc, Node: "node-c", Now: time.Now().UnixNano()}); err != nil {
		t.Fatal(err)
	}
	ans := <-got
	if ans.err != nil || !ans.r.Held || ans.r.Token <= m.Holder.Token {
		t.Fatalf("b's Lock after c released: %+v %v, want held with a token above %d", ans.r, ans.err, m.Holder.Token)
	}
}

// TestLocal_Resign_leavesTheElectionForGood: a candidate resigned through
// its sidecar is forgotten there: the sidecar's election gauge for it goes.
func TestLocal_Resign_leavesTheElectionForGood(t *testing.T) {
	t.Parallel()
	c, srv, ctx := oneServer(t)
	metrics := prometheus.NewRegistry()
	a := newLocalWith(t, "node-a", c.Backend(), srv.FSM(), func(cfg *election.LocalConfig) { cfg.Registerer = metrics })
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if r, err := a.Campaign(ctx, election.CampaignSpec{Election: "db", Candidate: "a"}); err != nil || !r.Leader {
		t.Fatalf("a campaigns: %+v %v", r, err)
	}
	if err := a.Resign(ctx, "db", "a"); err != nil {
		t.Fatal(err)
	}
	if g := leaderGauges(t, metrics); len(g) != 0 {
		t.Fatalf("sidecar_election_leader after the resignation: %v, want no series", g)
	}
}

// TestLocal_Lock_withoutWaitStaysOutOfLine: a lock asked for without a
// wait while another holds it answers not held and leaves no waiter
// behind, so it is not handed the lock later.
func TestLocal_Lock_withoutWaitStaysOutOfLine(t *testing.T) {
	t.Parallel()
	c, srv, ctx := oneServer(t)
	a := newLocal(t, "node-a", c.Backend(), srv.FSM())
	b := newLocal(t, "node-b", c.Backend(), srv.FSM())
	la, err := a.GrantLease(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	lb, err := b.GrantLease(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := a.Lock(ctx, election.LockSpec{Name: "job", Lease: la}); err != nil || !r.Held {
		t.Fatalf("a locks: %+v %v", r, err)
	}
	r, err := b.Lock(ctx, election.LockSpec{Name: "job", Lease: lb})
	if err != nil || r.Held || r.Holder == nil || r.Holder.Lease != la {
		t.Fatalf("b's lock without wait: %+v %v, want not held, held by a's lease", r, err)
	}
	if m, _ := srv.FSM().Lock("job"); m.WaiterIndex(lb) >= 0 {
		t.Fatalf("b's lease waits in line after a lock without wait: %+v", m)
	}
}

// TestLocal_Lock_handedOverAsItsWaitEnds: a waiter whose wait ends just as
// the lock is handed to it answers held (and holds it); one whose wait
// ends with the lock still held elsewhere answers not held and leaves the
// line.
func TestLocal_Lock_handedOverAsItsWaitEnds(t *testing.T) {
	t.Parallel()
	c, srv, ctx := oneServer(t)
	a := newLocal(t, "node-a", c.Backend(), srv.FSM())
	la, err := a.GrantLease(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := a.Lock(ctx, election.LockSpec{Name: "job", Lease: la}); err != nil || !r.Held {
		t.Fatalf("a locks: %+v %v", r, err)
	}
	var releaseFirst atomic.Bool
	hb := &hookBackend{Backend: c.Backend()}
	hb.apply = func(ctx context.Context, cmd fsm.Command) (*fsm.Result, error) {
		if rl, ok := cmd.(*fsm.ReleaseLock); ok && rl.OnlyWaiting && releaseFirst.Load() {
			// A lets go while B leaves the line: B is handed the lock first.
			if err := a.Unlock(ctx, "job", la); err != nil {
				return nil, err
			}
		}
		return nil, errPass
	}
	b := newLocal(t, "node-b", hb, srv.FSM())
	lb, err := b.GrantLease(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	r, err := b.Lock(ctx, election.LockSpec{Name: "job", Lease: lb, Wait: 50 * time.Millisecond})
	if err != nil || r.Held {
		t.Fatalf("b's wait on a held lock: %+v %v, want not held", r, err)
	}
	if m, _ := srv.FSM().Lock("job"); m.WaiterIndex(lb) >= 0 {
		t.Fatalf("b still waits in line after its wait ended: %+v", m)
	}
	releaseFirst.Store(true)
	r, err = b.Lock(ctx, election.LockSpec{Name: "job", Lease: lb, Wait: 50 * time.Millisecond})
	if err != nil || !r.Held {
		t.Fatalf("b handed the lock as its wait ended: %+v %v, want held", r, err)
	}
	if m, _ := srv.FSM().Lock("job"); m.Holder == nil || m.Holder.Lease != lb || m.Holder.Token != r.Token {
		t.Fatalf("the registry's holder %+v, want b's lease with token %d", m.Holder, r.Token)
	}
}

// TestNewLocal_defaults: a Local made without a logger or clock works (it
// logs nowhere and reads the system clock).
func TestNewLocal_defaults(t *testing.T) {
	t.Parallel()
	c, srv, ctx := oneServer(t)
	l := election.NewLocal(election.LocalConfig{Node: "node-a"}, c.Backend(), srv.FSM())
	defer l.Close(ctx)
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if r, err := l.Lock(ctx, election.LockSpec{Name: "job"}); err != nil || !r.Held {
		t.Fatalf("lock on the node session: %+v %v", r, err)
	}
}
