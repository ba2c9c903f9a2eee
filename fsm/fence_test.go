package fsm_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/sidecarhq/sidecar/fsm"
)

// A late release naming the token of an earlier acquisition, on the same
// lease, never ends the newer hold: it is refused, names the current token
// and changes nothing. The token of the live hold releases it.
func TestFSM_ReleaseLock_tokenGuarded(t *testing.T) {
	h := newHarness(t, grant("l1"), grant("l2"))
	first := h.ok(acquire("a", "l1", t0)).Token
	h.ok(release("a", "l1", t0))
	second := h.ok(acquire("a", "l1", t0+sec)).Token
	if second <= first {
		t.Fatalf("second token %d not above first %d", second, first)
	}
	late := &fsm.ReleaseLock{Name: "a", Lease: "l1", Token: first, Now: t0 + 2*sec}
	r := requireUnchanged(t, h, late, fsm.ErrStaleToken)
	if r.Token != second || !strings.Contains(r.Err.Error(), "current token") {
		t.Fatalf("refusal %v names token %d, want %d", r.Err, r.Token, second)
	}
	if got := h.lock("a"); got.Holder == nil || got.Holder.Token != second {
		t.Fatalf("the newer hold ended: %+v", got.Holder)
	}
	if !fsm.Refused(r.Err) {
		t.Fatal("ErrStaleToken is not a refusal")
	}
	// Another lease naming the live token is no holder either.
	requireUnchanged(t, h, &fsm.ReleaseLock{Name: "a", Lease: "l2", Token: second, Now: t0}, fsm.ErrStaleToken)
	// A vacant lock names token 0.
	h.ok(&fsm.ReleaseLock{Name: "a", Lease: "l1", Token: second, Now: t0 + 3*sec})
	if got := h.lock("a"); got.Holder != nil {
		t.Fatalf("guarded release with the live token left %+v", got.Holder)
	}
	r = requireUnchanged(t, h, &fsm.ReleaseLock{Name: "a", Lease: "l1", Token: second, Now: t0}, fsm.ErrStaleToken)
	if r.Token != 0 {
		t.Fatalf("vacant lock: refusal names token %d, want 0", r.Token)
	}
	// Without a token the release stays keyed by lease.
	h.ok(acquire("a", "l1", t0+4*sec))
	h.ok(release("a", "l1", t0+4*sec))
}

// A guarded release hands the lock to the next in line in the same entry,
// as an unguarded one does.
func TestFSM_ReleaseLock_tokenGuardedPromotes(t *testing.T) {
	h := newHarness(t, grant("l1"), grant("l2"))
	tok := h.ok(acquire("a", "l1", t0)).Token
	h.ok(enqueue("a", "l2", t0))
	r := h.ok(&fsm.ReleaseLock{Name: "a", Lease: "l1", Token: tok, Now: t0 + sec})
	m := h.lock("a")
	if m.Holder == nil || m.Holder.ID != "l2" || m.Holder.Token != r.Index {
		t.Fatalf("after a guarded release: holder %+v, want l2 with token %d", m.Holder, r.Index)
	}
}

func transfer(election, from, to string) *fsm.Transfer {
	return &fsm.Transfer{Election: election, From: from, To: to, Node: "n1", Now: t0 + sec}
}

// A transfer hands the election to the named waiting candidate in one
// entry, with a greater token, and takes the old leader out.
func TestFSM_Transfer(t *testing.T) {
	h := newHarness(t, grant("l1"), grant("l2"), grant("l3"),
		campaign("e", "c1", "l1", t0), campaign("e", "c2", "l2", t0), campaign("e", "c3", "l3", t0))
	before := h.election("e")
	watch := h.f.WatchElection("e")
	r := h.ok(transfer("e", "c1", "c3"))
	m := h.election("e")
	if m.Holder == nil || m.Holder.ID != "c3" || m.Holder.Token != r.Index || m.Holder.Token <= before.Holder.Token {
		t.Fatalf("holder %+v, want c3 with token %d > %d", m.Holder, r.Index, before.Holder.Token)
	}
	if !r.Held || r.Token != m.Holder.Token || r.Holder.ID != "c3" {
		t.Fatalf("result %+v", r)
	}
	if got := waiterIDs(m); len(got) != 1 || got[0] != "c2" {
		t.Fatalf("waiters %v, want [c2]: c1 leaves, c3 leads", got)
	}
	if m.LastToken != m.Holder.Token || m.ModifyIndex != r.Index || m.Holder.Since != t0+sec {
		t.Fatalf("mutex %+v", m)
	}
	if !closed(watch) {
		t.Fatal("the election's watchers were not woken")
	}
	if h.f.TableIndex(fsm.TableElections) != r.Index {
		t.Fatal("elections table index not moved")
	}
	checkInvariants(t, h.f)
}

func TestFSM_Transfer_refused(t *testing.T) {
	setup := []fsm.Command{&fsm.GrantLease{ID: "l1", TTL: 10 * sec, Owner: "tokA"}, grant("l2"), grant("l3"),
		&fsm.ACLBootstrap{Token: fsm.ACLToken{ID: "mgmt", SecretHash: "m", Management: true}},
		&fsm.Campaign{Election: "e", Candidate: "c1", Lease: "l1", Node: "n1", Now: t0, Auth: fsm.Auth{By: "tokA"}},
		campaign("e", "c2", "l2", t0)}
	cases := []struct {
		name string
		cmd  *fsm.Transfer
		want error
	}{
		{"unknown election", transfer("nope", "c1", "c2"), fsm.ErrUnknownElection},
		{"from does not lead", transfer("e", "c2", "c1"), fsm.ErrNotLeading},
		{"from unknown", transfer("e", "zz", "c2"), fsm.ErrNotLeading},
		{"to not waiting", &fsm.Transfer{Election: "e", From: "c1", To: "c9", Node: "n1", Now: t0, Auth: fsm.Auth{By: "tokA"}}, fsm.ErrNotCandidate},
		{"from elsewhere", &fsm.Transfer{Election: "e", From: "c1", To: "c2", Node: "n2", Now: t0, Auth: fsm.Auth{By: "tokA"}}, fsm.ErrNotLeading},
		{"another token", &fsm.Transfer{Election: "e", From: "c1", To: "c2", Node: "n1", Now: t0, Auth: fsm.Auth{By: "tokB"}}, fsm.ErrNotOwner},
		{"no token", transfer("e", "c1", "c2"), fsm.ErrNotOwner},
		{"same candidate", &fsm.Transfer{Election: "e", From: "c1", To: "c1", Now: t0}, fsm.ErrInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, setup...)
			r := requireUnchanged(t, h, c.cmd, c.want)
			if !fsm.Refused(r.Err) {
				t.Fatalf("%v is not a refusal", r.Err)
			}
		})
	}
	// The refusal of a transfer from elsewhere names that node.
	h := newHarness(t, setup...)
	r := h.apply(&fsm.Transfer{Election: "e", From: "c1", To: "c2", Node: "n2", Now: t0, Auth: fsm.Auth{By: "tokA"}})
	if !errors.Is(r.Err, fsm.ErrNotLeading) || !strings.Contains(r.Err.Error(), `"n1"`) {
		t.Fatalf("err %v does not name node n1", r.Err)
	}
	// Its owner and a management token may transfer.
	h.ok(&fsm.Transfer{Election: "e", From: "c1", To: "c2", Node: "n1", Now: t0, Auth: fsm.Auth{By: "tokA"}})
	h2 := newHarness(t, setup...)
	h2.ok(&fsm.Transfer{Election: "e", From: "c1", To: "c2", Node: "n1", Now: t0, Auth: fsm.Auth{By: "mgmt"}})
}
