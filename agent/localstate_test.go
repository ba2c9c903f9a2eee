package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"reflect"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/agent"
	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/fsm"
)

func client(t *testing.T, a *agenttest.Agent) *api.Client {
	t.Helper()
	c, err := api.NewClient(a.URL)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// register registers through a's API, again while the answer is 503 (an
// election on a busy machine): a registration is an upsert, as an app
// retrying it knows.
func register(t *testing.T, a *agenttest.Agent, reg api.ServiceRegistration) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := client(t, a).Register(context.Background(), reg)
		var se *api.StatusError
		if err == nil {
			return
		}
		if !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable || time.Now().After(deadline) {
			t.Fatalf("register %s through %s: %v", reg.ID, a.Node(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// instances lists what a node's HTTP API holds of a service, by id.
func instances(t *testing.T, a *agenttest.Agent, service string) map[string]api.Instance {
	t.Helper()
	list, _, err := client(t, a).Service(context.Background(), service, false, "", nil)
	if err != nil {
		return nil
	}
	out := map[string]api.Instance{}
	for _, in := range list {
		out[in.ID] = in
	}
	return out
}

// sameInstances reports whether got holds exactly the ids of want with the
// same node, address, port, tags and meta.
func sameInstances(got, want map[string]api.Instance) bool {
	if len(got) != len(want) {
		return false
	}
	for id, w := range want {
		g, ok := got[id]
		if !ok || g.Node != w.Node || g.Address != w.Address || g.Port != w.Port || g.Weight != w.Weight ||
			!reflect.DeepEqual(g.Tags, w.Tags) || !reflect.DeepEqual(g.Meta, w.Meta) {
			return false
		}
	}
	return true
}

// freeAddrs returns n loopback addresses whose port is free for TCP and
// UDP now, so that a restarted agent listens where it did before (its Raft
// address is in the configuration). They are taken below Linux's ephemeral
// range (32768 and up): between a stop and the restart, a port of that
// range may be handed to any outgoing connection or ":0" listener of the
// tests running beside (an "address already in use" once in CI).
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	for tries := 0; len(out) < n; tries++ {
		if tries == 1000 {
			t.Fatalf("no free port found in 1000 tries")
		}
		addr := fmt.Sprintf("127.0.0.1:%d", 20000+rand.IntN(12000))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		defer l.Close()
		u, err := net.ListenPacket("udp", addr)
		if err != nil {
			continue
		}
		defer u.Close()
		out = append(out, addr)
	}
	return out
}

// A client restarted on its data dir registers again, without the app's
// help, what was registered through it (and not what was deregistered),
// and campaigns again for its candidacies on the node session; the
// instances are back in every node's HTTP and DNS within 5 s of the
// restart.
func TestLocalState_clientRestartBringsRegistrationsBack(t *testing.T) {
	servers := agenttest.Cluster(t, 3, nil)
	dir := t.TempDir()
	withDir := func(c *agent.Config) { c.DataDir = dir }
	a := agenttest.Join(t, servers[0], "client-a", false, withDir)
	b := agenttest.Join(t, servers[1], "client-b", false, nil)
	a.WaitReady(30 * time.Second)
	b.WaitReady(30 * time.Second)

	register(t, a, api.ServiceRegistration{ID: "web-1", Name: "web", Address: "10.0.0.1", Port: 8080, Weight: 5, Tags: []string{"v1", "blue"}, Meta: map[string]string{"zone": "a"}})
	register(t, a, api.ServiceRegistration{ID: "web-2", Name: "web", Address: "10.0.0.2", Port: 8081})
	register(t, a, api.ServiceRegistration{ID: "api-1", Name: "api", Port: 9090})
	register(t, a, api.ServiceRegistration{ID: "api-2", Name: "api", Port: 9091,
		Checks: []api.CheckDefinition{{ID: "api-2:ttl", Type: "ttl", TTL: "30s"}}})
	if err := client(t, a).Deregister(context.Background(), "api-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := client(t, a).Campaign(context.Background(), "db", api.CampaignRequest{Candidate: "a", Value: "10.0.0.1:5432"}); err != nil {
		t.Fatal(err)
	}
	agenttest.WaitFor(t, 10*time.Second, "web on b", func() bool { return len(instances(t, b, "web")) == 2 })
	want := instances(t, b, "web")

	a.Stop()
	agenttest.WaitFor(t, 15*time.Second, "a's instances gone after its graceful stop", func() bool {
		return len(instances(t, b, "web")) == 0 && srvTargets(t, b.DNSAddr(), "web.service.sidecar.") == 0
	})
	info, _, err := client(t, b).Election(context.Background(), "db", nil)
	if err != nil || info.Leader != nil {
		t.Fatalf("db after a's stop: %+v %v; want vacant (a resigned)", info, err)
	}

	restarted := time.Now()
	a = agenttest.Join(t, servers[2], "client-a", false, withDir)
	every := append(append([]*agenttest.Agent{}, servers...), a, b)
	agenttest.WaitFor(t, 5*time.Second, "web back, unchanged, in every node's HTTP and DNS", func() bool {
		for _, n := range every {
			if !sameInstances(instances(t, n, "web"), want) || srvTargets(t, n.DNSAddr(), "web.service.sidecar.") != 2 {
				return false
			}
		}
		return true
	})
	t.Logf("instances back on every node %v after the restart began", time.Since(restarted).Round(time.Millisecond))
	got := instances(t, b, "api")
	if _, ok := got["api-1"]; ok || len(got) != 1 {
		t.Fatalf("api after restart: %v; want api-2 only (api-1 was deregistered)", got)
	}
	// Its TTL check runs again from the local state.
	if err := client(t, a).UpdateCheck(context.Background(), "api-2:ttl", "pass", ""); err != nil {
		t.Fatalf("pass api-2's TTL check after the restart: %v", err)
	}
	agenttest.WaitFor(t, 10*time.Second, "a leads db again", func() bool {
		info, _, err := client(t, b).Election(context.Background(), "db", nil)
		return err == nil && info.Leader != nil && info.Leader.Candidate == "a"
	})
}

// Three servers stopped with SIGTERM one after the other and started again
// on their data dirs keep every instance of every node, whichever order
// they stopped in.
func TestLocalState_clusterStopAndStartKeepsEveryInstance(t *testing.T) {
	const n = 3
	type addrs struct{ gossip, raft string }
	var fixed []addrs
	for i := 0; i < n; i++ {
		a := freeAddrs(t, 2)
		fixed = append(fixed, addrs{a[0], a[1]})
	}
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	start := func() []*agenttest.Agent {
		var nodes []*agenttest.Agent
		for i := 0; i < n; i++ {
			cfg := agenttest.Config(fmt.Sprintf("server-%d", i))
			cfg.Server, cfg.BootstrapExpect, cfg.DataDir = true, n, dirs[i]
			cfg.BindAddr, cfg.RaftAddr = fixed[i].gossip, fixed[i].raft
			for j := 0; j < n; j++ {
				if j != i {
					cfg.Join = append(cfg.Join, fixed[j].gossip)
				}
			}
			nodes = append(nodes, agenttest.Run(t, cfg))
		}
		for _, a := range nodes {
			a.WaitReady(60 * time.Second)
		}
		return nodes
	}
	nodes := start()
	want := map[string]bool{}
	for i, a := range nodes {
		id := fmt.Sprintf("svc-%d", i)
		register(t, a, api.ServiceRegistration{ID: id, Name: "svc", Port: 1000 + i})
		want[a.Node()+"/"+id] = true
	}
	for _, a := range nodes {
		a.Stop()
	}
	nodes = start()
	agenttest.WaitFor(t, 15*time.Second, "every instance of every node on every server", func() bool {
		for _, a := range nodes {
			got := map[string]bool{}
			for _, in := range instances(t, a, "svc") {
				got[in.Node+"/"+in.ID] = true
			}
			if !reflect.DeepEqual(got, want) {
				return false
			}
		}
		return true
	})
}

// A restore of a snapshot older than a registration loses it from the
// registry; the owning agent registers it again.
func TestLocalState_restoreOlderSnapshot_instanceComesBack(t *testing.T) {
	a := agenttest.Start(t, nil)
	c := client(t, a)
	ctx := context.Background()
	var snap bytes.Buffer
	if err := c.SnapshotSave(ctx, &snap); err != nil {
		t.Fatal(err)
	}
	register(t, a, api.ServiceRegistration{ID: "web-1", Name: "web", Port: 8080, Tags: []string{"late"}})
	lease, err := c.GrantLease(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SnapshotRestore(ctx, &snap); err != nil {
		t.Fatal(err)
	}
	if _, ok := a.FSM().Lease(lease.ID); ok {
		t.Fatalf("lease %s made after the snapshot survived its restore", lease.ID)
	}
	agenttest.WaitFor(t, 15*time.Second, "web-1 registered again", func() bool {
		in, ok := a.FSM().Instance("dev", "web-1")
		return ok && in.Port == 8080 && len(in.Tags) == 1 && in.Tags[0] == "late"
	})
}

// A node deregistered behind its agent's back comes back with its
// instances; an instance registered on the node by someone else is removed;
// a changed one is put back as the agent registered it.
func TestLocalState_registryPutRight(t *testing.T) {
	a := agenttest.Start(t, func(c *agent.Config) { c.AntiEntropyInterval = 100 * time.Millisecond })
	ctx := context.Background()
	register(t, a, api.ServiceRegistration{ID: "web-1", Name: "web", Port: 8080})
	if _, err := a.Apply(ctx, &fsm.DeregisterNode{Name: "dev"}); err != nil {
		t.Fatal(err)
	}
	agenttest.WaitFor(t, 15*time.Second, "node and web-1 back", func() bool {
		_, node := a.FSM().Node("dev")
		_, in := a.FSM().Instance("dev", "web-1")
		return node && in
	})
	if _, err := a.Apply(ctx, &fsm.RegisterInstance{Instance: fsm.Instance{ID: "intruder", Name: "web", Node: "dev", Port: 1}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Apply(ctx, &fsm.RegisterInstance{Instance: fsm.Instance{ID: "web-1", Name: "web", Node: "dev", Port: 9999}}); err != nil {
		t.Fatal(err)
	}
	agenttest.WaitFor(t, 15*time.Second, "intruder removed and web-1 corrected", func() bool {
		_, intruder := a.FSM().Instance("dev", "intruder")
		in, ok := a.FSM().Instance("dev", "web-1")
		return !intruder && ok && in.Port == 8080
	})
	// Once equal, comparisons write nothing.
	idx := a.FSM().Index()
	writes := func() float64 { return counterSum(t, a, "sidecar_anti_entropy_writes_total") }
	before, syncs := writes(), counterSum(t, a, "sidecar_anti_entropy_syncs_total")
	agenttest.WaitFor(t, 10*time.Second, "three more comparisons", func() bool {
		return counterSum(t, a, "sidecar_anti_entropy_syncs_total") >= syncs+3
	})
	if a.FSM().Index() != idx || writes() != before {
		t.Fatalf("anti-entropy wrote with nothing to fix: index %d -> %d, writes %v -> %v", idx, a.FSM().Index(), before, writes())
	}
}

// An app's lock on a lease of its own survives its sidecar's graceful stop
// with the same token; a lock on the node session does not.
func TestLocalState_appLeaseLockSurvivesSidecarStop(t *testing.T) {
	servers := agenttest.Cluster(t, 3, nil)
	dir := t.TempDir()
	c := agenttest.Join(t, servers[0], "client-c", false, func(cfg *agent.Config) { cfg.DataDir = dir })
	c.WaitReady(30 * time.Second)
	ctx := context.Background()
	cc := client(t, c)
	lease, err := cc.GrantLease(ctx, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	own, err := cc.Lock(ctx, "x", api.LockRequest{Lease: lease.ID})
	if err != nil || !own.Held {
		t.Fatalf("lock x on the app's lease: %+v %v", own, err)
	}
	onNode, err := cc.Lock(ctx, "y", api.LockRequest{})
	if err != nil || !onNode.Held {
		t.Fatalf("lock y on the node session: %+v %v", onNode, err)
	}
	c.Stop()
	sc := client(t, servers[1])
	x, _, err := sc.LockInfo(ctx, "x", nil)
	if err != nil || x.Lease != lease.ID || x.Token != own.Token {
		t.Fatalf("lock x after the sidecar stopped: %+v %v; want held on %s with token %d", x, err, lease.ID, own.Token)
	}
	y, _, err := sc.LockInfo(ctx, "y", nil)
	if err != nil || y != nil {
		t.Fatalf("lock y after the sidecar stopped: %+v %v; want released", y, err)
	}
	if _, err := sc.KeepAlive(ctx, lease.ID); err != nil {
		t.Fatalf("the app's lease after its sidecar stopped: %v", err)
	}
	c = agenttest.Join(t, servers[0], "client-c", false, func(cfg *agent.Config) { cfg.DataDir = dir })
	c.WaitReady(30 * time.Second)
	x, _, err = client(t, c).LockInfo(ctx, "x", nil)
	if err != nil || x.Lease != lease.ID || x.Token != own.Token {
		t.Fatalf("lock x after the sidecar restarted: %+v %v; want token %d", x, err, own.Token)
	}
}

// Revoking the node session through the API is followed by a new one, and
// lease-less locks keep working.
func TestLocalState_revokedNodeSessionReplaced(t *testing.T) {
	a := agenttest.Start(t, nil)
	ctx := context.Background()
	old := a.Local().NodeSession().ID()
	if err := client(t, a).RevokeLease(ctx, old); err != nil {
		t.Fatal(err)
	}
	agenttest.WaitFor(t, 10*time.Second, "a new node session", func() bool {
		s := a.Local().NodeSession()
		return s != nil && s.ID() != old && s.Live()
	})
	res, err := client(t, a).Lock(ctx, "after", api.LockRequest{})
	if err != nil || !res.Held {
		t.Fatalf("lease-less lock after the node session was revoked: %+v %v", res, err)
	}
}

func counterSum(t *testing.T, a *agenttest.Agent, name string) float64 {
	t.Helper()
	families, err := a.Metrics().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// The owner is a client: a restore on the servers of a snapshot older than
// its registration removes it everywhere, and the client registers it again
// from its local state.
func TestLocalState_restoreOlderSnapshot_clientPutsItBack(t *testing.T) {
	servers := agenttest.Cluster(t, 1, nil)
	cl := agenttest.Join(t, servers[0], "client-a", false, func(c *agent.Config) { c.DataDir = t.TempDir() })
	cl.WaitReady(30 * time.Second)
	ctx := context.Background()
	sc := client(t, servers[0])
	var snap bytes.Buffer
	if err := sc.SnapshotSave(ctx, &snap); err != nil {
		t.Fatal(err)
	}
	register(t, cl, api.ServiceRegistration{ID: "web-1", Name: "web", Port: 8080})
	lease, err := sc.GrantLease(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.SnapshotRestore(ctx, &snap); err != nil {
		t.Fatal(err)
	}
	if _, ok := servers[0].FSM().Lease(lease.ID); ok {
		t.Fatalf("lease %s made after the snapshot survived its restore", lease.ID)
	}
	agenttest.WaitFor(t, 15*time.Second, "web-1 back on the server", func() bool {
		_, ok := servers[0].FSM().Instance("client-a", "web-1")
		return ok
	})
}
