package election_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/election/electiontest"
	"github.com/sidecarhq/sidecar/fsm"
)

// cutBackend drops keepalives while cut, as a network cut between a
// sidecar and the leader would.
type cutBackend struct {
	election.Backend
	cut atomic.Bool
}

func (b *cutBackend) KeepAlive(ctx context.Context, id string) (time.Duration, error) {
	if b.cut.Load() {
		return 0, errors.New("network unreachable")
	}
	return b.Backend.KeepAlive(ctx, id)
}

// whenChanged records the moment cond first holds on a registry, watching
// every change rather than polling.
func whenChanged(ctx context.Context, reg *fsm.FSM, cond func() bool) <-chan time.Time {
	out := make(chan time.Time, 1)
	go func() {
		for {
			ch := reg.Watch()
			if cond() {
				out <- time.Now()
				return
			}
			select {
			case <-ctx.Done():
				close(out)
				return
			case <-ch:
			}
		}
	}()
	return out
}

func TestLocal_Self_demotesBeforeLeaseExpires(t *testing.T) {
	c := electiontest.NewCluster(t, 1, nil)
	srv := c.Servers[0]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	cb := &cutBackend{Backend: c.Backend()}
	a := newLocal(t, "node-a", cb, srv.FSM())
	b := newLocal(t, "node-b", c.Backend(), srv.FSM())
	const ttl = time.Second
	sessA, err := a.NewSession(ctx, ttl)
	if err != nil {
		t.Fatal(err)
	}
	sessB, err := b.NewSession(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := a.Campaign(ctx, election.CampaignSpec{Election: "db", Candidate: "a", Lease: sessA.ID()}); err != nil || !r.Leader {
		t.Fatalf("campaign a: %+v %v", r, err)
	}
	if _, err := b.Campaign(ctx, election.CampaignSpec{Election: "db", Candidate: "b", Lease: sessB.ID()}); err != nil {
		t.Fatal(err)
	}
	// Let a few keepalives through, then cut A off.
	waitFor(t, 5*time.Second, "a keepalive acknowledged", func() bool {
		return sessA.ValidUntil().After(time.Now().Add(ttl - ttl/4))
	})
	cb.cut.Store(true)
	trustedUntil := sessA.ValidUntil()

	expired := whenChanged(ctx, srv.FSM(), func() bool {
		m, _ := srv.FSM().Election("db")
		return m.Holder == nil || m.Holder.ID != "a"
	})
	bLeads := make(chan time.Time, 1)
	go func() {
		for ctx.Err() == nil {
			if b.Self("db").Leader {
				bLeads <- time.Now()
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	for a.Self("db").Leader {
		time.Sleep(time.Millisecond)
	}
	demoted := time.Now()
	tExpire := <-expired
	tB := <-bLeads
	t.Logf("A demoted itself %v before the servers expired its lease; B led %v after A demoted", tExpire.Sub(demoted), tB.Sub(demoted))
	if !demoted.Before(tExpire) {
		t.Fatalf("A reported leader:false at %v, not before the lease expired at %v", demoted, tExpire)
	}
	if !demoted.Before(tB) {
		t.Fatal("B led before A stopped reporting leadership: two leaders")
	}
	// Promptly, not to the millisecond: the loop above polls every 1 ms,
	// and a loaded CI machine delays it (it saw 5.6 ms).
	if demoted.After(trustedUntil.Add(50 * time.Millisecond)) {
		t.Fatalf("A demoted %v after the last keepalive's send time + TTL - margin", demoted.Sub(trustedUntil))
	}
	if st := b.Self("db"); !st.Leader || st.Token <= 0 {
		t.Fatalf("B self = %+v", st)
	}
}

func TestLocal_HoldCampaign_handoverInOneCommit(t *testing.T) {
	c := electiontest.NewCluster(t, 1, nil)
	srv := c.Servers[0]
	a := newLocal(t, "node-a", c.Backend(), srv.FSM())
	b := newLocal(t, "node-b", c.Backend(), srv.FSM())

	ctxA, dropA := context.WithCancel(context.Background())
	defer dropA()
	ctxB, dropB := context.WithCancel(context.Background())
	defer dropB()
	linesA := make(chan api.CampaignResult, 16)
	linesB := make(chan api.CampaignResult, 16)
	doneA := make(chan error, 1)
	doneB := make(chan error, 1)
	go func() {
		doneA <- a.HoldCampaign(ctxA, election.CampaignSpec{Election: "web", Candidate: "a", Value: "10.0.0.1:80"}, 10*time.Second,
			func(r api.CampaignResult) error { linesA <- r; return nil })
	}()
	first := <-linesA
	if !first.Leader {
		t.Fatalf("first line of A = %+v, want leader", first)
	}
	go func() {
		doneB <- b.HoldCampaign(ctxB, election.CampaignSpec{Election: "web", Candidate: "b", Value: "10.0.0.2:80"}, 10*time.Second,
			func(r api.CampaignResult) error { linesB <- r; return nil })
	}()
	if w := <-linesB; w.Leader || w.Current == nil || w.Current.Candidate != "a" {
		t.Fatalf("first line of B = %+v, want waiting behind a", w)
	}

	dropA() // the connection of A's client closes
	if err := <-doneA; err != nil {
		t.Fatal(err)
	}
	got := <-linesB
	if !got.Leader || got.Token <= first.Token {
		t.Fatalf("B after A's connection closed = %+v, want leader with token > %d", got, first.Token)
	}
	// One commit: the entry that revoked A's hold lease made B the leader.
	if leases := srv.FSM().TableIndex(fsm.TableLeases); got.Token != leases {
		t.Fatalf("B's token %d is not the index %d of the revoke of A's lease: handover took more than one entry", got.Token, leases)
	}
	dropB()
	if err := <-doneB; err != nil {
		t.Fatal(err)
	}
	if m, _ := srv.FSM().Election("web"); m.Holder != nil {
		t.Fatalf("election still led by %+v after both holds ended", m.Holder)
	}
}

func TestLocal_Lock_waitsAndTimesOut(t *testing.T) {
	c := electiontest.NewCluster(t, 1, nil)
	srv := c.Servers[0]
	ctx := context.Background()
	a := newLocal(t, "node-a", c.Backend(), srv.FSM())
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	b := newLocal(t, "node-b", c.Backend(), srv.FSM())
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	held, err := a.Lock(ctx, election.LockSpec{Name: "job", Value: "a"})
	if err != nil || !held.Held {
		t.Fatalf("a lock = %+v %v", held, err)
	}
	start := time.Now()
	res, err := b.Lock(ctx, election.LockSpec{Name: "job", Wait: 150 * time.Millisecond})
	if err != nil || res.Held || res.Holder == nil || res.Holder.Value != "a" {
		t.Fatalf("b lock while held = %+v %v, want not held, holder a", res, err)
	}
	if waited := time.Since(start); waited < 150*time.Millisecond {
		t.Fatalf("b returned after %v, before its wait", waited)
	}
	if m, _ := srv.FSM().Lock("job"); len(m.Waiters) != 0 {
		t.Fatalf("b still in line after its wait: %+v", m.Waiters)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		a.Unlock(ctx, "job", "")
	}()
	res, err = b.Lock(ctx, election.LockSpec{Name: "job", Wait: 5 * time.Second})
	if err != nil || !res.Held || res.Token <= held.Token {
		t.Fatalf("b lock after release = %+v %v, want held with token > %d", res, err, held.Token)
	}
}

func TestLocal_Close_releasesHolds(t *testing.T) {
	c := electiontest.NewCluster(t, 1, nil)
	srv := c.Servers[0]
	ctx := context.Background()
	a := election.NewLocal(election.LocalConfig{Node: "node-a", Logger: electiontest.Logger(t, "a")}, c.Backend(), srv.FSM())
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if r, err := a.Lock(ctx, election.LockSpec{Name: "job"}); err != nil || !r.Held {
		t.Fatal(r, err)
	}
	if r, err := a.Campaign(ctx, election.CampaignSpec{Election: "web", Candidate: "a"}); err != nil || !r.Leader {
		t.Fatal(r, err)
	}
	// What an app holds on a lease of its own lives on with that lease.
	appLease, err := a.GrantLease(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := a.Lock(ctx, election.LockSpec{Name: "app-job", Lease: appLease}); err != nil || !r.Held {
		t.Fatal(r, err)
	}
	if r, err := a.Campaign(ctx, election.CampaignSpec{Election: "app", Candidate: "app-1", Lease: appLease}); err != nil || !r.Leader {
		t.Fatal(r, err)
	}
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if m, _ := srv.FSM().Lock("job"); m.Holder != nil {
		t.Fatalf("lock still held after Close: %+v", m.Holder)
	}
	if m, _ := srv.FSM().Election("web"); m.Holder != nil {
		t.Fatalf("election still led after Close: %+v", m.Holder)
	}
	if m, _ := srv.FSM().Lock("app-job"); m.Holder == nil || m.Holder.Lease != appLease {
		t.Fatalf("the app's lock after Close: %+v, want still held on its lease", m.Holder)
	}
	if m, _ := srv.FSM().Election("app"); m.Holder == nil || m.Holder.ID != "app-1" {
		t.Fatalf("the app's election after Close: %+v, want still led by app-1", m.Holder)
	}
	if ls := srv.FSM().Leases(); len(ls) != 1 {
		t.Fatalf("%d leases left after Close, want the app's only", len(ls))
	}
}

// A candidacy tied to a service instance leads only while the instance
// passes: it resigns when the instance turns critical, and the next
// candidate takes over; it campaigns again when the instance passes.
func TestLocal_Campaign_followsServiceHealth(t *testing.T) {
	c := electiontest.NewCluster(t, 1, nil)
	srv := c.Servers[0]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	backend := c.Backend()
	for _, n := range []string{"node-a", "node-b"} {
		if _, err := backend.Apply(ctx, &fsm.RegisterNode{Name: n, Address: "10.0.0.1"}); err != nil {
			t.Fatal(err)
		}
	}
	web := fsm.Instance{ID: "web-1", Name: "web", Node: "node-a", Port: 80, Checks: []fsm.Check{{ID: "hb", Type: "ttl", TTL: 10e9}}}
	if _, err := backend.Apply(ctx, &fsm.RegisterInstance{Instance: web}); err != nil {
		t.Fatal(err)
	}
	setCheck := func(status string) {
		t.Helper()
		if _, err := backend.Apply(ctx, &fsm.UpdateCheck{Node: "node-a", CheckID: "hb", Status: status}); err != nil {
			t.Fatal(err)
		}
	}
	a := newLocal(t, "node-a", backend, srv.FSM())
	b := newLocal(t, "node-b", backend, srv.FSM())
	for _, l := range []*election.Local{a, b} {
		if err := l.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// The instance starts critical: A waits outside the election.
	r, err := a.Campaign(ctx, election.CampaignSpec{Election: "db", Candidate: "a", Value: "a", Service: "web-1"})
	if err != nil || r.Leader {
		t.Fatalf("campaign tied to a critical service: %+v %v, want not leading", r, err)
	}
	if m, ok := srv.FSM().Election("db"); ok && (m.Holder != nil || len(m.Waiters) > 0) {
		t.Fatalf("a critical service's candidate entered the election: %+v", m)
	}
	setCheck(fsm.StatusPassing)
	waitFor(t, 5*time.Second, "A leads once its service passes", func() bool { return a.Self("db").Leader })
	if _, err := b.Campaign(ctx, election.CampaignSpec{Election: "db", Candidate: "b", Value: "b"}); err != nil {
		t.Fatal(err)
	}
	tokenA := a.Self("db").Token
	setCheck(fsm.StatusCritical)
	waitFor(t, 5*time.Second, "B takes over when A's service turns critical", func() bool { return b.Self("db").Leader })
	if a.Self("db").Leader {
		t.Fatal("A still reports leadership with a critical service")
	}
	if tok := b.Self("db").Token; tok <= tokenA {
		t.Fatalf("B's token %d not above A's %d", tok, tokenA)
	}
	setCheck(fsm.StatusPassing)
	waitFor(t, 5*time.Second, "A back in line", func() bool {
		m, _ := srv.FSM().Election("db")
		return m.WaiterIndex("a") == 0
	})
}

// A sidecar cut off longer than its node session's TTL loses the session
// (the servers expire it and hand its holds on); once it reaches them again
// it opens a new node session, its candidacies campaign again on it, and
// locks taken without a lease work again.
func TestLocal_nodeSessionRenewedAfterLoss(t *testing.T) {
	c := electiontest.NewCluster(t, 1, nil)
	srv := c.Servers[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	cb := &cutBackend{Backend: c.Backend()}
	metrics := prometheus.NewRegistry()
	a := newLocalWith(t, "node-a", cb, srv.FSM(), func(cfg *election.LocalConfig) { cfg.Registerer = metrics })
	b := newLocal(t, "node-b", c.Backend(), srv.FSM())
	for _, l := range []*election.Local{a, b} {
		if err := l.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if r, err := a.Campaign(ctx, election.CampaignSpec{Election: "db", Candidate: "a", Value: "a:1"}); err != nil || !r.Leader {
		t.Fatalf("campaign a: %+v %v", r, err)
	}
	first := a.Self("db").Token
	if r, err := a.Lock(ctx, election.LockSpec{Name: "job"}); err != nil || !r.Held {
		t.Fatalf("lock a: %+v %v", r, err)
	}
	// A lock on an app's own lease, which outlives the cut.
	appLease, err := a.GrantLease(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := a.Lock(ctx, election.LockSpec{Name: "app-job", Lease: appLease}); err != nil || !r.Held {
		t.Fatalf("lock app-job: %+v %v", r, err)
	}
	old := a.NodeSession().ID()

	cb.cut.Store(true)
	if r, err := b.Campaign(ctx, election.CampaignSpec{Election: "db", Candidate: "b", Value: "b:1", Wait: 10 * time.Second}); err != nil || !r.Leader {
		t.Fatalf("b did not take over from the cut-off a: %+v %v", r, err)
	}
	if _, ok := srv.FSM().Lease(old); ok {
		t.Fatal("a's node session still known after b took over")
	}
	// While cut off, requests on the node session are refused as
	// unavailable, not as an unknown lease.
	if _, err := a.Lock(ctx, election.LockSpec{Name: "other"}); !errors.Is(err, election.ErrNotLeader) {
		t.Fatalf("lock on a lost node session: %v, want ErrNotLeader", err)
	}

	cb.cut.Store(false)
	waitFor(t, 10*time.Second, "a new node session on a", func() bool {
		s := a.NodeSession()
		return s.ID() != old && s.Live()
	})
	waitFor(t, 10*time.Second, "a campaigning again", func() bool {
		m, _ := srv.FSM().Election("db")
		for _, w := range m.Waiters {
			if w.ID == "a" && w.Lease == a.NodeSession().ID() {
				return true
			}
		}
		return false
	})
	if err := b.Resign(ctx, "db", "b"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a leading again", func() bool { return a.Self("db").Leader })
	if tok := a.Self("db").Token; tok <= first {
		t.Fatalf("a leads again with token %d, not above its first %d", tok, first)
	}
	r, err := a.Lock(ctx, election.LockSpec{Name: "job"})
	if err != nil || !r.Held || r.Lease != a.NodeSession().ID() {
		t.Fatalf("lock on the new node session: %+v %v", r, err)
	}
	// The app's lock was never lost: asking for it again is no new
	// acquisition. Three in all: job twice (one per node session) and
	// app-job once.
	if r, err := a.Lock(ctx, election.LockSpec{Name: "app-job", Lease: appLease}); err != nil || !r.Held {
		t.Fatalf("app-job after the renewal: %+v %v", r, err)
	}
	if got := counterValue(t, metrics, "sidecar_lock_acquisitions_total"); got != 3 {
		t.Fatalf("sidecar_lock_acquisitions_total = %v, want 3 (job on each node session, app-job once)", got)
	}
}
