package fsm_test

import (
	"strings"
	"testing"

	"github.com/sidecarhq/sidecar/fsm"
)

func TestFSM_ApplyBytes_registerNode(t *testing.T) {
	manyMeta := map[string]string{}
	for i := 0; i <= fsm.MaxMeta; i++ {
		manyMeta[strings.Repeat("k", i+1)] = "v"
	}
	runApplyCases(t, []applyCase{
		{
			name:   "new node is alive",
			cmd:    &fsm.RegisterNode{Name: "n1", Address: "10.0.0.7", Meta: map[string]string{"zone": "a"}},
			tables: []fsm.Table{fsm.TableNodes, fsm.TableServices},
			check: func(t *testing.T, h *harness, _ *fsm.Result) {
				n, ok := h.f.Node("n1")
				if !ok {
					t.Fatal("node n1 not registered")
				}
				if n.Address != "10.0.0.7" || n.Status != fsm.NodeAlive || n.Meta["zone"] != "a" || n.ModifyIndex != h.lastIndex() {
					t.Errorf("node = %+v", n)
				}
			},
		},
		{
			name:   "re-registration updates and revives",
			setup:  []fsm.Command{regNode("n1"), &fsm.SetNodeStatus{Name: "n1", Status: fsm.NodeFailed}},
			cmd:    &fsm.RegisterNode{Name: "n1", Address: "10.0.0.9"},
			tables: []fsm.Table{fsm.TableNodes, fsm.TableServices},
			check: func(t *testing.T, h *harness, _ *fsm.Result) {
				n, _ := h.f.Node("n1")
				if n.Address != "10.0.0.9" || n.Status != fsm.NodeAlive || len(h.f.Nodes()) != 1 {
					t.Errorf("node = %+v, nodes %d", n, len(h.f.Nodes()))
				}
			},
		},
		{name: "name not a DNS label", cmd: &fsm.RegisterNode{Name: "n_1"}, err: fsm.ErrInvalid},
		{name: "empty name", cmd: &fsm.RegisterNode{}, err: fsm.ErrInvalid},
		{name: "leading hyphen", cmd: &fsm.RegisterNode{Name: "-n1"}, err: fsm.ErrInvalid},
		{name: "name too long", cmd: &fsm.RegisterNode{Name: strings.Repeat("a", 64)}, err: fsm.ErrInvalid},
		{name: "address too long", cmd: &fsm.RegisterNode{Name: "n1", Address: strings.Repeat("a", 256)}, err: fsm.ErrInvalid},
		{name: "too many meta keys", cmd: &fsm.RegisterNode{Name: "n1", Meta: manyMeta}, err: fsm.ErrInvalid},
		{name: "empty meta key", cmd: &fsm.RegisterNode{Name: "n1", Meta: map[string]string{"": "v"}}, err: fsm.ErrInvalid},
		{name: "meta value too long", cmd: &fsm.RegisterNode{Name: "n1", Meta: map[string]string{"k": strings.Repeat("v", fsm.MaxTextLen+1)}}, err: fsm.ErrInvalid},
		{
			name:  "invalid update leaves the node as it was",
			setup: []fsm.Command{regNode("n1")},
			cmd:   &fsm.RegisterNode{Name: "n1", Address: strings.Repeat("a", 256)},
			err:   fsm.ErrInvalid,
		},
	})
}

func TestFSM_ApplyBytes_deregisterNode(t *testing.T) {
	setup := []fsm.Command{
		regNode("n1"), regNode("n2"),
		regInst("n1", "web-1", "web", ttlCheck("c1")),
		regInst("n1", "db-1", "db"),
		regInst("n2", "web-2", "web", ttlCheck("c1")),
	}
	runApplyCases(t, []applyCase{
		{
			name:   "removes the node and only its instances",
			setup:  setup,
			cmd:    &fsm.DeregisterNode{Name: "n1"},
			tables: []fsm.Table{fsm.TableNodes, fsm.TableServices},
			check: func(t *testing.T, h *harness, _ *fsm.Result) {
				if _, ok := h.f.Node("n1"); ok {
					t.Error("n1 still registered")
				}
				if got := h.f.NodeInstances("n1"); len(got) != 0 {
					t.Errorf("n1 still owns %d instances", len(got))
				}
				if _, ok := h.f.CheckOwner("n1", "c1"); ok {
					t.Error("check c1 of n1 still owned")
				}
				if _, ok := h.f.Services()["db"]; ok {
					t.Error("service db still listed")
				}
				web := h.f.ServiceInstances("web")
				if len(web) != 1 || web[0].Instance.ID != "web-2" {
					t.Errorf("web instances = %+v, want web-2 only", web)
				}
			},
		},
		{
			name:   "node name can come back with fresh check ids",
			setup:  append(append([]fsm.Command{}, setup...), &fsm.DeregisterNode{Name: "n1"}, regNode("n1")),
			cmd:    regInst("n1", "other", "web", ttlCheck("c1")),
			tables: []fsm.Table{fsm.TableServices},
		},
		{name: "unknown node", setup: setup, cmd: &fsm.DeregisterNode{Name: "n3"}, err: fsm.ErrUnknownNode},
		{name: "invalid name", setup: setup, cmd: &fsm.DeregisterNode{Name: "n 1"}, err: fsm.ErrInvalid},
	})
}

func TestFSM_ApplyBytes_setNodeStatus(t *testing.T) {
	setup := []fsm.Command{regNode("n1"), regInst("n1", "web-1", "web")}
	statusOf := func(t *testing.T, h *harness) (node, instance string) {
		t.Helper()
		n, _ := h.f.Node("n1")
		e := h.f.ServiceInstances("web")
		if len(e) != 1 {
			t.Fatalf("web instances = %d", len(e))
		}
		return n.Status, e[0].Status
	}
	runApplyCases(t, []applyCase{
		{
			name:   "failed node makes its instances critical",
			setup:  setup,
			cmd:    &fsm.SetNodeStatus{Name: "n1", Status: fsm.NodeFailed},
			tables: []fsm.Table{fsm.TableNodes, fsm.TableServices},
			check: func(t *testing.T, h *harness, _ *fsm.Result) {
				if n, in := statusOf(t, h); n != fsm.NodeFailed || in != fsm.StatusCritical {
					t.Errorf("node %s, instance %s", n, in)
				}
			},
		},
		{
			name:   "left node",
			setup:  setup,
			cmd:    &fsm.SetNodeStatus{Name: "n1", Status: fsm.NodeLeft},
			tables: []fsm.Table{fsm.TableNodes, fsm.TableServices},
			check: func(t *testing.T, h *harness, _ *fsm.Result) {
				if n, in := statusOf(t, h); n != fsm.NodeLeft || in != fsm.StatusCritical {
					t.Errorf("node %s, instance %s", n, in)
				}
			},
		},
		{
			name:   "alive again restores instance health",
			setup:  append(append([]fsm.Command{}, setup...), &fsm.SetNodeStatus{Name: "n1", Status: fsm.NodeFailed}),
			cmd:    &fsm.SetNodeStatus{Name: "n1", Status: fsm.NodeAlive},
			tables: []fsm.Table{fsm.TableNodes, fsm.TableServices},
			check: func(t *testing.T, h *harness, _ *fsm.Result) {
				if n, in := statusOf(t, h); n != fsm.NodeAlive || in != fsm.StatusPassing {
					t.Errorf("node %s, instance %s", n, in)
				}
			},
		},
		{name: "same status is a no-op", setup: setup, cmd: &fsm.SetNodeStatus{Name: "n1", Status: fsm.NodeAlive}, noop: true},
		{name: "unknown node", setup: setup, cmd: &fsm.SetNodeStatus{Name: "n2", Status: fsm.NodeFailed}, err: fsm.ErrUnknownNode},
		{name: "unknown status", setup: setup, cmd: &fsm.SetNodeStatus{Name: "n1", Status: "dead"}, err: fsm.ErrInvalid},
		{name: "invalid name", setup: setup, cmd: &fsm.SetNodeStatus{Name: "", Status: fsm.NodeFailed}, err: fsm.ErrInvalid},
	})
}
