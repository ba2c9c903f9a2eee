package fsm_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/sidecarhq/sidecar/fsm"
)

func TestFSM_ApplyBytes_campaign(t *testing.T) {
	leases := []fsm.Command{grant("l1"), grant("l2"), grant("l3")}
	with := func(cmds ...fsm.Command) []fsm.Command { return append(append([]fsm.Command{}, leases...), cmds...) }
	now := t0 + sec
	two := with(campaign("e", "c1", "l1", t0), campaign("e", "c2", "l2", t0))
	runApplyCases(t, []applyCase{
		{
			name:   "first candidate leads",
			setup:  leases,
			cmd:    &fsm.Campaign{Election: "e", Candidate: "c1", Lease: "l1", Node: "n1", Value: "10.0.0.1:80", Service: "web-1", Now: now},
			tables: []fsm.Table{fsm.TableElections},
			check: func(t *testing.T, h *harness, r *fsm.Result) {
				idx := h.lastIndex()
				want := &fsm.Holder{ID: "c1", Lease: "l1", Node: "n1", Value: "10.0.0.1:80", Service: "web-1", Token: idx, Since: now}
				if !r.Held || r.Token != idx || !reflect.DeepEqual(r.Holder, want) {
					t.Errorf("result %+v holder %+v", r, r.Holder)
				}
				if e := h.election("e"); !reflect.DeepEqual(e.Holder, want) || e.LastToken != idx {
					t.Errorf("election %+v", e)
				}
			},
		},
		{
			name:   "later candidates wait in order",
			setup:  two,
			cmd:    campaign("e", "c3", "l3", now),
			tables: []fsm.Table{fsm.TableElections},
			check: func(t *testing.T, h *harness, r *fsm.Result) {
				e := h.election("e")
				if r.Held || r.Holder == nil || r.Holder.ID != "c1" || !reflect.DeepEqual(waiterIDs(e), []string{"c2", "c3"}) {
					t.Errorf("result %+v, waiters %v", r, waiterIDs(e))
				}
			},
		},
		{
			name:   "leader campaigning again updates its value and keeps its token",
			setup:  two,
			cmd:    &fsm.Campaign{Election: "e", Candidate: "c1", Lease: "l1", Node: "n1", Value: "10.0.0.2:80", Now: now},
			tables: []fsm.Table{fsm.TableElections},
			check: func(t *testing.T, h *harness, r *fsm.Result) {
				e := h.election("e")
				if !r.Held || r.Token != 4 || e.Holder.Value != "10.0.0.2:80" || e.Holder.Token != 4 || e.Holder.Since != t0 {
					t.Errorf("result %+v holder %+v", r, e.Holder)
				}
			},
		},
		{
			// A new lease is a new acquisition: the leader stays, with a
			// greater token, so what still acts on the old lease's token
			// (a zombie of the old session) is fenced off.
			name:   "leader moves to another lease",
			setup:  two,
			cmd:    campaign("e", "c1", "l3", now),
			tables: []fsm.Table{fsm.TableElections},
			check: func(t *testing.T, h *harness, r *fsm.Result) {
				if e := h.election("e"); e.Holder.Lease != "l3" || e.Holder.Token != h.f.Index() || e.Holder.Token <= 4 ||
					e.Holder.Since != now || e.LastToken != e.Holder.Token || !r.Held || r.Token != e.Holder.Token {
					t.Errorf("holder %+v, result %+v", e.Holder, r)
				}
			},
		},
		{
			name:   "waiter campaigning again keeps its place",
			setup:  with(campaign("e", "c1", "l1", t0), campaign("e", "c2", "l2", t0), campaign("e", "c3", "l3", t0)),
			cmd:    &fsm.Campaign{Election: "e", Candidate: "c2", Lease: "l2", Value: "new", Now: now},
			tables: []fsm.Table{fsm.TableElections},
			check: func(t *testing.T, h *harness, _ *fsm.Result) {
				e := h.election("e")
				if !reflect.DeepEqual(waiterIDs(e), []string{"c2", "c3"}) || e.Waiters[0].Value != "new" {
					t.Errorf("waiters %+v", e.Waiters)
				}
			},
		},
		{name: "leader campaigning the same is a no-op", setup: two, cmd: campaign("e", "c1", "l1", now), noop: true},
		{name: "waiter campaigning the same is a no-op", setup: two, cmd: campaign("e", "c2", "l2", now), noop: true},
		{name: "unknown lease", setup: leases, cmd: campaign("e", "c1", "l9", now), err: fsm.ErrUnknownLease},
		{name: "bad election name", setup: leases, cmd: campaign("e_1", "c1", "l1", now), err: fsm.ErrInvalid},
		{name: "bad candidate", setup: leases, cmd: campaign("e", "c 1", "l1", now), err: fsm.ErrInvalid},
		{name: "bad lease", setup: leases, cmd: campaign("e", "c1", "", now), err: fsm.ErrInvalid},
		{name: "bad service", setup: leases, cmd: &fsm.Campaign{Election: "e", Candidate: "c1", Lease: "l1", Service: "web/1", Now: now}, err: fsm.ErrInvalid},
		{name: "value too long", setup: leases, cmd: &fsm.Campaign{Election: "e", Candidate: "c1", Lease: "l1", Value: strings.Repeat("v", fsm.MaxValueLen+1), Now: now}, err: fsm.ErrInvalid},
	})
}

func TestFSM_ApplyBytes_resign(t *testing.T) {
	now := t0 + sec
	one := []fsm.Command{grant("l1"), grant("l2"), grant("l3"), campaign("e", "c1", "l1", t0)}
	three := append(append([]fsm.Command{}, one...), campaign("e", "c2", "l2", t0), campaign("e", "c3", "l3", t0))
	runApplyCases(t, []applyCase{
		{
			name:   "leader hands over to the next in line",
			setup:  three,
			cmd:    resign("e", "c1", now),
			tables: []fsm.Table{fsm.TableElections},
			check: func(t *testing.T, h *harness, r *fsm.Result) {
				e := h.election("e")
				if holderID(e) != "c2" || e.Holder.Token != h.lastIndex() || e.Holder.Since != now || !reflect.DeepEqual(waiterIDs(e), []string{"c3"}) {
					t.Errorf("holder %+v waiters %v", e.Holder, waiterIDs(e))
				}
				if r.Held || r.Holder == nil || r.Holder.ID != "c2" {
					t.Errorf("result %+v", r)
				}
			},
		},
		{
			name:   "last leader leaves the election vacant and known",
			setup:  one,
			cmd:    resign("e", "c1", now),
			tables: []fsm.Table{fsm.TableElections},
			check: func(t *testing.T, h *harness, _ *fsm.Result) {
				if e := h.election("e"); e.Holder != nil || e.LastToken != 4 {
					t.Errorf("election %+v", e)
				}
			},
		},
		{
			name:   "waiter leaves the line",
			setup:  three,
			cmd:    resign("e", "c2", now),
			tables: []fsm.Table{fsm.TableElections},
			check: func(t *testing.T, h *harness, _ *fsm.Result) {
				if e := h.election("e"); holderID(e) != "c1" || !reflect.DeepEqual(waiterIDs(e), []string{"c3"}) {
					t.Errorf("holder %+v waiters %v", e.Holder, waiterIDs(e))
				}
			},
		},
		{
			name:  "only waiting: the leader stays",
			setup: three,
			cmd:   &fsm.Resign{Election: "e", Candidate: "c1", OnlyWaiting: true, Now: now},
			noop:  true,
			check: func(t *testing.T, _ *harness, r *fsm.Result) {
				if !r.Held || r.Token != 4 {
					t.Errorf("result %+v", r)
				}
			},
		},
		{
			name:   "only waiting: a waiter leaves",
			setup:  three,
			cmd:    &fsm.Resign{Election: "e", Candidate: "c3", OnlyWaiting: true, Now: now},
			tables: []fsm.Table{fsm.TableElections},
			check: func(t *testing.T, h *harness, _ *fsm.Result) {
				if e := h.election("e"); !reflect.DeepEqual(waiterIDs(e), []string{"c2"}) {
					t.Errorf("waiters %v", waiterIDs(e))
				}
			},
		},
		{name: "unknown election", setup: three, cmd: resign("f", "c1", now), err: fsm.ErrUnknownElection},
		{name: "not a candidate", setup: three, cmd: resign("e", "c9", now), err: fsm.ErrNotCandidate},
		{name: "resigned twice", setup: append(append([]fsm.Command{}, one...), resign("e", "c1", t0)), cmd: resign("e", "c1", now), err: fsm.ErrNotCandidate},
		{name: "bad election name", setup: three, cmd: resign("", "c1", now), err: fsm.ErrInvalid},
		{name: "bad candidate", setup: three, cmd: resign("e", "c\n1", now), err: fsm.ErrInvalid},
	})
}

func TestFSM_ApplyBytes_campaignFIFO(t *testing.T) {
	h := newHarness(t, grant("l1"), grant("l2"), grant("l3"), grant("l4"))
	order := []string{"c1", "c2", "c3", "c4"}
	for i, c := range order {
		h.ok(campaign("e", c, "l"+string(rune('1'+i)), t0))
	}
	for i, want := range order {
		e := h.election("e")
		if holderID(e) != want || !reflect.DeepEqual(waiterIDs(e), nilIfEmpty(order[i+1:])) {
			t.Fatalf("step %d: holder %+v waiters %v, want %s then %v", i, e.Holder, waiterIDs(e), want, order[i+1:])
		}
		h.ok(resign("e", want, t0))
	}
	if e := h.election("e"); e.Holder != nil {
		t.Fatalf("holder %+v after everyone resigned", e.Holder)
	}
}

func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}
