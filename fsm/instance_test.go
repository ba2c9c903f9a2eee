package fsm_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/sidecarhq/sidecar/fsm"
)

func checkByID(t *testing.T, in *fsm.Instance, id string) fsm.Check {
	t.Helper()
	for _, ch := range in.Checks {
		if ch.ID == id {
			return ch
		}
	}
	t.Fatalf("instance %q has no check %q", in.ID, id)
	return fsm.Check{}
}

func instance(t *testing.T, h *harness, node, id string) *fsm.Instance {
	t.Helper()
	in, ok := h.f.Instance(node, id)
	if !ok {
		t.Fatalf("instance %q of %q unknown", id, node)
	}
	return in
}

func TestFSM_ApplyBytes_registerInstance(t *testing.T) {
	base := []fsm.Command{regNode("n1"), regNode("n2"), grant("l1")}
	with := func(cmds ...fsm.Command) []fsm.Command { return append(append([]fsm.Command{}, base...), cmds...) }
	withInst := func(mod func(in *fsm.Instance)) *fsm.RegisterInstance {
		c := regInst("n1", "web-1", "web", ttlCheck("c1"))
		mod(&c.Instance)
		return c
	}
	tooMany := func(n int, f func(i int) string) []string {
		var out []string
		for i := 0; i < n; i++ {
			out = append(out, f(i))
		}
		return out
	}
	var manyChecks []fsm.Check
	for _, id := range tooMany(fsm.MaxChecks+1, func(i int) string { return "c" + strings.Repeat("x", i) }) {
		manyChecks = append(manyChecks, ttlCheck(id))
	}

	runApplyCases(t, []applyCase{
		{
			name:  "new instance: checks start critical unless given a status",
			setup: base,
			cmd: &fsm.RegisterInstance{Instance: fsm.Instance{
				ID: "web-1", Name: "Web", Node: "n1", Address: "10.0.0.1", Port: 80,
				Tags: []string{"v1", "primary"}, Meta: map[string]string{"k": "v"},
				Checks: []fsm.Check{ttlCheck("c1"), {ID: "c2", Type: "http", HTTP: "http://x/", Status: fsm.StatusPassing}},
			}},
			tables: []fsm.Table{fsm.TableServices},
			check: func(t *testing.T, h *harness, _ *fsm.Result) {
				in := instance(t, h, "n1", "web-1")
				if in.CreateIndex != h.lastIndex() || in.ModifyIndex != h.lastIndex() {
					t.Errorf("indexes create %d modify %d, want %d", in.CreateIndex, in.ModifyIndex, h.lastIndex())
				}
				if c := checkByID(t, in, "c1"); c.Status != fsm.StatusCritical || c.ModifyIndex != h.lastIndex() {
					t.Errorf("c1 = %+v", c)
				}
				if c := checkByID(t, in, "c2"); c.Status != fsm.StatusPassing {
					t.Errorf("c2 = %+v", c)
				}
				// Service lookups ignore case.
				e := h.f.ServiceInstances("WEB")
				if len(e) != 1 || e[0].Status != fsm.StatusCritical || e[0].Instance.ID != "web-1" {
					t.Errorf("ServiceInstances(WEB) = %+v", e)
				}
				if got := h.f.Services(); !reflect.DeepEqual(got, map[string][]string{"Web": {"primary", "v1"}}) {
					t.Errorf("Services = %v", got)
				}
				if o, ok := h.f.CheckOwner("n1", "c2"); !ok || o.ID != "web-1" {
					t.Errorf("CheckOwner(c2) = %v, %v", o, ok)
				}
			},
		},
		{
			name: "re-registration keeps what checks reported",
			setup: with(
				regInst("n1", "web-1", "web", ttlCheck("c1"), fsm.Check{ID: "c2", Type: "http"}),
				&fsm.UpdateCheck{Node: "n1", CheckID: "c1", Status: fsm.StatusPassing, Output: "ok"},
				&fsm.UpdateCheck{Node: "n1", CheckID: "c2", Status: fsm.StatusWarning},
			),
			cmd: regInst("n1", "web-1", "web",
				fsm.Check{ID: "c1", Type: "ttl", TTL: 30 * sec, Status: fsm.StatusCritical},
				fsm.Check{ID: "c2", Type: "tcp", TCP: "x:1"},
				fsm.Check{ID: "c3", Type: "ttl", Status: fsm.StatusWarning},
			),
			tables: []fsm.Table{fsm.TableServices},
			check: func(t *testing.T, h *harness, _ *fsm.Result) {
				in := instance(t, h, "n1", "web-1")
				if in.CreateIndex != 4 || in.ModifyIndex != h.lastIndex() {
					t.Errorf("create %d (want 4) modify %d (want %d)", in.CreateIndex, in.ModifyIndex, h.lastIndex())
				}
				if c := checkByID(t, in, "c1"); c.Status != fsm.StatusPassing || c.Output != "ok" || c.TTL != 30*sec {
					t.Errorf("same check kept its definition change but lost status: %+v", c)
				}
				if c := checkByID(t, in, "c2"); c.Status != fsm.StatusCritical {
					t.Errorf("check that changed type kept status: %+v", c)
				}
				if c := checkByID(t, in, "c3"); c.Status != fsm.StatusWarning {
					t.Errorf("new check status = %+v", c)
				}
			},
		},
		{
			name:   "re-registration under another service name moves the instance",
			setup:  with(regInst("n1", "web-1", "web")),
			cmd:    regInst("n1", "web-1", "api"),
			tables: []fsm.Table{fsm.TableServices},
			check: func(t *testing.T, h *harness, _ *fsm.Result) {
				if got := h.f.ServiceInstances("web"); len(got) != 0 {
					t.Errorf("web still has %d instances", len(got))
				}
				if h.f.VisitService("web", func(*fsm.Instance, string) {}) {
					t.Error("VisitService(web) reports the service known")
				}
				if got := h.f.ServiceInstances("api"); len(got) != 1 {
					t.Errorf("api has %d instances", len(got))
				}
			},
		},
		{
			name:   "re-registration without a check frees its id",
			setup:  with(regInst("n1", "web-1", "web", ttlCheck("c1")), regInst("n1", "web-1", "web")),
			cmd:    regInst("n1", "web-2", "web", ttlCheck("c1")),
			tables: []fsm.Table{fsm.TableServices},
		},
		{
			name:   "same check id on another node",
			setup:  with(regInst("n1", "web-1", "web", ttlCheck("c1"))),
			cmd:    regInst("n2", "web-2", "web", ttlCheck("c1")),
			tables: []fsm.Table{fsm.TableServices},
		},
		{
			name:   "attached to a lease",
			setup:  base,
			cmd:    withInst(func(in *fsm.Instance) { in.Lease = "l1" }),
			tables: []fsm.Table{fsm.TableServices},
		},
		{
			name:  "check id of another instance of the node",
			setup: with(regInst("n1", "web-1", "web", ttlCheck("c1"))),
			cmd:   regInst("n1", "web-2", "web", ttlCheck("c0"), ttlCheck("c1")),
			err:   fsm.ErrCheckConflict,
		},
		{
			name:  "conflicting re-registration keeps the old instance",
			setup: with(regInst("n1", "web-1", "web", ttlCheck("c1")), regInst("n1", "web-2", "web", ttlCheck("c2"))),
			cmd:   regInst("n1", "web-2", "api", ttlCheck("c1")),
			err:   fsm.ErrCheckConflict,
		},
		{name: "unknown node", setup: base, cmd: regInst("n3", "web-1", "web"), err: fsm.ErrUnknownNode},
		{name: "unknown lease", setup: base, cmd: withInst(func(in *fsm.Instance) { in.Lease = "l9" }), err: fsm.ErrUnknownLease},
		{name: "bad instance id", setup: base, cmd: withInst(func(in *fsm.Instance) { in.ID = "web 1" }), err: fsm.ErrInvalid},
		{name: "instance id too long", setup: base, cmd: withInst(func(in *fsm.Instance) { in.ID = strings.Repeat("i", fsm.MaxIDLen+1) }), err: fsm.ErrInvalid},
		{name: "bad service name", setup: base, cmd: withInst(func(in *fsm.Instance) { in.Name = "web.api" }), err: fsm.ErrInvalid},
		{name: "bad node name", setup: base, cmd: withInst(func(in *fsm.Instance) { in.Node = "" }), err: fsm.ErrInvalid},
		{name: "address too long", setup: base, cmd: withInst(func(in *fsm.Instance) { in.Address = strings.Repeat("a", 256) }), err: fsm.ErrInvalid},
		{name: "port too high", setup: base, cmd: withInst(func(in *fsm.Instance) { in.Port = 65536 }), err: fsm.ErrInvalid},
		{name: "negative port", setup: base, cmd: withInst(func(in *fsm.Instance) { in.Port = -1 }), err: fsm.ErrInvalid},
		{name: "too many tags", setup: base, cmd: withInst(func(in *fsm.Instance) { in.Tags = tooMany(fsm.MaxTags+1, func(int) string { return "t" }) }), err: fsm.ErrInvalid},
		{name: "empty tag", setup: base, cmd: withInst(func(in *fsm.Instance) { in.Tags = []string{""} }), err: fsm.ErrInvalid},
		{name: "empty meta key", setup: base, cmd: withInst(func(in *fsm.Instance) { in.Meta = map[string]string{"": "v"} }), err: fsm.ErrInvalid},
		{name: "bad lease id", setup: base, cmd: withInst(func(in *fsm.Instance) { in.Lease = "l 1" }), err: fsm.ErrInvalid},
		{name: "too many checks", setup: base, cmd: withInst(func(in *fsm.Instance) { in.Checks = manyChecks }), err: fsm.ErrInvalid},
		{name: "check id twice", setup: base, cmd: withInst(func(in *fsm.Instance) { in.Checks = append(in.Checks, ttlCheck("c1")) }), err: fsm.ErrInvalid},
		{name: "bad check id", setup: base, cmd: withInst(func(in *fsm.Instance) { in.Checks[0].ID = "" }), err: fsm.ErrInvalid},
		{name: "bad check type", setup: base, cmd: withInst(func(in *fsm.Instance) { in.Checks[0].Type = "grpc" }), err: fsm.ErrInvalid},
		{name: "bad check status", setup: base, cmd: withInst(func(in *fsm.Instance) { in.Checks[0].Status = "ok" }), err: fsm.ErrInvalid},
		{name: "check output too long", setup: base, cmd: withInst(func(in *fsm.Instance) { in.Checks[0].Output = strings.Repeat("o", fsm.MaxOutputLen+1) }), err: fsm.ErrInvalid},
		{name: "negative interval", setup: base, cmd: withInst(func(in *fsm.Instance) { in.Checks[0].Interval = -1 }), err: fsm.ErrInvalid},
		{name: "negative threshold", setup: base, cmd: withInst(func(in *fsm.Instance) { in.Checks[0].FailuresBeforeCritical = -1 }), err: fsm.ErrInvalid},
	})
}

func TestFSM_ApplyBytes_deregisterInstance(t *testing.T) {
	setup := []fsm.Command{
		regNode("n1"), regNode("n2"),
		regInst("n1", "web-1", "web", ttlCheck("c1")),
		regInst("n2", "web-1", "web"),
	}
	runApplyCases(t, []applyCase{
		{
			name:   "removes the instance of that node only",
			setup:  setup,
			cmd:    &fsm.DeregisterInstance{Node: "n1", ID: "web-1"},
			tables: []fsm.Table{fsm.TableServices},
			check: func(t *testing.T, h *harness, _ *fsm.Result) {
				if _, ok := h.f.Instance("n1", "web-1"); ok {
					t.Error("instance still registered")
				}
				if _, ok := h.f.CheckOwner("n1", "c1"); ok {
					t.Error("its check is still owned")
				}
				if e := h.f.ServiceInstances("web"); len(e) != 1 || e[0].Instance.Node != "n2" {
					t.Errorf("web instances = %+v", e)
				}
			},
		},
		{
			name:   "last instance takes the service out of the catalog",
			setup:  append(append([]fsm.Command{}, setup...), &fsm.DeregisterInstance{Node: "n2", ID: "web-1"}),
			cmd:    &fsm.DeregisterInstance{Node: "n1", ID: "web-1"},
			tables: []fsm.Table{fsm.TableServices},
			check: func(t *testing.T, h *harness, _ *fsm.Result) {
				if s := h.f.Services(); len(s) != 0 {
					t.Errorf("Services = %v", s)
				}
			},
		},
		{name: "unknown id", setup: setup, cmd: &fsm.DeregisterInstance{Node: "n1", ID: "web-2"}, err: fsm.ErrUnknownInstance},
		{name: "instance of another node", setup: setup[:3], cmd: &fsm.DeregisterInstance{Node: "n2", ID: "web-1"}, err: fsm.ErrUnknownInstance},
		{name: "bad node", setup: setup, cmd: &fsm.DeregisterInstance{Node: "n_1", ID: "web-1"}, err: fsm.ErrInvalid},
		{name: "bad id", setup: setup, cmd: &fsm.DeregisterInstance{Node: "n1", ID: ""}, err: fsm.ErrInvalid},
	})
}

func TestFSM_ApplyBytes_updateCheck(t *testing.T) {
	setup := []fsm.Command{
		regNode("n1"), regNode("n2"),
		regInst("n1", "web-1", "web", ttlCheck("c1"), ttlCheck("c2")),
		&fsm.UpdateCheck{Node: "n1", CheckID: "c2", Status: fsm.StatusPassing},
	}
	runApplyCases(t, []applyCase{
		{
			name:   "status change",
			setup:  setup,
			cmd:    &fsm.UpdateCheck{Node: "n1", CheckID: "c1", Status: fsm.StatusWarning, Output: "slow"},
			tables: []fsm.Table{fsm.TableServices},
			check: func(t *testing.T, h *harness, _ *fsm.Result) {
				in := instance(t, h, "n1", "web-1")
				c := checkByID(t, in, "c1")
				if c.Status != fsm.StatusWarning || c.Output != "slow" || c.ModifyIndex != h.lastIndex() || in.ModifyIndex != h.lastIndex() {
					t.Errorf("check %+v, instance modify %d", c, in.ModifyIndex)
				}
				if e := h.f.ServiceInstances("web"); e[0].Status != fsm.StatusWarning {
					t.Errorf("instance status %s, want warning", e[0].Status)
				}
			},
		},
		{
			name:   "output change alone",
			setup:  setup,
			cmd:    &fsm.UpdateCheck{Node: "n1", CheckID: "c2", Status: fsm.StatusPassing, Output: "200 OK"},
			tables: []fsm.Table{fsm.TableServices},
		},
		{name: "same status and output is a no-op", setup: setup, cmd: &fsm.UpdateCheck{Node: "n1", CheckID: "c2", Status: fsm.StatusPassing}, noop: true},
		{name: "unknown check", setup: setup, cmd: &fsm.UpdateCheck{Node: "n1", CheckID: "c3", Status: fsm.StatusPassing}, err: fsm.ErrUnknownCheck},
		{name: "check of another node", setup: setup, cmd: &fsm.UpdateCheck{Node: "n2", CheckID: "c1", Status: fsm.StatusPassing}, err: fsm.ErrUnknownCheck},
		{name: "bad status", setup: setup, cmd: &fsm.UpdateCheck{Node: "n1", CheckID: "c1", Status: "up"}, err: fsm.ErrInvalid},
		{name: "output too long", setup: setup, cmd: &fsm.UpdateCheck{Node: "n1", CheckID: "c1", Status: fsm.StatusPassing, Output: strings.Repeat("o", fsm.MaxOutputLen+1)}, err: fsm.ErrInvalid},
		{name: "bad node", setup: setup, cmd: &fsm.UpdateCheck{Node: "", CheckID: "c1", Status: fsm.StatusPassing}, err: fsm.ErrInvalid},
		{name: "bad check id", setup: setup, cmd: &fsm.UpdateCheck{Node: "n1", CheckID: "c/1", Status: fsm.StatusPassing}, err: fsm.ErrInvalid},
	})
}

func TestInstanceStatus(t *testing.T) {
	alive := &fsm.Node{Name: "n1", Status: fsm.NodeAlive}
	withChecks := func(statuses ...string) *fsm.Instance {
		in := &fsm.Instance{ID: "i"}
		for _, s := range statuses {
			in.Checks = append(in.Checks, fsm.Check{Status: s})
		}
		return in
	}
	for _, tc := range []struct {
		name string
		in   *fsm.Instance
		node *fsm.Node
		want string
	}{
		{"no checks", withChecks(), alive, fsm.StatusPassing},
		{"all passing", withChecks(fsm.StatusPassing, fsm.StatusPassing), alive, fsm.StatusPassing},
		{"worst is warning", withChecks(fsm.StatusPassing, fsm.StatusWarning), alive, fsm.StatusWarning},
		{"worst is critical", withChecks(fsm.StatusWarning, fsm.StatusCritical, fsm.StatusPassing), alive, fsm.StatusCritical},
		{"unknown status counts as critical", withChecks(""), alive, fsm.StatusCritical},
		{"failed node", withChecks(fsm.StatusPassing), &fsm.Node{Status: fsm.NodeFailed}, fsm.StatusCritical},
		{"left node", withChecks(), &fsm.Node{Status: fsm.NodeLeft}, fsm.StatusCritical},
		{"node unknown", withChecks(fsm.StatusPassing), nil, fsm.StatusPassing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := fsm.InstanceStatus(tc.in, tc.node); got != tc.want {
				t.Errorf("InstanceStatus = %s, want %s", got, tc.want)
			}
		})
	}
}
