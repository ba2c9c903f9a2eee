package concurrency_test

import (
	"errors"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/concurrency"
)

func TestSafetyMargin(t *testing.T) {
	for _, tc := range []struct{ ttl, want time.Duration }{
		{time.Second, 200 * time.Millisecond},
		{10 * time.Second, 1100 * time.Millisecond},
	} {
		if got := concurrency.SafetyMargin(tc.ttl); got != tc.want {
			t.Errorf("SafetyMargin(%v) = %v, want %v", tc.ttl, got, tc.want)
		}
		// The margin must leave room for the keepalives sent every TTL/3.
		if concurrency.SafetyMargin(tc.ttl) >= tc.ttl/3 {
			t.Errorf("SafetyMargin(%v) leaves no room for a keepalive", tc.ttl)
		}
	}
}

func TestNewSession_ttlTooShort(t *testing.T) {
	_, err := concurrency.NewSession(testCtx(t), newClient(t), concurrency.WithTTL(500*time.Millisecond))
	if err == nil {
		t.Fatal("a 500ms session was granted")
	}
}

// A session kept alive outlives its TTL several times over, and its
// deadline moves with the keepalives.
func TestSession_keepsAlive(t *testing.T) {
	ctx := testCtx(t)
	c := newClient(t)
	s, err := concurrency.NewSession(ctx, c, concurrency.WithTTL(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	first := s.ValidUntil()
	if closedWithin(s.Done(), 3*time.Second) {
		t.Fatalf("session ended after 3 TTLs: %v", s.Err())
	}
	if !s.ValidUntil().After(first) {
		t.Fatalf("deadline did not move: %v then %v", first, s.ValidUntil())
	}
	if _, err := c.KeepAlive(ctx, s.Lease()); err != nil {
		t.Fatalf("the lease is not live on the servers: %v", err)
	}
}

// Close revokes the lease (its locks pass on at once), closes Done, and is
// safe twice.
func TestSession_Close(t *testing.T) {
	ctx := testCtx(t)
	c := newClient(t)
	s, err := concurrency.NewSession(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	m := concurrency.NewMutex(s, "session-close")
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if !isClosed(s.Done()) || !errors.Is(s.Err(), concurrency.ErrSessionClosed) {
		t.Fatalf("after Close: done %v, err %v", isClosed(s.Done()), s.Err())
	}
	if !closedWithin(m.Done(), time.Second) {
		t.Fatal("the mutex's Done stayed open after its session closed")
	}
	if li, _, err := c.LockInfo(ctx, "session-close", nil); err != nil || li != nil {
		t.Fatalf("lock after Close: %+v, %v; want free", li, err)
	}
	if _, err := c.KeepAlive(ctx, s.Lease()); statusCode(err) != 404 {
		t.Fatalf("keepalive of the closed session's lease: %v; want 404", err)
	}
}

// A lease revoked behind the session's back ends it at the next keepalive
// (a TTL/3 later at most) with ErrLeaseLost.
func TestSession_leaseLost(t *testing.T) {
	ctx := testCtx(t)
	c := newClient(t)
	s, err := concurrency.NewSession(ctx, c, concurrency.WithTTL(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	if err := c.RevokeLease(ctx, s.Lease()); err != nil {
		t.Fatal(err)
	}
	if !closedWithin(s.Done(), 2*time.Second) {
		t.Fatal("session still live 2s after its lease was revoked")
	}
	if !errors.Is(s.Err(), concurrency.ErrLeaseLost) {
		t.Fatalf("Err = %v, want ErrLeaseLost", s.Err())
	}
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close of a lost session: %v", err)
	}
}

// Cut off from its sidecar, a session demotes itself at its deadline: no
// later than TTL - margin after the last acknowledged keepalive was sent.
func TestSession_selfDemotes(t *testing.T) {
	ctx := testCtx(t)
	p := newPartition(t)
	s, err := concurrency.NewSession(ctx, clientOf(t, p.url), concurrency.WithTTL(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	p.cut.Store(true)
	deadline := s.ValidUntil()
	if !closedWithin(s.Done(), 2*time.Second) {
		t.Fatal("session cut off for 2 TTLs still trusted")
	}
	at := time.Now()
	if !errors.Is(s.Err(), concurrency.ErrSessionExpired) {
		t.Fatalf("Err = %v, want ErrSessionExpired", s.Err())
	}
	if late := at.Sub(s.ValidUntil()); late > 100*time.Millisecond {
		t.Fatalf("demoted %v after its deadline", late)
	}
	if s.ValidUntil().Sub(deadline) > time.Second {
		t.Fatalf("deadline moved while cut off: %v then %v", deadline, s.ValidUntil())
	}
}
