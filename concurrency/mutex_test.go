package concurrency_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/concurrency"
)

func newSession(t *testing.T, ctx context.Context, opts ...concurrency.SessionOption) *concurrency.Session {
	t.Helper()
	s, err := concurrency.NewSession(ctx, newClient(t), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

func TestMutex_LockUnlock(t *testing.T) {
	ctx := testCtx(t)
	s := newSession(t, ctx)
	m := concurrency.NewMutex(s, "mutex-basic")
	if !isClosed(m.Done()) {
		t.Fatal("Done open before Lock")
	}
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	first := m.Token()
	if first == 0 || isClosed(m.Done()) || m.Err() != nil {
		t.Fatalf("held: token %d, done %v, err %v", first, isClosed(m.Done()), m.Err())
	}
	if err := m.Lock(ctx); !errors.Is(err, concurrency.ErrHeld) {
		t.Fatalf("second Lock: %v, want ErrHeld", err)
	}
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if !isClosed(m.Done()) || !errors.Is(m.Err(), concurrency.ErrReleased) {
		t.Fatalf("after Unlock: done %v, err %v", isClosed(m.Done()), m.Err())
	}
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	if m.Token() <= first {
		t.Fatalf("token %d after %d: fencing tokens must grow", m.Token(), first)
	}
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestMutex_TryLock(t *testing.T) {
	ctx := testCtx(t)
	a := concurrency.NewMutex(newSession(t, ctx), "mutex-try")
	b := concurrency.NewMutex(newSession(t, ctx), "mutex-try")
	if err := a.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := b.TryLock(ctx); !errors.Is(err, concurrency.ErrLocked) {
		t.Fatalf("TryLock of a held lock: %v, want ErrLocked", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("TryLock waited %v", d)
	}
	if err := a.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.TryLock(ctx); err != nil {
		t.Fatalf("TryLock of a free lock: %v", err)
	}
	if b.Token() <= a.Token() {
		t.Fatalf("b's token %d not above a's %d", b.Token(), a.Token())
	}
}

// Lock waits in line and is handed the lock the moment it is released.
func TestMutex_Lock_waits(t *testing.T) {
	ctx := testCtx(t)
	a := concurrency.NewMutex(newSession(t, ctx), "mutex-wait")
	b := concurrency.NewMutex(newSession(t, ctx), "mutex-wait")
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() { got <- b.Lock(ctx) }()
	select {
	case err := <-got:
		t.Fatalf("second Lock returned while held: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := a.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiter not handed the lock")
	}
	if b.Token() <= a.Token() {
		t.Fatalf("b's token %d not above a's %d", b.Token(), a.Token())
	}
	b.Unlock(ctx)
}

// A Lock given up (ctx ended) returns the context's error and leaves
// nothing held or queued: the next one gets the lock at once.
func TestMutex_Lock_cancelled(t *testing.T) {
	ctx := testCtx(t)
	c := newClient(t)
	a := concurrency.NewMutex(newSession(t, ctx), "mutex-cancel")
	b := concurrency.NewMutex(newSession(t, ctx), "mutex-cancel")
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := b.Lock(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock past its ctx: %v, want DeadlineExceeded", err)
	}
	if err := a.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	// Give a leftover waiter time to be handed the lock, were there one.
	time.Sleep(200 * time.Millisecond)
	if li, _, err := c.LockInfo(ctx, "mutex-cancel", nil); err != nil || li != nil {
		t.Fatalf("lock after the cancelled waiter: %+v, %v; want free", li, err)
	}
}

// A Lock whose session ends while it waits returns the session's reason.
func TestMutex_Lock_sessionEnds(t *testing.T) {
	ctx := testCtx(t)
	a := concurrency.NewMutex(newSession(t, ctx), "mutex-session-ends")
	sb := newSession(t, ctx)
	b := concurrency.NewMutex(sb, "mutex-session-ends")
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() { got <- b.Lock(ctx) }()
	time.Sleep(100 * time.Millisecond)
	sb.Close(ctx)
	select {
	case err := <-got:
		if !errors.Is(err, concurrency.ErrSessionClosed) {
			t.Fatalf("Lock: %v, want ErrSessionClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Lock went on after its session closed")
	}
}

// The registry showing the lock free (here: released behind the Mutex's
// back) closes Done with ErrLost.
func TestMutex_Done_lost(t *testing.T) {
	ctx := testCtx(t)
	c := newClient(t)
	s := newSession(t, ctx)
	m := concurrency.NewMutex(s, "mutex-lost")
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Unlock(ctx, "mutex-lost", s.Lease()); err != nil {
		t.Fatal(err)
	}
	if !closedWithin(m.Done(), 5*time.Second) {
		t.Fatal("Done open after the lock was released behind the Mutex")
	}
	if !errors.Is(m.Err(), concurrency.ErrLost) {
		t.Fatalf("Err = %v, want ErrLost", m.Err())
	}
}
