package fsm_test

import (
	"fmt"
	"testing"

	"github.com/sidecarhq/sidecar/fsm"
)

// BenchmarkApply_RegisterInstance registers instances with two checks each
// on one node, first new ones, then the same again (re-registrations).
func BenchmarkApply_RegisterInstance(b *testing.B) {
	h := newHarness(b, regNode("n1"))
	const n = 1024
	entries := make([][]byte, n)
	for i := range entries {
		id := fmt.Sprintf("web-%d", i)
		c := regInst("n1", id, "web", ttlCheck(id+":ttl"), fsm.Check{ID: id + ":http", Type: "http", HTTP: "http://10.0.0.1/health", Interval: sec})
		c.Instance.Tags = []string{"v1", "primary"}
		entries[i] = encode(b, c)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		h.next++
		if r := h.f.ApplyBytes(h.next, entries[i%n]); r.Err != nil {
			b.Fatal(r.Err)
		}
		i++
	}
}

// BenchmarkApply_AcquireRelease takes and gives up a lock: two entries per
// iteration.
func BenchmarkApply_AcquireRelease(b *testing.B) {
	h := newHarness(b, grant("l1"))
	acq, rel := encode(b, acquire("a", "l1", t0)), encode(b, release("a", "l1", t0))
	b.ReportAllocs()
	for b.Loop() {
		h.next++
		if r := h.f.ApplyBytes(h.next, acq); r.Err != nil || !r.Held {
			b.Fatalf("acquire: %+v", r)
		}
		h.next++
		if r := h.f.ApplyBytes(h.next, rel); r.Err != nil {
			b.Fatal(r.Err)
		}
	}
}
