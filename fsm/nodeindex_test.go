package fsm_test

import (
	"bytes"
	"io"
	"testing"

	"github.com/sidecarhq/sidecar/fsm"
)

// NodeIndex moves only when that node's instances or checks change, and a
// restored registry rebuilds it.
func TestFSM_NodeIndex_followsOneNode(t *testing.T) {
	f := fsm.New()
	idx := uint64(0)
	apply := func(c fsm.Command) {
		t.Helper()
		idx++
		b, err := fsm.Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		if res := f.ApplyBytes(idx, b); res.Err != nil {
			t.Fatalf("%T: %v", c, res.Err)
		}
	}
	apply(&fsm.RegisterNode{Name: "a", Address: "10.0.0.1"})
	apply(&fsm.RegisterNode{Name: "b", Address: "10.0.0.2"})
	apply(&fsm.RegisterInstance{Instance: fsm.Instance{ID: "web", Name: "web", Node: "a", Checks: []fsm.Check{{ID: "c", Type: "ttl", TTL: 1e9}}}})
	if got := f.NodeIndex("a"); got != idx {
		t.Fatalf("NodeIndex(a) after registering on a = %d, want %d", got, idx)
	}
	before := f.NodeIndex("a")
	apply(&fsm.RegisterInstance{Instance: fsm.Instance{ID: "db", Name: "db", Node: "b"}})
	if got := f.NodeIndex("a"); got != before {
		t.Fatalf("NodeIndex(a) moved to %d on a registration of node b", got)
	}
	apply(&fsm.UpdateCheck{Node: "a", CheckID: "c", Status: fsm.StatusPassing})
	if got := f.NodeIndex("a"); got != idx {
		t.Fatalf("NodeIndex(a) after a check update = %d, want %d", got, idx)
	}
	if n := len(f.NodeInstances("a")); n != 1 {
		t.Fatalf("NodeInstances(a) = %d instances, want 1", n)
	}
	var buf bytes.Buffer
	if err := f.WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	g := fsm.New()
	if err := g.Restore(io.NopCloser(&buf)); err != nil {
		t.Fatal(err)
	}
	if g.NodeIndex("a") == 0 || len(g.NodeInstances("b")) != 1 {
		t.Fatalf("restored: NodeIndex(a) %d, NodeInstances(b) %d", g.NodeIndex("a"), len(g.NodeInstances("b")))
	}
	apply(&fsm.DeregisterInstance{Node: "a", ID: "web"})
	if got := f.NodeIndex("a"); got != idx || len(f.NodeInstances("a")) != 0 {
		t.Fatalf("after deregistering a's only instance: NodeIndex %d (want %d), %d instances", got, idx, len(f.NodeInstances("a")))
	}
}
