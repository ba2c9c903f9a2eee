package fsm_test

import (
	"errors"
	"testing"

	"github.com/sidecarhq/sidecar/fsm"
)

// A conditional write applies only to the instance as its writer read it:
// absent (0) or at its ModifyIndex; otherwise ErrChanged and no change.
func TestFSM_precondition(t *testing.T) {
	f := fsm.New()
	idx := uint64(0)
	apply := func(c fsm.Command) *fsm.Result {
		t.Helper()
		idx++
		b, err := fsm.Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		return f.ApplyBytes(idx, b)
	}
	apply(&fsm.RegisterNode{Name: "n"})
	web := fsm.Instance{ID: "w", Name: "web", Node: "n", Port: 1}
	if r := apply(&fsm.RegisterInstance{Instance: web, If: &fsm.Precondition{}}); r.Err != nil {
		t.Fatalf("register if absent, absent: %v", r.Err)
	}
	created := idx
	before := f.Digest()
	web.Port = 2
	for name, p := range map[string]*fsm.Precondition{"if absent": {}, "stale index": {ModifyIndex: created - 1}} {
		if r := apply(&fsm.RegisterInstance{Instance: web, If: p}); !errors.Is(r.Err, fsm.ErrChanged) {
			t.Fatalf("register %s: %v, want ErrChanged", name, r.Err)
		}
		if r := apply(&fsm.DeregisterInstance{Node: "n", ID: "w", If: p}); !errors.Is(r.Err, fsm.ErrChanged) {
			t.Fatalf("deregister %s: %v, want ErrChanged", name, r.Err)
		}
	}
	if f.Digest() != before {
		t.Fatal("refused conditional writes changed the registry")
	}
	if r := apply(&fsm.RegisterInstance{Instance: web, If: &fsm.Precondition{ModifyIndex: created}}); r.Err != nil {
		t.Fatalf("register at the index read: %v", r.Err)
	}
	if in, _ := f.Instance("n", "w"); in.Port != 2 {
		t.Fatalf("port %d after the conditional write, want 2", in.Port)
	}
	if r := apply(&fsm.DeregisterInstance{Node: "n", ID: "w", If: &fsm.Precondition{ModifyIndex: idx}}); r.Err != nil {
		t.Fatalf("deregister at the index read: %v", r.Err)
	}
}
