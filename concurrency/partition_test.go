package concurrency_test

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/concurrency"
)

// TestMutex_partition: holder A is cut off from its sidecar, so its
// keepalives stop. A demotes itself (Done, ErrSessionExpired) before its
// lease expires on the servers and B, waiting in line, is handed the lock.
// Once A can talk again, its Fence answers not current with B's token, its
// guarded Unlock with the old token is refused with 409, and B still holds.
func TestMutex_partition(t *testing.T) {
	ctx := testCtx(t)
	direct := newClient(t)
	p := newPartition(t)
	sa, err := concurrency.NewSession(ctx, clientOf(t, p.url), concurrency.WithTTL(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer sa.Close(ctx)
	sb := newSession(t, ctx, concurrency.WithTTL(time.Second))

	a := concurrency.NewMutex(sa, "partition")
	b := concurrency.NewMutex(sb, "partition")
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	type acquired struct {
		at  time.Time
		err error
	}
	bGot := make(chan acquired, 1)
	go func() {
		err := b.Lock(ctx)
		bGot <- acquired{time.Now(), err}
	}()

	p.cut.Store(true)
	if !closedWithin(a.Done(), 3*time.Second) {
		t.Fatal("A still trusts its hold 3 TTLs into the partition")
	}
	aDemoted := time.Now()
	if !errors.Is(a.Err(), concurrency.ErrSessionExpired) {
		t.Fatalf("A's Err = %v, want ErrSessionExpired", a.Err())
	}
	var bAt time.Time
	select {
	case got := <-bGot:
		if got.err != nil {
			t.Fatalf("B's Lock: %v", got.err)
		}
		bAt = got.at
	case <-time.After(10 * time.Second):
		t.Fatal("B not handed the lock after A's lease should have expired")
	}
	if !bAt.After(aDemoted) {
		t.Fatalf("B acquired at %v, before A demoted itself at %v", bAt, aDemoted)
	}
	t.Logf("A demoted %v before B acquired", bAt.Sub(aDemoted))
	if b.Token() <= a.Token() {
		t.Fatalf("B's token %d not above A's %d", b.Token(), a.Token())
	}

	p.cut.Store(false)
	// A's guarded release: the token no longer names the live hold.
	if err := a.Unlock(ctx); statusCode(err) != http.StatusConflict {
		t.Fatalf("A's Unlock with its old token: %v, want 409", err)
	}
	li, _, err := direct.LockInfo(ctx, "partition", nil)
	if err != nil || li == nil || li.Lease != sb.Lease() || li.Token != b.Token() {
		t.Fatalf("after A's Unlock the lock is %+v (%v); want B's (lease %s, token %d)", li, err, sb.Lease(), b.Token())
	}
	if isClosed(b.Done()) {
		t.Fatalf("B's Done closed: %v", b.Err())
	}

	current, tok, err := a.Fence(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if current || tok != b.Token() {
		t.Fatalf("A's Fence = current %v, token %d; want false, B's %d", current, tok, b.Token())
	}
	current, tok, err = b.Fence(ctx)
	if err != nil || !current || tok != b.Token() {
		t.Fatalf("B's Fence = %v, %d, %v; want current with %d", current, tok, err, b.Token())
	}
	if err := b.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}
