package concurrency_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/concurrency"
)

func TestElection_CampaignResign(t *testing.T) {
	ctx := testCtx(t)
	ea := concurrency.NewElection(newSession(t, ctx), "elect-basic")
	eb := concurrency.NewElection(newSession(t, ctx), "elect-basic")
	la, err := ea.Campaign(ctx, "a", "10.0.0.1:80")
	if err != nil {
		t.Fatal(err)
	}
	if la.Token() == 0 || isClosed(la.Done()) {
		t.Fatalf("leading: token %d, done %v", la.Token(), isClosed(la.Done()))
	}
	leader, err := ea.Leader(ctx)
	if err != nil || leader == nil || leader.Candidate != "a" || leader.Value != "10.0.0.1:80" || leader.Token != la.Token() {
		t.Fatalf("Leader = %+v, %v", leader, err)
	}

	got := make(chan *concurrency.Leadership, 1)
	go func() {
		lb, err := eb.Campaign(ctx, "b", "10.0.0.2:80")
		if err != nil {
			t.Error(err)
		}
		got <- lb
	}()
	select {
	case <-got:
		t.Fatal("b leads while a does")
	case <-time.After(300 * time.Millisecond):
	}
	if err := la.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if !isClosed(la.Done()) || !errors.Is(la.Err(), concurrency.ErrReleased) {
		t.Fatalf("after Resign: done %v, err %v", isClosed(la.Done()), la.Err())
	}
	if err := la.Resign(ctx); err != nil {
		t.Fatalf("second Resign: %v", err)
	}
	var lb *concurrency.Leadership
	select {
	case lb = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("b does not lead after a resigned")
	}
	if lb == nil {
		t.FailNow()
	}
	if lb.Token() <= la.Token() {
		t.Fatalf("b's token %d not above a's %d", lb.Token(), la.Token())
	}
	if err := lb.Resign(ctx); err != nil {
		t.Fatal(err)
	}
}

// Another candidate taking over behind the Leadership's back (here: its
// candidacy resigned through the raw API) closes Done with ErrLost.
func TestLeadership_Done_lost(t *testing.T) {
	ctx := testCtx(t)
	c := newClient(t)
	e := concurrency.NewElection(newSession(t, ctx), "elect-lost")
	l, err := e.Campaign(ctx, "a", "v")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Resign(ctx, "elect-lost", "a"); err != nil {
		t.Fatal(err)
	}
	if !closedWithin(l.Done(), 5*time.Second) {
		t.Fatal("Done open after the candidate was resigned behind its back")
	}
	if !errors.Is(l.Err(), concurrency.ErrLost) {
		t.Fatalf("Err = %v, want ErrLost", l.Err())
	}
}

// The session's end is the leadership's end.
func TestLeadership_Done_sessionClosed(t *testing.T) {
	ctx := testCtx(t)
	s, err := concurrency.NewSession(ctx, newClient(t))
	if err != nil {
		t.Fatal(err)
	}
	l, err := concurrency.NewElection(s, "elect-session").Campaign(ctx, "a", "v")
	if err != nil {
		t.Fatal(err)
	}
	s.Close(ctx)
	if !closedWithin(l.Done(), time.Second) || !errors.Is(l.Err(), concurrency.ErrSessionClosed) {
		t.Fatalf("after the session closed: done %v, err %v", isClosed(l.Done()), l.Err())
	}
}

// A campaign given up resigns its candidate: it never leads later.
func TestElection_Campaign_cancelled(t *testing.T) {
	ctx := testCtx(t)
	ea := concurrency.NewElection(newSession(t, ctx), "elect-cancel")
	eb := concurrency.NewElection(newSession(t, ctx), "elect-cancel")
	la, err := ea.Campaign(ctx, "a", "v")
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := eb.Campaign(wctx, "b", "v"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Campaign past its ctx: %v, want DeadlineExceeded", err)
	}
	if err := la.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if leader, err := ea.Leader(ctx); err != nil || leader != nil {
		t.Fatalf("leader after the abandoned campaign: %+v, %v; want vacant", leader, err)
	}
}

// Observe sends each leader once, in order, and a vacancy as the zero
// Holder.
func TestElection_Observe(t *testing.T) {
	ctx := testCtx(t)
	ea := concurrency.NewElection(newSession(t, ctx), "elect-observe")
	eb := concurrency.NewElection(newSession(t, ctx), "elect-observe")
	octx, stop := context.WithCancel(ctx)
	ch := ea.Observe(octx)
	next := func() api.Holder {
		t.Helper()
		select {
		case h, ok := <-ch:
			if !ok {
				t.Fatal("Observe closed")
			}
			return h
		case <-time.After(5 * time.Second):
			t.Fatal("no leader change observed")
		}
		return api.Holder{}
	}
	la, err := ea.Campaign(ctx, "a", "va")
	if err != nil {
		t.Fatal(err)
	}
	if h := next(); h.Candidate != "a" || h.Token != la.Token() || h.Value != "va" {
		t.Fatalf("observed %+v, want a with token %d", h, la.Token())
	}
	if err := la.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if h := next(); h.Token != 0 {
		t.Fatalf("observed %+v, want the vacancy", h)
	}
	lb, err := eb.Campaign(ctx, "b", "vb")
	if err != nil {
		t.Fatal(err)
	}
	if h := next(); h.Candidate != "b" || h.Token != lb.Token() {
		t.Fatalf("observed %+v, want b with token %d", h, lb.Token())
	}
	stop()
	for range ch {
	}
	lb.Resign(ctx)
}

func TestLeadership_TransferTo(t *testing.T) {
	ctx := testCtx(t)
	ea := concurrency.NewElection(newSession(t, ctx), "elect-transfer")
	eb := concurrency.NewElection(newSession(t, ctx), "elect-transfer")
	la, err := ea.Campaign(ctx, "a", "va")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *concurrency.Leadership, 1)
	go func() {
		lb, err := eb.Campaign(ctx, "b", "vb")
		if err != nil {
			t.Error(err)
		}
		got <- lb
	}()
	// b must be waiting before a can hand over to it.
	c := newClient(t)
	time.Sleep(200 * time.Millisecond)
	if err := la.TransferTo(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if !isClosed(la.Done()) {
		t.Fatal("Done open after TransferTo")
	}
	var lb *concurrency.Leadership
	select {
	case lb = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("b does not lead after the transfer")
	}
	if lb == nil {
		t.FailNow()
	}
	if lb.Token() <= la.Token() {
		t.Fatalf("b's token %d not above a's %d", lb.Token(), la.Token())
	}
	if cur, tok, err := la.Fence(ctx); err != nil || cur || tok != lb.Token() {
		t.Fatalf("a's Fence after the transfer = %v, %d, %v; want not current, %d", cur, tok, err, lb.Token())
	}
	if cur, _, err := concurrency.Fence(ctx, c, concurrency.KindElection, "elect-transfer", lb.Token()); err != nil || !cur {
		t.Fatalf("b's Fence = %v, %v; want current", cur, err)
	}
	lb.Resign(ctx)
}
