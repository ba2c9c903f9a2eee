package election_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/election/electiontest"
	"github.com/sidecarhq/sidecar/fsm"
)

// replayBackend applies every write and keeps the last release it sent,
// to deliver it once more later: a retried release whose first attempt
// did land, arriving late (after the client took the lock again).
type replayBackend struct {
	election.Backend
	mu   sync.Mutex
	last *fsm.ReleaseLock
}

func (b *replayBackend) Apply(ctx context.Context, cmd fsm.Command) (*fsm.Result, error) {
	if r, ok := cmd.(*fsm.ReleaseLock); ok {
		b.mu.Lock()
		c := *r
		b.last = &c
		b.mu.Unlock()
	}
	return b.Backend.Apply(ctx, cmd)
}

func (b *replayBackend) replay(ctx context.Context) error {
	b.mu.Lock()
	r := b.last
	b.mu.Unlock()
	_, err := b.Backend.Apply(ctx, r)
	return err
}

// A late release naming the token of an earlier acquisition never ends a
// newer hold on the same lease: reordered after the re-acquisition, it is
// refused (ErrStaleToken) and the newer hold stands. The same reordering
// of a lease-keyed release does end it (why the guard exists).
func TestLocal_UnlockToken_lateReleaseAfterReacquire(t *testing.T) {
	c := electiontest.NewCluster(t, 1, nil)
	srv := c.Servers[0]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rb := &replayBackend{Backend: c.Backend()}
	l := newLocal(t, "node-a", rb, srv.FSM())
	sess, err := l.NewSession(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	spec := election.LockSpec{Name: "job", Lease: sess.ID()}
	first, err := l.Lock(ctx, spec)
	if err != nil || !first.Held {
		t.Fatalf("lock: %+v %v", first, err)
	}
	if err := l.UnlockToken(ctx, "job", sess.ID(), first.Token); err != nil {
		t.Fatal(err)
	}
	second, err := l.Lock(ctx, spec)
	if err != nil || !second.Held || second.Token <= first.Token {
		t.Fatalf("lock again: %+v %v (first token %d)", second, err, first.Token)
	}
	err = rb.replay(ctx)
	if !errors.Is(err, fsm.ErrStaleToken) {
		t.Fatalf("late guarded release: %v, want ErrStaleToken", err)
	}
	if m, _ := srv.FSM().Lock("job"); m.Holder == nil || m.Holder.Token != second.Token {
		t.Fatalf("the newer hold ended: %+v", m.Holder)
	}
	// The guarded release of the live acquisition works.
	if err := l.UnlockToken(ctx, "job", sess.ID(), first.Token); !errors.Is(err, fsm.ErrStaleToken) || !strings.Contains(err.Error(), "current token") {
		t.Fatalf("UnlockToken(old token) = %v, want ErrStaleToken naming the current token", err)
	}

	// Contrast: the lease-keyed release, replayed late, ends the newer hold.
	if err := l.Unlock(ctx, "job", sess.ID()); err != nil {
		t.Fatal(err)
	}
	if third, err := l.Lock(ctx, spec); err != nil || !third.Held {
		t.Fatalf("lock a third time: %+v %v", third, err)
	}
	if err := rb.replay(ctx); err != nil {
		t.Fatalf("late unguarded release: %v", err)
	}
	if m, _ := srv.FSM().Lock("job"); m.Holder != nil {
		t.Fatalf("expected the unguarded late release to end the hold (the hazard), holder %+v", m.Holder)
	}
}

// copyInto makes dst a copy of src's registry as it is now.
func copyInto(t *testing.T, dst, src *fsm.FSM) {
	t.Helper()
	var buf bytes.Buffer
	if err := src.WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := dst.RestoreNewer(io.NopCloser(&buf)); err != nil {
		t.Fatal(err)
	}
}

// Fence checks answer 200-style (current) for the live token, not current
// with the live token for an old one, and 0 when vacant; for locks and
// elections alike.
func TestLocal_Fence(t *testing.T) {
	c := electiontest.NewCluster(t, 1, nil)
	srv := c.Servers[0]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l := newLocal(t, "node-a", c.Backend(), srv.FSM())
	sess, err := l.NewSession(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := l.LockFence(ctx, "never", 5); err != nil || r.Current || r.Token != 0 {
		t.Fatalf("unknown lock: %+v %v, want not current, token 0", r, err)
	}
	held, err := l.Lock(ctx, election.LockSpec{Name: "job", Lease: sess.ID()})
	if err != nil || !held.Held {
		t.Fatal(held, err)
	}
	if r, err := l.LockFence(ctx, "job", held.Token); err != nil || !r.Current || r.Token != held.Token {
		t.Fatalf("live token: %+v %v", r, err)
	}
	if r, err := l.LockFence(ctx, "job", held.Token-1); err != nil || r.Current || r.Token != held.Token {
		t.Fatalf("old token: %+v %v, want not current naming %d", r, err, held.Token)
	}
	if err := l.UnlockToken(ctx, "job", sess.ID(), held.Token); err != nil {
		t.Fatal(err)
	}
	if r, err := l.LockFence(ctx, "job", held.Token); err != nil || r.Current || r.Token != 0 {
		t.Fatalf("vacant lock: %+v %v, want not current, token 0", r, err)
	}
	cr, err := l.Campaign(ctx, election.CampaignSpec{Election: "db", Candidate: "a", Lease: sess.ID()})
	if err != nil || !cr.Leader {
		t.Fatal(cr, err)
	}
	if r, err := l.ElectionFence(ctx, "db", cr.Token); err != nil || !r.Current || r.Token != cr.Token {
		t.Fatalf("election live token: %+v %v", r, err)
	}
	if r, err := l.ElectionFence(ctx, "db", 0); err != nil || r.Current || r.Token != cr.Token {
		t.Fatalf("election token 0: %+v %v", r, err)
	}
}

// A fence check through a sidecar whose copy of the registry is behind
// waits for it to catch up to the leader's read index: it never calls the
// old holder's token current after a successor was granted the lock.
func TestLocal_Fence_staleReplicaWaits(t *testing.T) {
	c := electiontest.NewCluster(t, 3, nil)
	leader := c.WaitLeader(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	w := newLocal(t, "writer", c.Backend(), leader.FSM())
	s1, err := w.NewSession(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := w.NewSession(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	old, err := w.Lock(ctx, election.LockSpec{Name: "job", Lease: s1.ID()})
	if err != nil || !old.Held {
		t.Fatal(old, err)
	}
	// A client's copy, frozen here: it shows s1 holding with the old token.
	stale := fsm.New()
	copyInto(t, stale, leader.FSM())
	r := newLocal(t, "reader", c.Backend(), stale)
	if res, err := r.LockFence(ctx, "job", old.Token); err != nil || !res.Current {
		t.Fatalf("before the handover: %+v %v", res, err)
	}
	// The lock passes to s2 on the servers.
	go func() {
		time.Sleep(100 * time.Millisecond)
		w.UnlockToken(ctx, "job", s1.ID(), old.Token)
	}()
	if res, err := w.Lock(ctx, election.LockSpec{Name: "job", Lease: s2.ID(), Wait: 5 * time.Second}); err != nil || !res.Held {
		t.Fatal(res, err)
	}
	waitFor(t, 10*time.Second, "s2 holds", func() bool {
		m, _ := leader.FSM().Lock("job")
		return m != nil && m.Holder != nil && m.Holder.Lease == s2.ID()
	})
	m, _ := leader.FSM().Lock("job")
	newToken := m.Holder.Token

	type answer struct {
		r   api.FenceResult
		err error
	}
	got := make(chan answer, 1)
	go func() {
		res, err := r.LockFence(ctx, "job", old.Token)
		got <- answer{res, err}
	}()
	select {
	case a := <-got:
		t.Fatalf("answered %+v %v from a copy behind the leader's read index", a.r, a.err)
	case <-time.After(300 * time.Millisecond):
	}
	copyInto(t, stale, leader.FSM()) // the copy catches up
	a := <-got
	if a.err != nil || a.r.Current || a.r.Token != newToken {
		t.Fatalf("after catching up: %+v %v, want not current naming %d", a.r, a.err, newToken)
	}
}

// A transfer hands the election to the named waiting candidate in one
// entry with a greater token; the old leader leaves the election; a
// connection-bound hold of the old leader tells its client it no longer
// leads before the entry commits (demotion first).
func TestLocal_Transfer(t *testing.T) {
	c := electiontest.NewCluster(t, 1, nil)
	srv := c.Servers[0]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a := newLocal(t, "node-a", c.Backend(), srv.FSM())
	b := newLocal(t, "node-b", c.Backend(), srv.FSM())
	cc := newLocal(t, "node-c", c.Backend(), srv.FSM())

	type line struct {
		api.CampaignResult
		aHolds bool // the registry still showed a leading when it was sent
	}
	lines := make(chan line, 16)
	holdCtx, dropHold := context.WithCancel(ctx)
	defer dropHold()
	done := make(chan error, 1)
	go func() {
		done <- a.HoldCampaign(holdCtx, election.CampaignSpec{Election: "db", Candidate: "a"}, 5*time.Second,
			func(r api.CampaignResult) error {
				m, _ := srv.FSM().Election("db")
				lines <- line{r, m != nil && m.Holder != nil && m.Holder.ID == "a"}
				return nil
			})
	}()
	first := <-lines
	if !first.Leader {
		t.Fatalf("first line %+v", first)
	}
	for _, l := range []*election.Local{b, cc} {
		if err := l.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Campaign(ctx, election.CampaignSpec{Election: "db", Candidate: "b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := cc.Campaign(ctx, election.CampaignSpec{Election: "db", Candidate: "c"}); err != nil {
		t.Fatal(err)
	}

	// Refusals: from not leading, to not waiting, from elsewhere.
	if _, err := b.Transfer(ctx, "db", "b", "c"); !errors.Is(err, fsm.ErrNotLeading) {
		t.Fatalf("transfer from a waiting candidate: %v", err)
	}
	if _, err := a.Transfer(ctx, "db", "a", "zz"); !errors.Is(err, fsm.ErrNotCandidate) {
		t.Fatalf("transfer to no waiting candidate: %v", err)
	}
	if _, err := b.Transfer(ctx, "db", "a", "c"); !errors.Is(err, fsm.ErrNotLeading) || !strings.Contains(err.Error(), "node-a") {
		t.Fatalf("transfer through another sidecar: %v, want ErrNotLeading naming node-a", err)
	}
	if st := a.Self("db"); !st.Leader {
		t.Fatalf("a refused transfer left a demoted: %+v", st)
	}
	select {
	case l := <-lines:
		t.Fatalf("the hold reported %+v for refused transfers", l)
	default:
	}

	before, _ := srv.FSM().Election("db")
	res, err := a.Transfer(ctx, "db", "", "c") // from: the one candidate of node-a
	if err != nil {
		t.Fatal(err)
	}
	after, _ := srv.FSM().Election("db")
	if res.Leader != "c" || after.Holder.ID != "c" || res.Token != after.Holder.Token || res.Token <= before.Holder.Token {
		t.Fatalf("result %+v, holder %+v, old token %d", res, after.Holder, before.Holder.Token)
	}
	if after.ModifyIndex != res.Token || after.LastToken != res.Token {
		t.Fatalf("handover took more than one entry: %+v", after)
	}
	if after.WaiterIndex("a") >= 0 {
		t.Fatal("the old leader is still in line")
	}
	demoted := <-lines
	if demoted.Leader || !demoted.aHolds {
		t.Fatalf("hold line %+v: demotion not reported while a still held the election", demoted)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if a.Self("db").Leader || !cc.Self("db").Leader || b.Self("db").Leader {
		t.Fatalf("self: a %+v b %+v c %+v", a.Self("db"), b.Self("db"), cc.Self("db"))
	}
}
