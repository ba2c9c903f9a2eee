package fsm_test

import (
	"bytes"
	"fmt"
	"io"
	"testing"

	"github.com/sidecarhq/sidecar/fsm"
)

// restoredAt saves h's registry, rewrites it to describe a registry at
// index (as a restore does: the snapshot takes the index of the entry that
// restores it, which may be far below the tokens it holds) and returns a
// harness on a new registry restored from it, whose next entry is index+1.
func restoredAt(t *testing.T, h *harness, index uint64) *harness {
	t.Helper()
	var buf bytes.Buffer
	if err := h.f.WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	data, err := fsm.Reindex(buf.Bytes(), index)
	if err != nil {
		t.Fatal(err)
	}
	r := &harness{t: t, f: fsm.New(), next: index + 1}
	if err := r.f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	return r
}

// A snapshot saved on one cluster and restored into another keeps tokens
// greater than the restore's index. An acquisition whose entry's index is
// exactly the last token handed out gets the next token, never that one:
// two holds sharing a fencing token would both pass a fenced write.
func TestFSM_tokenAtTheLastTokensIndexIsGreater(t *testing.T) {
	h := newHarness(t, grant("l1"), grant("l2"))
	for range 10 {
		h.ok(regNode("n1"))
	}
	last := h.ok(acquire("x", "l1", t0)).Token
	if last != h.lastIndex() {
		t.Fatalf("token %d, want the entry's index %d", last, h.lastIndex())
	}

	r := restoredAt(t, h, last-3)
	r.ok(regNode("n1"))                     // last-2
	r.ok(release("x", "l1", t0+sec))        // last-1
	res := r.ok(acquire("x", "l2", t0+sec)) // at index last
	if r.lastIndex() != last {
		t.Fatalf("the acquisition is at index %d, want %d", r.lastIndex(), last)
	}
	m := r.lock("x")
	if !res.Held || res.Token <= last || m.Holder.Token != res.Token || m.LastToken != res.Token {
		t.Fatalf("acquisition at index %d after token %d: held %v token %d (holder %d, last %d); want a token above %d",
			last, last, res.Held, res.Token, m.Holder.Token, m.LastToken, last)
	}
}

// A candidate that campaigns again on another lease (its sidecar
// restarted: a new node session) goes on leading as a new acquisition,
// with a token greater than any before, so that whatever still acts on the
// old session's token is fenced off. It stays so after a restore whose
// index is below the tokens.
func TestFSM_recampaignOnANewLeaseGetsAGreaterToken(t *testing.T) {
	h := newHarness(t, grant("l1"), grant("l2"), grant("l3"))
	first := h.ok(campaign("e", "a", "l1", t0))
	if !first.Held {
		t.Fatal("the only candidate does not lead")
	}
	h.ok(regNode("n1")) // an entry between: the token is the index, not just one above the last
	again := h.ok(campaign("e", "a", "l2", t0+sec))
	e := h.election("e")
	if !again.Held || again.Token != h.lastIndex() || again.Token <= first.Token ||
		e.Holder.Token != again.Token || e.LastToken != again.Token || e.Holder.Lease != "l2" || e.Holder.Since != t0+sec {
		t.Fatalf("re-campaign on a new lease: held %v token %d (first %d), holder %+v, last token %d; want token %d since %d on l2",
			again.Held, again.Token, first.Token, e.Holder, e.LastToken, h.lastIndex(), t0+sec)
	}
	// The same lease again changes nothing, the token included.
	if same := h.apply(campaign("e", "a", "l2", t0+2*sec)); same.Token != again.Token {
		t.Fatalf("re-campaign on the same lease moved the token %d -> %d", again.Token, same.Token)
	}

	// Restored below its tokens: the next token is one above the last.
	r := restoredAt(t, h, again.Token-5)
	third := r.ok(campaign("e", "a", "l3", t0+3*sec))
	if third.Token != again.Token+1 || r.election("e").LastToken != third.Token {
		t.Fatalf("re-campaign after a restore at %d: token %d, want %d", again.Token-5, third.Token, again.Token+1)
	}
}

// A transfer hands the election over with a token one above the last, also
// after a restore whose index is below the tokens.
func TestFSM_Transfer_afterARestoreBelowTheTokens(t *testing.T) {
	h := newHarness(t, regNode("n1"), grant("l1"), grant("l2"))
	lead := h.ok(campaign("e", "a", "l1", t0))
	h.ok(campaign("e", "b", "l2", t0))
	r := restoredAt(t, h, lead.Token-2)
	res := r.ok(&fsm.Transfer{Election: "e", From: "a", To: "b", Node: "n1", Now: t0 + sec})
	e := r.election("e")
	if !res.Held || res.Token != lead.Token+1 || e.Holder.ID != "b" || e.LastToken != res.Token {
		t.Fatalf("transfer after a restore at %d: %+v, holder %+v, last token %d; want b leading with token %d",
			lead.Token-2, res, e.Holder, e.LastToken, lead.Token+1)
	}
}

// A service stays listed while one of its instances is left, and goes with
// its last one.
func TestFSM_Services_listsAServiceUntilItsLastInstanceGoes(t *testing.T) {
	h := newHarness(t, regNode("n1"), regInst("n1", "web-1", "web"), regInst("n1", "web-2", "web"))
	h.ok(&fsm.DeregisterInstance{Node: "n1", ID: "web-1"})
	if _, ok := h.f.Services()["web"]; !ok {
		t.Fatal("web is not listed with web-2 left")
	}
	h.ok(&fsm.DeregisterInstance{Node: "n1", ID: "web-2"})
	if _, ok := h.f.Services()["web"]; ok {
		t.Fatal("web is listed with no instance left")
	}
}

// A node that comes back with another address wakes the blocking queries
// of its services: their instances without an address of their own now
// answer with the new one.
func TestFSM_RegisterNode_newAddressWakesItsServices(t *testing.T) {
	in := regInst("n1", "web-1", "web")
	in.Instance.Address = ""
	h := newHarness(t, regNode("n1"), in)
	before := h.f.ServiceIndex("web")
	watch := h.f.WatchService("web")
	h.ok(&fsm.RegisterNode{Name: "n1", Address: "10.0.0.2"})
	select {
	case <-watch:
	default:
		t.Fatal("a new node address did not wake the service's watchers")
	}
	if after := h.f.ServiceIndex("web"); after <= before {
		t.Fatalf("service index %d -> %d after the node's address changed", before, after)
	}
}

// A service's instances are listed by node, then id; a node's by id.
func TestFSM_instanceListsAreOrdered(t *testing.T) {
	h := newHarness(t, regNode("n1"), regNode("n2"),
		regInst("n2", "a", "web"), regInst("n1", "b", "web"), regInst("n1", "a", "web"), regInst("n2", "c", "web"))
	var got []string
	for _, e := range h.f.ServiceInstances("web") {
		got = append(got, e.Instance.Node+"/"+e.Instance.ID)
	}
	if fmt.Sprint(got) != "[n1/a n1/b n2/a n2/c]" {
		t.Fatalf("ServiceInstances order %v", got)
	}
	got = nil
	for _, in := range h.f.NodeInstances("n2") {
		got = append(got, in.ID)
	}
	if fmt.Sprint(got) != "[a c]" {
		t.Fatalf("NodeInstances order %v", got)
	}
}

// Every table's index is the last entry that changed it, the first table
// included.
func TestFSM_TableIndex_everyTable(t *testing.T) {
	h := newHarness(t, regNode("n1"))
	if got := h.f.TableIndex(fsm.TableNodes); got != h.lastIndex() {
		t.Fatalf("TableIndex(nodes) = %d, want %d", got, h.lastIndex())
	}
	h.ok(grant("l1"))
	if got := h.f.TableIndex(fsm.TableLeases); got != h.lastIndex() {
		t.Fatalf("TableIndex(leases) = %d, want %d", got, h.lastIndex())
	}
}

// A service's tags stay listed while an instance carrying them is left.
func TestFSM_Services_keepsTagsOfTheInstancesLeft(t *testing.T) {
	tagged := func(id string) *fsm.RegisterInstance {
		c := regInst("n1", id, "web")
		c.Instance.Tags = []string{"v1"}
		return c
	}
	h := newHarness(t, regNode("n1"), tagged("web-1"), tagged("web-2"))
	h.ok(&fsm.DeregisterInstance{Node: "n1", ID: "web-1"})
	if got := h.f.Services()["web"]; fmt.Sprint(got) != "[v1]" {
		t.Fatalf("web's tags with web-2 left: %v, want [v1]", got)
	}
}

// Instances bound to a lease go with it, also those left after another of
// them was deregistered.
func TestFSM_RevokeLease_removesTheInstancesLeftOnIt(t *testing.T) {
	onLease := func(id string) *fsm.RegisterInstance {
		c := regInst("n1", id, "web")
		c.Instance.Lease = "l1"
		return c
	}
	h := newHarness(t, regNode("n1"), grant("l1"), onLease("web-1"), onLease("web-2"))
	h.ok(&fsm.DeregisterInstance{Node: "n1", ID: "web-1"})
	h.ok(&fsm.RevokeLease{ID: "l1", Now: t0})
	if _, ok := h.f.Instance("n1", "web-2"); ok {
		t.Fatal("web-2 outlived its lease")
	}
}
