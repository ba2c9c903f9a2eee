package agent_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/miekg/dns"

	"github.com/sidecarhq/sidecar/agent"
	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/api"
)

func voters(a *agenttest.Agent) int {
	fut := a.Server().Raft().GetConfiguration()
	if fut.Error() != nil {
		return -1
	}
	n := 0
	for _, s := range fut.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			n++
		}
	}
	return n
}

func leaderOf(nodes []*agenttest.Agent) *agenttest.Agent {
	for _, n := range nodes {
		if s := n.Server(); s != nil && s.IsLeader() {
			return n
		}
	}
	return nil
}

func waitVoters(t *testing.T, nodes []*agenttest.Agent, want int) {
	t.Helper()
	agenttest.WaitFor(t, 30*time.Second, fmt.Sprintf("%d voters", want), func() bool {
		l := leaderOf(nodes)
		return l != nil && voters(l) == want
	})
}

func TestCluster_bootstrapExpect(t *testing.T) {
	for _, n := range []int{3, 5} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			nodes := agenttest.Cluster(t, n, nil)
			waitVoters(t, nodes, n)
			leader := leaderOf(nodes).Node()
			for _, a := range nodes {
				if st := a.Status(); st.Leader != leader || len(st.Peers) != n {
					t.Fatalf("%s sees leader %q and peers %v; want %q and %d peers", a.Node(), st.Leader, st.Peers, leader, n)
				}
				if got := len(a.Members()); got != n {
					t.Fatalf("%s lists %d members, want %d", a.Node(), got, n)
				}
			}
		})
	}
}

// A sixth server joins as a voter, leaves gracefully and is removed; a
// killed server is reaped once it stayed failed past ReapAfter.
func TestCluster_votersFollowMembership(t *testing.T) {
	fast := func(c *agent.Config) { c.ReapAfter = time.Second }
	nodes := agenttest.Cluster(t, 5, fast)
	waitVoters(t, nodes, 5)
	sixth := agenttest.Join(t, nodes[0], "server-5", true, fast)
	sixth.WaitReady(30 * time.Second)
	waitVoters(t, nodes, 6)

	sixth.Stop()
	waitVoters(t, nodes, 5)

	var victim *agenttest.Agent
	for _, a := range nodes {
		if !a.Server().IsLeader() {
			victim = a
			break
		}
	}
	victim.Kill()
	waitVoters(t, nodes, 4)
}

func httpDo(t *testing.T, method, url, body string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return resp.StatusCode, []byte(b.String())
}

func srvTargets(t *testing.T, dnsAddr, name string) int {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeSRV)
	in, err := dns.Exchange(m, dnsAddr)
	if err != nil {
		return -1
	}
	return len(in.Answer)
}

// Clients answer from their own copy: a registration through client A is
// resolved over DNS on client B; when A dies its instances leave B's DNS
// at once and its candidacy passes to a candidate elsewhere when its lease
// ends, with a greater token.
func TestCluster_clients(t *testing.T) {
	servers := agenttest.Cluster(t, 3, nil)
	short := func(c *agent.Config) { c.SessionTTL = 2 * time.Second }
	a := agenttest.Join(t, servers[0], "client-a", false, short)
	b := agenttest.Join(t, servers[1], "client-b", false, short)
	a.WaitReady(30 * time.Second)
	b.WaitReady(30 * time.Second)

	if code, body := httpDo(t, "PUT", a.URL+"/v1/services", `{"id":"web-1","name":"web","address":"10.0.0.7","port":8080}`); code != 200 {
		t.Fatalf("register through client A: %d %s", code, body)
	}
	agenttest.WaitFor(t, 10*time.Second, "web on client B's DNS", func() bool {
		return srvTargets(t, b.DNSAddr(), "web.service.sidecar.") == 1
	})
	// A client reports the cluster's leader.
	_, body := httpDo(t, "GET", b.URL+"/v1/status", "")
	var st api.Status
	json.Unmarshal(body, &st)
	if st.Role != "client" || st.Node != "client-b" || st.Leader == "" || len(st.Peers) != 3 {
		t.Fatalf("client status: %s", body)
	}
	// It names the server its copy streams from, and moves that stream to
	// the leader (it joined through servers[1], which may not lead).
	agenttest.WaitFor(t, 15*time.Second, "client B to stream from the leader", func() bool {
		_, body := httpDo(t, "GET", b.URL+"/v1/status", "")
		var st api.Status
		return json.Unmarshal(body, &st) == nil && st.Leader != "" && st.StreamServer == st.Leader
	})
	for _, s := range servers {
		_, body := httpDo(t, "GET", s.URL+"/v1/status", "")
		if strings.Contains(string(body), "stream_server") {
			t.Fatalf("a server reports a stream server: %s", body)
		}
	}
	// A snapshot saved on one client restores through another (forwarded
	// to the leader), and a corrupt one is refused.
	// A's own copy may not hold its registration yet (it was answered
	// once the leader committed it): ?consistent waits until it does.
	_, snap := httpDo(t, "GET", a.URL+"/v1/snapshot?consistent", "")
	// A restore installs a snapshot on every server: on a busy machine the
	// leader may lose its lease meanwhile and answer 503, outcome unknown;
	// restoring the same snapshot again is what an operator would do.
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, body := httpDo(t, "PUT", b.URL+"/v1/snapshot", string(snap))
		if code == 200 {
			break
		}
		if code != 503 || time.Now().After(deadline) {
			t.Fatalf("restore through a client: %d %s", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, _ := httpDo(t, "PUT", b.URL+"/v1/snapshot", string(snap[:len(snap)-3])); code != 400 {
		t.Fatalf("corrupt snapshot through a client: %d, want 400", code)
	}
	// A consistent read on B sees it too.
	if code, body := httpDo(t, "GET", b.URL+"/v1/services/web?consistent", ""); code != 200 || !strings.Contains(string(body), "web-1") {
		t.Fatalf("consistent read on B: %d %s", code, body)
	}

	if code, body := httpDo(t, "PUT", a.URL+"/v1/elections/db/campaign", `{"candidate":"a","value":"10.0.0.7:5432"}`); code != 200 || !strings.Contains(string(body), `"leader":true`) {
		t.Fatalf("campaign on A: %d %s", code, body)
	}
	if code, body := httpDo(t, "PUT", b.URL+"/v1/elections/db/campaign", `{"candidate":"b","value":"10.0.0.8:5432"}`); code != 200 {
		t.Fatalf("campaign on B: %d %s", code, body)
	}
	_, body = httpDo(t, "GET", b.URL+"/v1/elections/db", "")
	var before api.ElectionInfo
	json.Unmarshal(body, &before)

	a.Kill()
	agenttest.WaitFor(t, 15*time.Second, "A's instance out of B's DNS", func() bool {
		return srvTargets(t, b.DNSAddr(), "web.service.sidecar.") == 0
	})
	agenttest.WaitFor(t, 15*time.Second, "B leads db", func() bool {
		code, _ := httpDo(t, "GET", b.URL+"/v1/elections/db/self", "")
		return code == 200
	})
	_, body = httpDo(t, "GET", b.URL+"/v1/elections/db", "")
	var after api.ElectionInfo
	json.Unmarshal(body, &after)
	if after.Leader == nil || after.Leader.Candidate != "b" || before.Leader == nil || after.Leader.Token <= before.Leader.Token {
		t.Fatalf("leader before %+v, after %+v: want b with a greater token", before.Leader, after.Leader)
	}

	// Every node reports its own copy's digest: once the writes above have
	// reached all of them, the digests agree, and a write moves them all.
	digests := func() map[string]bool {
		seen := map[string]bool{}
		for _, n := range append(append([]*agenttest.Agent{}, servers...), b) {
			_, body := httpDo(t, "GET", n.URL+"/v1/status", "")
			var st api.Status
			if json.Unmarshal(body, &st) != nil || st.Digest == "" || st.RegistryIndex == 0 {
				t.Fatalf("status without digest or registry index: %s", body)
			}
			seen[st.Digest] = true
		}
		return seen
	}
	var converged string
	agenttest.WaitFor(t, 10*time.Second, "equal digests on every node", func() bool {
		d := digests()
		for k := range d {
			converged = k
		}
		return len(d) == 1
	})
	if code, body := httpDo(t, "PUT", b.URL+"/v1/services", `{"id":"api-1","name":"api","port":9090}`); code != 200 {
		t.Fatalf("register through client B: %d %s", code, body)
	}
	agenttest.WaitFor(t, 10*time.Second, "new equal digests on every node", func() bool {
		d := digests()
		return len(d) == 1 && !d[converged]
	})
}

// A snapshot saved through an agent is its own copy, like every read; with
// ?consistent it is saved only once the copy holds what the leader
// committed, so an agent cut off from every server refuses it.
func TestCluster_consistentSnapshotAsksTheLeader(t *testing.T) {
	servers := agenttest.Cluster(t, 1, nil)
	c := agenttest.Join(t, servers[0], "client-c", false, nil)
	c.WaitReady(30 * time.Second)
	if code, body := httpDo(t, "GET", c.URL+"/v1/snapshot?consistent", ""); code != 200 || !bytes.HasPrefix(body, []byte("sidecar-snapshot")) {
		t.Fatalf("consistent snapshot with a leader: %d %.200s", code, body)
	}
	servers[0].Kill()
	if code, body := httpDo(t, "GET", c.URL+"/v1/snapshot", ""); code != 200 || !bytes.HasPrefix(body, []byte("sidecar-snapshot")) {
		t.Fatalf("snapshot of the client's own copy: %d %.200s", code, body)
	}
	code, body := httpDo(t, "GET", c.URL+"/v1/snapshot?consistent", "")
	if code != 503 || !strings.Contains(string(body), `"error"`) {
		t.Fatalf("consistent snapshot without a leader: %d %.200s, want 503 with an error", code, body)
	}
}
