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

// lockedBy sets up a one-server cluster where node-a holds lock "job" on
// a one-second lease whose keepalives cut stops, with a lock delay of
// delay, and returns the cluster, the cut and the holder's token.
func lockedBy(ctx context.Context, t *testing.T, delay time.Duration) (*electiontest.Cluster, *cutBackend, *election.Session, uint64) {
	t.Helper()
	c := electiontest.NewCluster(t, 1, nil)
	cb := &cutBackend{Backend: c.Backend()}
	a := newLocal(t, "node-a", cb, c.Servers[0].FSM())
	sa, err := a.NewSession(ctx, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	r, err := a.Lock(ctx, election.LockSpec{Name: "job", Lease: sa.ID(), LockDelay: delay})
	if err != nil || !r.Held {
		t.Fatalf("a locks: %+v %v", r, err)
	}
	return c, cb, sa, r.Token
}

// A connection-bound lock waiting in line tells its client who holds the
// lock, then that the lock is vacant when the holder's lease expired (a
// lock delay runs), then, once the delay is over, that it holds the lock
// with a greater token: one line per change, none repeated. When the
// client goes, the lock is released.
func TestLocal_HoldLock_waitsInLineThroughALockDelay(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, cb, _, token := lockedBy(ctx, t, 300*time.Millisecond)
	srv := c.Servers[0]
	b := newLocal(t, "node-b", c.Backend(), srv.FSM())
	lines := make(chan api.LockResult, 16)
	hctx, hang := context.WithCancel(ctx)
	defer hang()
	done := make(chan error, 1)
	go func() {
		done <- b.HoldLock(hctx, election.LockSpec{Name: "job"}, 5*time.Second, func(r api.LockResult) error {
			lines <- r
			return nil
		})
	}()
	next := func(what string) api.LockResult {
		t.Helper()
		select {
		case r := <-lines:
			return r
		case <-ctx.Done():
			t.Fatalf("no line: %s", what)
			return api.LockResult{}
		}
	}
	if r := next("the holder"); r.Held || r.Holder == nil || r.Holder.Token != token {
		t.Fatalf("first line %+v, want not held naming the holder's token %d", r, token)
	}
	cb.cut.Store(true)
	if r := next("vacant"); r.Held || r.Holder != nil {
		t.Fatalf("second line %+v (holder %+v), want not held, vacant", r, r.Holder)
	}
	r := next("held")
	if !r.Held || r.Token <= token {
		t.Fatalf("third line %+v, want held with a token above %d", r, token)
	}
	m, _ := srv.FSM().Lock("job")
	if m.Holder == nil || m.Holder.Token != r.Token || m.Holder.Since < m.DelayUntil {
		t.Fatalf("registry: %+v, want the hold's token %d granted after the delay", m.Holder, r.Token)
	}
	select {
	case extra := <-lines:
		t.Fatalf("extra line %+v while nothing changed", extra)
	default:
	}
	hang()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if m, _ := srv.FSM().Lock("job"); m.Holder != nil {
		t.Fatalf("lock still held after the client went: %+v", m.Holder)
	}
}

// A client that goes away while its connection-bound lock waits (writing
// a line fails) ends the hold: it leaves the line, whether the first line
// or a later one failed.
func TestLocal_HoldLock_clientGoneWhileWaiting(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, cb, sa, _ := lockedBy(ctx, t, 5*time.Second)
	srv := c.Servers[0]
	b := newLocal(t, "node-b", c.Backend(), srv.FSM())
	gone := errors.New("client gone")

	// The first line fails.
	lease := make(chan string, 4)
	err := b.HoldLock(ctx, election.LockSpec{Name: "job"}, 5*time.Second, func(r api.LockResult) error {
		m, _ := srv.FSM().Lock("job")
		lease <- m.Waiters[len(m.Waiters)-1].Lease
		return gone
	})
	if err != nil {
		t.Fatalf("hold whose client went: %v, want nil", err)
	}
	if m, _ := srv.FSM().Lock("job"); m.WaiterIndex(<-lease) >= 0 || m.Holder == nil || m.Holder.Lease != sa.ID() {
		t.Fatalf("after the client went: %+v, want a holding and no one in line", m)
	}

	// A later line fails: the holder's lease expires (a lock delay runs).
	lines := 0
	done := make(chan error, 1)
	go func() {
		done <- b.HoldLock(ctx, election.LockSpec{Name: "job"}, 5*time.Second, func(r api.LockResult) error {
			lines++
			if lines == 1 {
				m, _ := srv.FSM().Lock("job")
				lease <- m.Waiters[len(m.Waiters)-1].Lease
				return nil
			}
			return gone
		})
	}()
	waiter := <-lease
	cb.cut.Store(true)
	if err := <-done; err != nil {
		t.Fatalf("hold whose client went: %v, want nil", err)
	}
	if lines != 2 {
		t.Fatalf("%d lines written, want 2 (the second failed)", lines)
	}
	m, _ := srv.FSM().Lock("job")
	if m.WaiterIndex(waiter) >= 0 || m.Holder != nil {
		t.Fatalf("after the client went: %+v, want vacant and no one in line", m)
	}
	if _, ok := srv.FSM().Lease(waiter); ok {
		t.Fatal("the hold's session outlived it")
	}
}

// TestLocal_HoldCampaign_tiedToItsServiceHealth: a connection-bound
// campaign tied to a service instance is refused while the instance does
// not pass, and leads once it does.
func TestLocal_HoldCampaign_tiedToItsServiceHealth(t *testing.T) {
	t.Parallel()
	c, srv, ctx := oneServer(t)
	setCheck := registerWeb(ctx, t, c.Backend())
	metrics := prometheus.NewRegistry()
	a := newLocalWith(t, "node-a", c.Backend(), srv.FSM(), func(cfg *election.LocalConfig) { cfg.Registerer = metrics })
	spec := election.CampaignSpec{Election: "db", Candidate: "a", Service: "web-1"}
	err := a.HoldCampaign(ctx, spec, 5*time.Second, func(r api.CampaignResult) error {
		t.Errorf("a hold tied to a critical service reported %+v", r)
		return nil
	})
	if !errors.Is(err, election.ErrServiceNotPassing) {
		t.Fatalf("hold tied to a critical service: %v, want ErrServiceNotPassing", err)
	}
	setCheck(fsm.StatusPassing)
	holdCtx, drop := context.WithCancel(ctx)
	defer drop()
	lines := make(chan api.CampaignResult, 4)
	done := make(chan error, 1)
	go func() {
		done <- a.HoldCampaign(holdCtx, spec, 5*time.Second, func(r api.CampaignResult) error { lines <- r; return nil })
	}()
	select {
	case r := <-lines:
		if !r.Leader {
			t.Fatalf("hold tied to a passing service: first line %+v, want leading", r)
		}
	case err := <-done:
		t.Fatalf("hold tied to a passing service ended: %v", err)
	}
	if g := leaderGauges(t, metrics); g["db"] != 1 {
		t.Fatalf("sidecar_election_leader while the hold leads: %v, want db 1", g)
	}
	// The service turning critical ends the lead.
	setCheck(fsm.StatusCritical)
	deadline := time.After(10 * time.Second)
	ended := false // the hold may end by itself: its done is taken then
wait:
	for {
		select {
		case r := <-lines:
			if !r.Leader {
				break wait
			}
		case <-done:
			ended = true
			break wait
		case <-deadline:
			t.Fatal("the hold still leads 10 s after its service turned critical")
		}
	}
	drop()
	if !ended {
		<-done
	}
	if g := leaderGauges(t, metrics); len(g) != 0 {
		t.Fatalf("sidecar_election_leader after the hold ended: %v, want no series", g)
	}
}

// A connection-bound lock whose own take after a lock delay is refused
// ends with that error, so its client learns it holds nothing; it does not
// wait on as if still in line.
func TestLocal_HoldLock_refusedTakeAfterALockDelayEndsTheHold(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, cb, _, token := lockedBy(ctx, t, 300*time.Millisecond)
	refused := errors.New("write refused")
	var takes atomic.Int32
	hb := &hookBackend{Backend: c.Backend(), apply: func(_ context.Context, cmd fsm.Command) (*fsm.Result, error) {
		if _, ok := cmd.(*fsm.AcquireLock); ok && takes.Add(1) > 1 {
			return nil, refused
		}
		return nil, errPass
	}}
	b := newLocal(t, "node-b", hb, c.Servers[0].FSM())
	lines := make(chan api.LockResult, 16)
	done := make(chan error, 1)
	go func() {
		done <- b.HoldLock(ctx, election.LockSpec{Name: "job"}, 5*time.Second, func(r api.LockResult) error {
			lines <- r
			return nil
		})
	}()
	select {
	case r := <-lines:
		if r.Held || r.Holder == nil || r.Holder.Token != token {
			t.Fatalf("first line %+v, want not held naming the holder's token %d", r, token)
		}
	case <-ctx.Done():
		t.Fatal("no first line")
	}
	cb.cut.Store(true) // the holder's lease expires: the delay runs, then b takes the lock itself
	select {
	case err := <-done:
		if !errors.Is(err, refused) {
			t.Fatalf("hold ended with %v, want the refusal", err)
		}
	case <-ctx.Done():
		t.Fatal("the hold went on after its take was refused")
	}
	for len(lines) > 0 {
		if r := <-lines; r.Held {
			t.Fatalf("a refused hold reported %+v", r)
		}
	}
}
