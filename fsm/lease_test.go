package fsm_test

import (
	"reflect"
	"testing"

	"github.com/sidecarhq/sidecar/fsm"
)

func TestLeaseIDFromIndex(t *testing.T) {
	for _, tc := range []struct {
		index uint64
		want  string
	}{
		{0, "0000000000000000"},
		{42, "000000000000002a"},
		{1 << 40, "0000010000000000"},
		{^uint64(0), "ffffffffffffffff"},
	} {
		if got := fsm.LeaseIDFromIndex(tc.index); got != tc.want || !fsm.ValidID(got) {
			t.Errorf("LeaseIDFromIndex(%d) = %q, want %q (a valid ID)", tc.index, got, tc.want)
		}
	}
}

func TestFSM_ApplyBytes_grantLease(t *testing.T) {
	runApplyCases(t, []applyCase{
		{
			name:   "with an id",
			cmd:    &fsm.GrantLease{ID: "l1", TTL: 15 * sec, Node: "n1"},
			tables: []fsm.Table{fsm.TableLeases},
			check: func(t *testing.T, h *harness, r *fsm.Result) {
				if r.LeaseID != "l1" {
					t.Errorf("LeaseID = %q", r.LeaseID)
				}
				l, ok := h.f.Lease("l1")
				want := &fsm.Lease{ID: "l1", TTL: 15 * sec, Node: "n1", CreateIndex: h.lastIndex()}
				if !ok || !reflect.DeepEqual(l, want) {
					t.Errorf("Lease(l1) = %+v, want %+v", l, want)
				}
			},
		},
		{
			name:   "without an id it is derived from the index",
			setup:  []fsm.Command{grant("l1"), grant("l2")},
			cmd:    &fsm.GrantLease{TTL: 10 * sec},
			tables: []fsm.Table{fsm.TableLeases},
			check: func(t *testing.T, h *harness, r *fsm.Result) {
				if r.LeaseID != fsm.LeaseIDFromIndex(3) {
					t.Errorf("LeaseID = %q, want %q", r.LeaseID, fsm.LeaseIDFromIndex(3))
				}
				if _, ok := h.f.Lease(r.LeaseID); !ok {
					t.Error("derived lease not stored")
				}
				if n := len(h.f.Leases()); n != 3 {
					t.Errorf("%d leases, want 3", n)
				}
			},
		},
		// The TTL limits README documents, 1s and 24h, as literals: a change
		// of the constants must show here.
		{name: "shortest ttl", cmd: &fsm.GrantLease{ID: "l1", TTL: sec}, tables: []fsm.Table{fsm.TableLeases}},
		{name: "longest ttl", cmd: &fsm.GrantLease{ID: "l1", TTL: 24 * 3600 * sec}, tables: []fsm.Table{fsm.TableLeases}},
		{name: "duplicate id", setup: []fsm.Command{grant("l1")}, cmd: grant("l1"), err: fsm.ErrLeaseExists},
		{
			name:  "derived id already taken",
			setup: []fsm.Command{grant(fsm.LeaseIDFromIndex(2))},
			cmd:   &fsm.GrantLease{TTL: 10 * sec},
			err:   fsm.ErrLeaseExists,
		},
		{name: "ttl too short", cmd: &fsm.GrantLease{ID: "l1", TTL: sec - 1}, err: fsm.ErrInvalid},
		{name: "ttl zero", cmd: &fsm.GrantLease{ID: "l1"}, err: fsm.ErrInvalid},
		{name: "ttl too long", cmd: &fsm.GrantLease{ID: "l1", TTL: 24*3600*sec + 1}, err: fsm.ErrInvalid},
		{name: "bad id", cmd: &fsm.GrantLease{ID: "l#1", TTL: 10 * sec}, err: fsm.ErrInvalid},
		{name: "bad node", cmd: &fsm.GrantLease{ID: "l1", TTL: 10 * sec, Node: "n.1"}, err: fsm.ErrInvalid},
	})
}

// leaseWorld is a registry where lease l1 holds or waits on everything:
// lock a (held by l1, l2 waiting), lock b (held by l2, l1 waiting),
// election e1 (c1 on l1 leads, c2 on l2 waits), election e2 (c3 on l2
// leads, c4 on l1 waits), instance web-1 on l1 and web-2 on l2.
func leaseWorld() []fsm.Command {
	web1 := regInst("n1", "web-1", "web")
	web1.Instance.Lease = "l1"
	web2 := regInst("n1", "web-2", "web")
	web2.Instance.Lease = "l2"
	return []fsm.Command{
		regNode("n1"), grant("l1"), grant("l2"), grant("l3"),
		acquire("a", "l1", t0), enqueue("a", "l2", t0),
		acquire("b", "l2", t0), enqueue("b", "l1", t0),
		campaign("e1", "c1", "l1", t0), campaign("e1", "c2", "l2", t0),
		campaign("e2", "c3", "l2", t0), campaign("e2", "c4", "l1", t0),
		web1, web2,
	}
}

// checkLeaseDropped checks what revoking or expiring l1 of leaseWorld at
// now must leave behind.
func checkLeaseDropped(t *testing.T, h *harness, now int64) {
	t.Helper()
	idx := h.lastIndex()
	if _, ok := h.f.Lease("l1"); ok {
		t.Error("lease l1 still exists")
	}
	if a := h.lock("a"); holderID(a) != "l2" || a.Holder.Token != idx || a.Holder.Since != now || len(a.Waiters) != 0 {
		t.Errorf("lock a = %+v %v, want l2 holding with token %d", a.Holder, waiterIDs(a), idx)
	}
	if b := h.lock("b"); holderID(b) != "l2" || b.Holder.Token != 7 || len(b.Waiters) != 0 {
		t.Errorf("lock b = %+v %v, want l2 holding still with token 7, nobody waiting", b.Holder, waiterIDs(b))
	}
	if e := h.election("e1"); holderID(e) != "c2" || e.Holder.Token != idx || len(e.Waiters) != 0 {
		t.Errorf("election e1 = %+v %v, want c2 leading with token %d", e.Holder, waiterIDs(e), idx)
	}
	if e := h.election("e2"); holderID(e) != "c3" || len(e.Waiters) != 0 {
		t.Errorf("election e2 = %+v %v, want c3 alone", e.Holder, waiterIDs(e))
	}
	if e := h.f.ServiceInstances("web"); len(e) != 1 || e[0].Instance.ID != "web-2" {
		t.Errorf("web = %+v, want web-2 only", e)
	}
}

func TestFSM_ApplyBytes_revokeLease(t *testing.T) {
	now := t0 + 3*sec
	delayed := []fsm.Command{grant("l1"), grant("l2"),
		&fsm.AcquireLock{Name: "a", Lease: "l1", LockDelay: 10 * sec, Now: t0}, enqueue("a", "l2", t0)}
	runApplyCases(t, []applyCase{
		{
			name:   "releases, resigns and deregisters everything on the lease",
			setup:  leaseWorld(),
			cmd:    &fsm.RevokeLease{ID: "l1", Now: now},
			tables: []fsm.Table{fsm.TableLeases, fsm.TableLocks, fsm.TableElections, fsm.TableServices},
			check:  func(t *testing.T, h *harness, _ *fsm.Result) { checkLeaseDropped(t, h, now) },
		},
		{
			name:   "lease with nothing attached",
			setup:  append(leaseWorld(), grant("l4")),
			cmd:    &fsm.RevokeLease{ID: "l4", Now: now},
			tables: []fsm.Table{fsm.TableLeases},
		},
		{
			name:   "a revoke ignores the lock delay",
			setup:  delayed,
			cmd:    &fsm.RevokeLease{ID: "l1", Now: now},
			tables: []fsm.Table{fsm.TableLeases, fsm.TableLocks},
			check: func(t *testing.T, h *harness, _ *fsm.Result) {
				if a := h.lock("a"); holderID(a) != "l2" || a.Holder.Token != h.lastIndex() {
					t.Errorf("lock a holder = %+v, want l2 at once", a.Holder)
				}
			},
		},
		{name: "unknown lease", setup: leaseWorld(), cmd: &fsm.RevokeLease{ID: "l9", Now: now}, err: fsm.ErrUnknownLease},
		{
			name:  "revoked twice",
			setup: append(leaseWorld(), &fsm.RevokeLease{ID: "l1", Now: now}),
			cmd:   &fsm.RevokeLease{ID: "l1", Now: now},
			err:   fsm.ErrUnknownLease,
		},
		{name: "bad id", setup: leaseWorld(), cmd: &fsm.RevokeLease{ID: "", Now: now}, err: fsm.ErrInvalid},
	})
}

func TestFSM_ApplyBytes_expireLease(t *testing.T) {
	now := t0 + 20*sec
	delayed := []fsm.Command{grant("l1"), grant("l2"),
		&fsm.AcquireLock{Name: "a", Lease: "l1", LockDelay: 10 * sec, Now: t0}, enqueue("a", "l2", t0),
		campaign("e1", "c1", "l1", t0), campaign("e1", "c2", "l2", t0)}
	runApplyCases(t, []applyCase{
		{
			name:   "without lock delay it acts as a revoke",
			setup:  leaseWorld(),
			cmd:    &fsm.ExpireLease{ID: "l1", Now: now},
			tables: []fsm.Table{fsm.TableLeases, fsm.TableLocks, fsm.TableElections, fsm.TableServices},
			check:  func(t *testing.T, h *harness, _ *fsm.Result) { checkLeaseDropped(t, h, now) },
		},
		{
			name:   "a lock with a delay stays vacant, elections do not wait",
			setup:  delayed,
			cmd:    &fsm.ExpireLease{ID: "l1", Now: now},
			tables: []fsm.Table{fsm.TableLeases, fsm.TableLocks, fsm.TableElections},
			check: func(t *testing.T, h *harness, _ *fsm.Result) {
				a := h.lock("a")
				if a.Holder != nil || a.DelayUntil != now+10*sec || a.LastToken != 3 {
					t.Errorf("lock a = %+v, want vacant until %d with last token 3", a, now+10*sec)
				}
				if !reflect.DeepEqual(waiterIDs(a), []string{"l2"}) {
					t.Errorf("lock a waiters = %v, want l2 still in line", waiterIDs(a))
				}
				if e := h.election("e1"); holderID(e) != "c2" || e.Holder.Token != h.lastIndex() {
					t.Errorf("election e1 holder = %+v, want c2 at once", e.Holder)
				}
			},
		},
		{name: "unknown lease", setup: leaseWorld(), cmd: &fsm.ExpireLease{ID: "l9", Now: now}, err: fsm.ErrUnknownLease},
		{name: "bad id", setup: leaseWorld(), cmd: &fsm.ExpireLease{ID: "l 1", Now: now}, err: fsm.ErrInvalid},
	})
}

// TestFSM_ApplyBytes_lockDelay follows a lock whose holder's lease expired
// with a lock delay: nobody holds it before Now reaches DelayUntil.
func TestFSM_ApplyBytes_lockDelay(t *testing.T) {
	const delay = 5 * sec
	expiredAt := t0 + 10*sec
	until := expiredAt + delay
	expired := func(waiters ...string) *harness {
		h := newHarness(t, grant("l1"), grant("l2"), grant("l3"),
			&fsm.AcquireLock{Name: "a", Lease: "l1", LockDelay: delay, Now: t0})
		for _, w := range waiters {
			h.ok(enqueue("a", w, t0))
		}
		h.ok(&fsm.ExpireLease{ID: "l1", Now: expiredAt})
		if a := h.lock("a"); a.Holder != nil || a.DelayUntil != until {
			t.Fatalf("after expiry lock a = %+v, want vacant until %d", a, until)
		}
		return h
	}

	t.Run("acquire before the delay ends is refused", func(t *testing.T) {
		h := expired()
		r := requireUnchanged(t, h, acquire("a", "l2", until-1), nil)
		if r.Held || r.Holder != nil {
			t.Errorf("result = %+v, want not held, vacant", r)
		}
	})
	t.Run("queued before the delay ends waits", func(t *testing.T) {
		h := expired()
		r := h.ok(enqueue("a", "l2", until-1))
		if a := h.lock("a"); r.Held || a.Holder != nil || !reflect.DeepEqual(waiterIDs(a), []string{"l2"}) {
			t.Errorf("result %+v, lock %+v", r, a)
		}
		// Once the delay is over, its next request takes the lock.
		r = h.ok(enqueue("a", "l2", until))
		if !r.Held || r.Token != h.lastIndex() {
			t.Errorf("result %+v, want held with token %d", r, h.lastIndex())
		}
	})
	t.Run("acquire when the delay ends", func(t *testing.T) {
		h := expired()
		r := h.ok(acquire("a", "l2", until))
		a := h.lock("a")
		if !r.Held || r.Token != h.lastIndex() || holderID(a) != "l2" || a.Holder.Since != until {
			t.Errorf("result %+v, holder %+v, want l2 holding with token %d", r, a.Holder, h.lastIndex())
		}
	})
	t.Run("a waiter repeating its request before the end changes nothing", func(t *testing.T) {
		h := expired("l2")
		r := requireUnchanged(t, h, enqueue("a", "l2", until-1), nil)
		if r.Held {
			t.Errorf("result %+v, want not held", r)
		}
	})
	t.Run("a waiter repeating its request at the end takes the lock", func(t *testing.T) {
		h := expired("l2", "l3")
		r := h.ok(enqueue("a", "l2", until))
		if a := h.lock("a"); !r.Held || r.Token != h.lastIndex() || !reflect.DeepEqual(waiterIDs(a), []string{"l3"}) {
			t.Errorf("result %+v, lock %+v %v", r, a.Holder, waiterIDs(a))
		}
	})
	t.Run("after the delay the first in line goes before a newcomer", func(t *testing.T) {
		h := expired("l2")
		r := h.ok(acquire("a", "l3", until))
		a := h.lock("a")
		if r.Held || holderID(a) != "l2" || a.Holder.Token != h.lastIndex() || r.Holder == nil || r.Holder.ID != "l2" {
			t.Errorf("result %+v, holder %+v, want l2 handed the lock, l3 refused", r, a.Holder)
		}
	})
	t.Run("after the delay a waiter leaving hands the lock to the next", func(t *testing.T) {
		h := expired("l2", "l3")
		h.ok(release("a", "l2", until))
		if a := h.lock("a"); holderID(a) != "l3" || a.Holder.Token != h.lastIndex() {
			t.Errorf("holder %+v, want l3", a.Holder)
		}
	})
	t.Run("the delay is the one its holder asked for", func(t *testing.T) {
		// l1 holds without a delay, l2 queues asking for one: once handed
		// the lock, l2's expiry keeps it vacant.
		h := newHarness(t, grant("l1"), grant("l2"), grant("l3"),
			acquire("a", "l1", t0),
			&fsm.AcquireLock{Name: "a", Lease: "l2", Queue: true, LockDelay: delay, Now: t0},
			release("a", "l1", t0+sec),
			enqueue("a", "l3", t0+sec),
			&fsm.ExpireLease{ID: "l2", Now: expiredAt})
		if a := h.lock("a"); a.Holder != nil || a.DelayUntil != until {
			t.Errorf("lock a = %+v, want vacant until %d", a, until)
		}
		// And a holder that asked for none does not inherit l2's.
		h = newHarness(t, grant("l1"), grant("l2"), grant("l3"),
			&fsm.AcquireLock{Name: "a", Lease: "l1", LockDelay: delay, Now: t0},
			enqueue("a", "l2", t0),
			release("a", "l1", t0+sec),
			enqueue("a", "l3", t0+sec),
			&fsm.ExpireLease{ID: "l2", Now: expiredAt})
		if a := h.lock("a"); holderID(a) != "l3" {
			t.Errorf("lock a = %+v, want l3 holding at once", a)
		}
	})
}
