package fsm_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/sidecarhq/sidecar/fsm"
)

// TestFSM_instanceWeight: the weight is stored with the instance and kept
// by a snapshot; out-of-range weights are refused.
func TestFSM_instanceWeight(t *testing.T) {
	h := newHarness(t, regNode("n1"))
	heavy := regInst("n1", "web-1", "web")
	heavy.Instance.Weight = 65535
	h.ok(heavy)
	h.ok(regInst("n1", "web-2", "web"))
	if in := instance(t, h, "n1", "web-1"); in.Weight != 65535 || in.EffectiveWeight() != 65535 {
		t.Errorf("weight %d (effective %d), want 65535", in.Weight, in.EffectiveWeight())
	}
	if in := instance(t, h, "n1", "web-2"); in.EffectiveWeight() != fsm.DefaultWeight {
		t.Errorf("instance without weight: effective %d, want %d", in.EffectiveWeight(), fsm.DefaultWeight)
	}
	for _, w := range []int{-1, 65536, 1 << 40} {
		bad := regInst("n1", "web-3", "web")
		bad.Instance.Weight = w
		if res := h.apply(bad); !errors.Is(res.Err, fsm.ErrInvalid) {
			t.Errorf("weight %d: %v, want ErrInvalid", w, res.Err)
		}
	}
	dst := fsm.New()
	if err := dst.Restore(nopCloser(snapshotBytes(t, h.f))); err != nil {
		t.Fatal(err)
	}
	if in, _ := dst.Instance("n1", "web-1"); in == nil || in.Weight != 65535 {
		t.Errorf("restored weight: %+v", in)
	}
}

// TestFSM_snapshotWithoutWeight: a snapshot written before weights existed
// restores with weight 1, and a registry whose instances have no weight
// writes the same bytes as before.
func TestFSM_snapshotWithoutWeight(t *testing.T) {
	h := newHarness(t, regNode("n1"), regInst("n1", "web-1", "web"))
	snap := snapshotBytes(t, h.f)
	if bytes.Contains(snap, []byte(`"weight"`)) {
		t.Fatalf("snapshot of instances without weight names one: %s", snap)
	}
	dst := fsm.New()
	if err := dst.Restore(nopCloser(snap)); err != nil {
		t.Fatal(err)
	}
	in, ok := dst.Instance("n1", "web-1")
	if !ok || in.EffectiveWeight() != 1 {
		t.Fatalf("instance from an old snapshot: %+v, effective weight %d", in, in.EffectiveWeight())
	}
	if !strings.Contains(string(snapshotBytes(t, dst)), `"web-1"`) {
		t.Fatal("restored snapshot lost the instance")
	}
}
