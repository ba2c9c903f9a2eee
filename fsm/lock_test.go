package fsm_test

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/sidecarhq/sidecar/fsm"
)

func TestFSM_ApplyBytes_acquireLock(t *testing.T) {
	leases := []fsm.Command{grant("l1"), grant("l2"), grant("l3")}
	with := func(cmds ...fsm.Command) []fsm.Command { return append(append([]fsm.Command{}, leases...), cmds...) }
	now := t0 + sec
	runApplyCases(t, []applyCase{
		{
			name:   "vacant lock is taken with the entry's index as token",
			setup:  leases,
			cmd:    &fsm.AcquireLock{Name: "a", Lease: "l1", Node: "n1", Value: "v1", Now: now},
			tables: []fsm.Table{fsm.TableLocks},
			check: func(t *testing.T, h *harness, r *fsm.Result) {
				idx := h.lastIndex()
				want := &fsm.Holder{ID: "l1", Lease: "l1", Node: "n1", Value: "v1", Token: idx, Since: now}
				if !r.Held || r.Token != idx || !reflect.DeepEqual(r.Holder, want) {
					t.Errorf("result %+v holder %+v, want held with %+v", r, r.Holder, want)
				}
				a := h.lock("a")
				if !reflect.DeepEqual(a.Holder, want) || a.LastToken != idx || a.ModifyIndex != idx {
					t.Errorf("lock = %+v", a)
				}
			},
		},
		{
			name:  "same request by the holder is a no-op",
			setup: with(&fsm.AcquireLock{Name: "a", Lease: "l1", Node: "n1", Value: "v1", Now: t0}),
			cmd:   &fsm.AcquireLock{Name: "a", Lease: "l1", Node: "n1", Value: "v1", Now: now},
			noop:  true,
			check: func(t *testing.T, _ *harness, r *fsm.Result) {
				if !r.Held || r.Token != 4 {
					t.Errorf("result %+v, want held with token 4", r)
				}
			},
		},
		{
			name:   "holder changes its value and keeps its token",
			setup:  with(&fsm.AcquireLock{Name: "a", Lease: "l1", Value: "v1", Now: t0}),
			cmd:    &fsm.AcquireLock{Name: "a", Lease: "l1", Value: "v2", Now: now},
			tables: []fsm.Table{fsm.TableLocks},
			check: func(t *testing.T, h *harness, r *fsm.Result) {
				a := h.lock("a")
				if !r.Held || r.Token != 4 || a.Holder.Value != "v2" || a.Holder.Since != t0 {
					t.Errorf("result %+v, holder %+v", r, a.Holder)
				}
			},
		},
		{
			name:  "held by another lease without queue",
			setup: with(acquire("a", "l1", t0)),
			cmd:   acquire("a", "l2", now),
			noop:  true,
			check: func(t *testing.T, _ *harness, r *fsm.Result) {
				if r.Held || r.Token != 0 || r.Holder == nil || r.Holder.ID != "l1" {
					t.Errorf("result %+v holder %+v, want refused naming l1", r, r.Holder)
				}
			},
		},
		{
			name:   "held by another lease with queue waits in line",
			setup:  with(acquire("a", "l1", t0), enqueue("a", "l2", t0)),
			cmd:    enqueue("a", "l3", now),
			tables: []fsm.Table{fsm.TableLocks},
			check: func(t *testing.T, h *harness, r *fsm.Result) {
				a := h.lock("a")
				if r.Held || holderID(a) != "l1" || !reflect.DeepEqual(waiterIDs(a), []string{"l2", "l3"}) {
					t.Errorf("result %+v, lock %+v %v", r, a.Holder, waiterIDs(a))
				}
			},
		},
		{
			name:  "waiter repeating the same request is a no-op",
			setup: with(acquire("a", "l1", t0), enqueue("a", "l2", t0)),
			cmd:   enqueue("a", "l2", now),
			noop:  true,
		},
		{
			name:  "waiter without queue is still a waiter",
			setup: with(acquire("a", "l1", t0), enqueue("a", "l2", t0)),
			cmd:   acquire("a", "l2", now),
			noop:  true,
		},
		{
			name:   "waiter changing its value keeps its place",
			setup:  with(acquire("a", "l1", t0), enqueue("a", "l2", t0), enqueue("a", "l3", t0)),
			cmd:    &fsm.AcquireLock{Name: "a", Lease: "l2", Value: "new", Queue: true, Now: now},
			tables: []fsm.Table{fsm.TableLocks},
			check: func(t *testing.T, h *harness, _ *fsm.Result) {
				a := h.lock("a")
				if !reflect.DeepEqual(waiterIDs(a), []string{"l2", "l3"}) || a.Waiters[0].Value != "new" {
					t.Errorf("waiters = %+v", a.Waiters)
				}
			},
		},
		{
			name:   "vacant lock remembers its last token",
			setup:  with(acquire("a", "l1", t0), release("a", "l1", t0)),
			cmd:    acquire("a", "l2", now),
			tables: []fsm.Table{fsm.TableLocks},
			check: func(t *testing.T, h *harness, r *fsm.Result) {
				if !r.Held || r.Token != h.lastIndex() || r.Token <= 4 {
					t.Errorf("result %+v", r)
				}
			},
		},
		{name: "longest lock delay", setup: leases, cmd: &fsm.AcquireLock{Name: "a", Lease: "l1", LockDelay: int64(fsm.MaxLockDelay), Now: now}, tables: []fsm.Table{fsm.TableLocks}},
		{name: "unknown lease", setup: leases, cmd: acquire("a", "l9", now), err: fsm.ErrUnknownLease},
		{
			name:  "unknown lease does not create the lock",
			setup: leases,
			cmd:   enqueue("a", "l9", now),
			err:   fsm.ErrUnknownLease,
			check: func(t *testing.T, h *harness, _ *fsm.Result) {
				if _, ok := h.f.Lock("a"); ok {
					t.Error("lock a exists")
				}
			},
		},
		{name: "bad name", setup: leases, cmd: acquire("a/b", "l1", now), err: fsm.ErrInvalid},
		{name: "bad lease id", setup: leases, cmd: acquire("a", "", now), err: fsm.ErrInvalid},
		{name: "negative lock delay", setup: leases, cmd: &fsm.AcquireLock{Name: "a", Lease: "l1", LockDelay: -1, Now: now}, err: fsm.ErrInvalid},
		{name: "lock delay too long", setup: leases, cmd: &fsm.AcquireLock{Name: "a", Lease: "l1", LockDelay: int64(fsm.MaxLockDelay) + 1, Now: now}, err: fsm.ErrInvalid},
		{name: "value too long", setup: leases, cmd: &fsm.AcquireLock{Name: "a", Lease: "l1", Value: strings.Repeat("v", fsm.MaxValueLen+1), Now: now}, err: fsm.ErrInvalid},
	})
}

func TestFSM_ApplyBytes_releaseLock(t *testing.T) {
	now := t0 + sec
	held := []fsm.Command{grant("l1"), grant("l2"), grant("l3"), acquire("a", "l1", t0)}
	queued := append(append([]fsm.Command{}, held...), enqueue("a", "l2", t0), enqueue("a", "l3", t0))
	runApplyCases(t, []applyCase{
		{
			name:   "holder alone leaves the lock vacant and known",
			setup:  held,
			cmd:    release("a", "l1", now),
			tables: []fsm.Table{fsm.TableLocks},
			check: func(t *testing.T, h *harness, r *fsm.Result) {
				a := h.lock("a")
				if r.Held || r.Holder != nil || a.Holder != nil || a.LastToken != 4 || a.ModifyIndex != h.lastIndex() {
					t.Errorf("result %+v, lock %+v", r, a)
				}
			},
		},
		{
			name:   "holder hands the lock to the first waiter",
			setup:  queued,
			cmd:    release("a", "l1", now),
			tables: []fsm.Table{fsm.TableLocks},
			check: func(t *testing.T, h *harness, r *fsm.Result) {
				a := h.lock("a")
				if holderID(a) != "l2" || a.Holder.Token != h.lastIndex() || a.Holder.Since != now || !reflect.DeepEqual(waiterIDs(a), []string{"l3"}) {
					t.Errorf("lock %+v %v, want l2 holding with token %d", a.Holder, waiterIDs(a), h.lastIndex())
				}
				if r.Held || r.Holder == nil || r.Holder.ID != "l2" {
					t.Errorf("result %+v, want not held, holder l2", r)
				}
			},
		},
		{
			name:   "waiter leaves the line",
			setup:  queued,
			cmd:    release("a", "l2", now),
			tables: []fsm.Table{fsm.TableLocks},
			check: func(t *testing.T, h *harness, _ *fsm.Result) {
				a := h.lock("a")
				if holderID(a) != "l1" || a.Holder.Token != 4 || !reflect.DeepEqual(waiterIDs(a), []string{"l3"}) {
					t.Errorf("lock %+v %v", a.Holder, waiterIDs(a))
				}
			},
		},
		{
			name:  "only waiting: the holder keeps the lock",
			setup: queued,
			cmd:   &fsm.ReleaseLock{Name: "a", Lease: "l1", OnlyWaiting: true, Now: now},
			noop:  true,
			check: func(t *testing.T, _ *harness, r *fsm.Result) {
				if !r.Held || r.Token != 4 {
					t.Errorf("result %+v, want held with token 4", r)
				}
			},
		},
		{
			name:   "only waiting: a waiter leaves the line",
			setup:  queued,
			cmd:    &fsm.ReleaseLock{Name: "a", Lease: "l3", OnlyWaiting: true, Now: now},
			tables: []fsm.Table{fsm.TableLocks},
			check: func(t *testing.T, h *harness, _ *fsm.Result) {
				if a := h.lock("a"); !reflect.DeepEqual(waiterIDs(a), []string{"l2"}) {
					t.Errorf("waiters %v", waiterIDs(a))
				}
			},
		},
		{name: "unknown lock", setup: held, cmd: release("b", "l1", now), err: fsm.ErrUnknownLock},
		{name: "neither holder nor waiter", setup: queued, cmd: release("a", "l9", now), err: fsm.ErrNotHolder},
		{name: "released twice", setup: append(append([]fsm.Command{}, held...), release("a", "l1", t0)), cmd: release("a", "l1", now), err: fsm.ErrNotHolder},
		{name: "bad name", setup: held, cmd: release("", "l1", now), err: fsm.ErrInvalid},
		{name: "bad lease", setup: held, cmd: release("a", "l 1", now), err: fsm.ErrInvalid},
	})
}

// TestFSM_ApplyBytes_handover checks that whatever ends a hold, the next in
// line holds the mutex after that very entry, with its index as token.
func TestFSM_ApplyBytes_handover(t *testing.T) {
	now := t0 + 7*sec
	lockSetup := []fsm.Command{grant("l1"), grant("l2"), grant("l3"), acquire("a", "l1", t0), enqueue("a", "l2", t0), enqueue("a", "l3", t0)}
	electionSetup := []fsm.Command{grant("l1"), grant("l2"), grant("l3"), campaign("e", "c1", "l1", t0), campaign("e", "c2", "l2", t0), campaign("e", "c3", "l3", t0)}
	for _, tc := range []struct {
		name     string
		setup    []fsm.Command
		end      fsm.Command
		election bool
		want     string
	}{
		{"lock released", lockSetup, release("a", "l1", now), false, "l2"},
		{"lock lease revoked", lockSetup, &fsm.RevokeLease{ID: "l1", Now: now}, false, "l2"},
		{"lock lease expired", lockSetup, &fsm.ExpireLease{ID: "l1", Now: now}, false, "l2"},
		{"leader resigned", electionSetup, resign("e", "c1", now), true, "c2"},
		{"leader lease revoked", electionSetup, &fsm.RevokeLease{ID: "l1", Now: now}, true, "c2"},
		{"leader lease expired", electionSetup, &fsm.ExpireLease{ID: "l1", Now: now}, true, "c2"},
		{
			"leader and first in line on the same lease",
			[]fsm.Command{grant("l1"), grant("l2"), campaign("e", "c1", "l1", t0), campaign("e", "c4", "l1", t0), campaign("e", "c2", "l2", t0)},
			&fsm.ExpireLease{ID: "l1", Now: now}, true, "c2",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.setup...)
			h.next += 10 // Raft indexes have gaps (no-ops, configuration).
			watch := h.f.Watch()
			h.ok(tc.end)
			var m *fsm.Mutex
			if tc.election {
				m = h.election("e")
			} else {
				m = h.lock("a")
			}
			idx := h.lastIndex()
			if holderID(m) != tc.want || m.Holder.Token != idx || m.Holder.Since != now || m.LastToken != idx {
				t.Errorf("holder %+v last token %d, want %s with token %d", m.Holder, m.LastToken, tc.want, idx)
			}
			if !closed(watch) {
				t.Error("Watch did not fire")
			}
		})
	}
}

// TestFSM_ApplyBytes_fencingTokens follows one lock through every way a
// hold ends: each new holder gets a token above all before it.
func TestFSM_ApplyBytes_fencingTokens(t *testing.T) {
	h := newHarness(t, grant("l1"), grant("l2"), grant("l3"))
	var tokens []uint64
	take := func(lease string) {
		t.Helper()
		a := h.lock("a")
		if holderID(a) != lease {
			t.Fatalf("holder %+v, want %s", a.Holder, lease)
		}
		tokens = append(tokens, a.Holder.Token)
	}
	h.ok(acquire("a", "l1", t0))
	take("l1")
	h.ok(enqueue("a", "l2", t0))
	h.ok(release("a", "l1", t0)) // release
	take("l2")
	h.ok(enqueue("a", "l3", t0))
	h.ok(&fsm.RevokeLease{ID: "l2", Now: t0}) // revoke
	take("l3")
	h.ok(grant("l2"))
	h.ok(enqueue("a", "l2", t0))
	h.ok(&fsm.ExpireLease{ID: "l3", Now: t0}) // expiry
	take("l2")
	h.ok(release("a", "l2", t0))
	h.ok(acquire("a", "l1", t0)) // vacant, taken again
	take("l1")
	for i := 1; i < len(tokens); i++ {
		if tokens[i] <= tokens[i-1] {
			t.Fatalf("tokens %v do not strictly increase", tokens)
		}
	}

	// An entry applied at an index not above the last token still gets a
	// greater token: a saved registry (tokens up to last) restored at a
	// lower index, as into a younger cluster.
	h.ok(release("a", "l1", t0))
	last := h.lock("a").LastToken
	var buf bytes.Buffer
	if err := h.f.WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	saved, err := fsm.Reindex(buf.Bytes(), last-6)
	if err != nil {
		t.Fatal(err)
	}
	young := fsm.New()
	if err := young.Restore(nopCloser(saved)); err != nil {
		t.Fatal(err)
	}
	r := young.ApplyBytes(last-5, encode(t, acquire("a", "l2", t0)))
	if r.Err != nil || !r.Held || r.Token != last+1 {
		t.Fatalf("result %+v, want held with token %d", r, last+1)
	}
}

func TestMutex_WaiterIndex(t *testing.T) {
	h := newHarness(t, grant("l1"), grant("l2"), grant("l3"),
		acquire("a", "l1", t0), enqueue("a", "l2", t0), enqueue("a", "l3", t0))
	m := h.lock("a")
	for id, want := range map[string]int{"l1": -1, "l2": 0, "l3": 1, "l9": -1} {
		if got := m.WaiterIndex(id); got != want {
			t.Errorf("WaiterIndex(%s) = %d, want %d", id, got, want)
		}
	}
}
