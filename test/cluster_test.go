package test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sidecarhq/sidecar/api"
)

// node is one sidecar process on loopback.
type node struct {
	name, url, dns, gossip, raft string
	p                            *proc
}

// startNode starts `sidecar agent` with every listener on a free loopback
// port; servers > 0 makes it a server expecting that many. A port picked
// free can be taken by a parallel test before the agent binds it: an agent
// that dies of that is started again on other ports.
func startNode(t testing.TB, name string, expect int, join string, extra ...string) *node {
	t.Helper()
	for attempt := 1; ; attempt++ {
		n := &node{name: name, gossip: freeAddr(t), dns: freeAddr(t)}
		httpAddr := freeAddr(t)
		n.url = "http://" + httpAddr
		args := []string{"agent", "--name", name, "--bind-addr", n.gossip, "--advertise-addr", "127.0.0.1",
			"--http-addr", httpAddr, "--dns-addr", n.dns, "--log-level", "warn"}
		if !slices.Contains(extra, "--data-dir") {
			args = append(args, "--data-dir", t.TempDir())
		}
		if expect > 0 {
			n.raft = freeAddr(t)
			args = append(args, "--server", "--bootstrap-expect", fmt.Sprint(expect), "--raft-addr", n.raft)
		}
		if join != "" {
			args = append(args, "--join", join)
		}
		n.p = start(t, append(args, extra...)...)
		// Listeners bind within the first moments of the process.
		select {
		case <-n.p.done:
			if attempt < 3 && strings.Contains(n.p.output.String(), "address already in use") {
				continue
			}
			t.Fatalf("agent %s exited at start: %s", name, n.p.output.String())
		case <-time.After(500 * time.Millisecond):
		}
		return n
	}
}

func (n *node) ready() bool {
	resp, err := http.Get(n.url + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// processCluster starts 3 servers and the named clients, all ready.
func processCluster(t testing.TB, clients ...string) (servers []*node, cl []*node) {
	t.Helper()
	var seed string
	for i := 0; i < 3; i++ {
		s := startNode(t, fmt.Sprintf("server-%d", i), 3, seed)
		if seed == "" {
			seed = s.gossip
		}
		servers = append(servers, s)
	}
	for _, name := range clients {
		cl = append(cl, startNode(t, name, 0, seed, "--session-ttl", "2s"))
	}
	for _, n := range append(append([]*node{}, servers...), cl...) {
		waitFor(t, 60*time.Second, n.name+" ready", n.ready)
	}
	return servers, cl
}

func call(t testing.TB, method, url, body string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func srvCount(addr, name string) int {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeSRV)
	c := &dns.Client{Timeout: time.Second}
	in, _, err := c.Exchange(m, addr)
	if err != nil {
		return -1
	}
	return len(in.Answer)
}

func leaderNode(t testing.TB, servers []*node) *node {
	t.Helper()
	var st api.Status
	for _, s := range servers {
		if code, body := call(t, "GET", s.url+"/v1/status", ""); code == 200 && json.Unmarshal(body, &st) == nil && st.Leader == s.name {
			return s
		}
	}
	return nil
}

// killLeader kill -9s the Raft leader among servers and returns the
// others.
func killLeader(t testing.TB, servers []*node) (rest []*node) {
	t.Helper()
	leader := leaderNode(t, servers)
	if leader == nil {
		t.Fatal("no leader")
	}
	leader.p.kill9()
	for _, s := range servers {
		if s != leader {
			rest = append(rest, s)
		}
	}
	return rest
}

func TestProcessCluster_registerOnOneClientResolveOnAnother(t *testing.T) {
	_, cl := processCluster(t, "client-a", "client-b")
	a, b := cl[0], cl[1]
	if code, body := call(t, "PUT", a.url+"/v1/services", `{"id":"web-1","name":"web","address":"10.0.0.7","port":8080}`); code != 200 {
		t.Fatalf("register on A: %d %s", code, body)
	}
	waitFor(t, 10*time.Second, "web resolved on B", func() bool { return srvCount(b.dns, "_web._tcp.service.sidecar.") == 1 })
	code, body := call(t, "GET", b.url+"/v1/members", "")
	var members []api.Member
	if code != 200 || json.Unmarshal(body, &members) != nil || len(members) != 5 {
		t.Fatalf("members on B: %d %s", code, body)
	}
}

// A new --bootstrap-expect 3 cluster whose first leader is killed the
// moment every server is ready elects another from the two servers left, every
// time: each founder votes from the start, including one that learned of
// the cluster only once it had a leader (the last to start often does).
// Five new clusters, each with its leader killed at once.
func TestProcessCluster_newClusterReelectsWhenItsFirstLeaderIsKilledAtOnce(t *testing.T) {
	for round := range 5 {
		t.Run(fmt.Sprint("cluster-", round), func(t *testing.T) {
			servers, _ := processCluster(t)
			rest := killLeader(t, servers)
			waitFor(t, 20*time.Second, "a second leader among "+rest[0].name+" and "+rest[1].name,
				func() bool { return leaderNode(t, rest) != nil })
		})
	}
}

// kill -9 of the Raft leader while writers are in flight: every write that
// was acknowledged is in the registry afterwards.
func TestProcessCluster_leaderKill9_losesNoAcknowledgedWrite(t *testing.T) {
	servers, cl := processCluster(t, "client-a")
	a := cl[0]
	var mu sync.Mutex
	var acked []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("w%d-%d", w, i)
				code, _ := call(t, "PUT", a.url+"/v1/services", `{"id":"`+id+`","name":"load","port":1}`)
				if code == 200 {
					mu.Lock()
					acked = append(acked, id)
					mu.Unlock()
				}
			}
		}(w)
	}
	time.Sleep(300 * time.Millisecond) // let writes flow before the kill
	rest := killLeader(t, servers)
	waitFor(t, 20*time.Second, "a new leader", func() bool { return leaderNode(t, rest) != nil })
	mu.Lock()
	n := len(acked)
	mu.Unlock()
	waitFor(t, 20*time.Second, "more writes after the new leader", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) > n+20
	})
	close(stop)
	wg.Wait()
	code, body := call(t, "GET", rest[0].url+"/v1/services/load?consistent", "")
	var list []api.Instance
	if code != 200 || json.Unmarshal(body, &list) != nil {
		t.Fatalf("read after: %d %s", code, body)
	}
	have := map[string]bool{}
	for _, in := range list {
		have[in.ID] = true
	}
	for _, id := range acked {
		if !have[id] {
			t.Fatalf("acknowledged write %s lost (%d acknowledged, %d present)", id, len(acked), len(list))
		}
	}
	t.Logf("%d acknowledged writes, all present after kill -9 of the leader", len(acked))
}

// kill -9 of a client: its instances leave DNS on the other client, and its
// election candidacy passes to a candidate elsewhere with a greater token.
func TestProcessCluster_clientKill9(t *testing.T) {
	_, cl := processCluster(t, "client-a", "client-b")
	a, b := cl[0], cl[1]
	if code, body := call(t, "PUT", a.url+"/v1/services", `{"id":"web-1","name":"web","address":"10.0.0.7","port":8080}`); code != 200 {
		t.Fatalf("register: %d %s", code, body)
	}
	if code, body := call(t, "PUT", a.url+"/v1/elections/db/campaign", `{"candidate":"a","value":"10.0.0.7:5432"}`); code != 200 || !strings.Contains(string(body), `"leader":true`) {
		t.Fatalf("campaign on A: %d %s", code, body)
	}
	if code, body := call(t, "PUT", b.url+"/v1/elections/db/campaign", `{"candidate":"b","value":"10.0.0.8:5432"}`); code != 200 {
		t.Fatalf("campaign on B: %d %s", code, body)
	}
	waitFor(t, 10*time.Second, "web on B's DNS", func() bool { return srvCount(b.dns, "web.service.sidecar.") == 1 })
	var before api.ElectionInfo
	_, body := call(t, "GET", b.url+"/v1/elections/db", "")
	json.Unmarshal(body, &before)

	a.p.kill9()
	waitFor(t, 15*time.Second, "A's instance out of B's DNS", func() bool { return srvCount(b.dns, "web.service.sidecar.") == 0 })
	waitFor(t, 15*time.Second, "B leads", func() bool { code, _ := call(t, "GET", b.url+"/v1/elections/db/self", ""); return code == 200 })
	var after api.ElectionInfo
	_, body = call(t, "GET", b.url+"/v1/elections/db", "")
	json.Unmarshal(body, &after)
	if before.Leader == nil || after.Leader == nil || after.Leader.Candidate != "b" || after.Leader.Token <= before.Leader.Token {
		t.Fatalf("before %+v after %+v", before.Leader, after.Leader)
	}
}

func quantile(d []time.Duration, q float64) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(q*float64(len(s)-1))]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// BenchmarkProcessCluster reports, per run of a 3-server, 2-client cluster
// on loopback with default timings: registration-to-DNS propagation between
// clients (p50/p99 of 100), write unavailability after kill -9 of the Raft
// leader, time for a killed client's instances to leave DNS, and election
// handover after the holder's node is killed (lease TTL 2s).
func BenchmarkProcessCluster(b *testing.B) {
	var prop50, prop99, gap, leave, handover []time.Duration
	for i := 0; i < b.N; i++ {
		servers, cl := processCluster(b, "client-a", "client-b", "client-c")
		ca, cb, cc := cl[0], cl[1], cl[2]
		// Propagation.
		var props []time.Duration
		for j := 0; j < 100; j++ {
			name := fmt.Sprintf("p%d", j)
			start := time.Now()
			if code, body := call(b, "PUT", ca.url+"/v1/services", `{"id":"`+name+`","name":"`+name+`","address":"10.0.0.1","port":80}`); code != 200 {
				b.Fatalf("register: %d %s", code, body)
			}
			for srvCount(cb.dns, name+".service.sidecar.") != 1 {
				time.Sleep(200 * time.Microsecond)
			}
			props = append(props, time.Since(start))
		}
		prop50, prop99 = append(prop50, quantile(props, .5)), append(prop99, quantile(props, .99))
		// Killed client leaves DNS.
		call(b, "PUT", cc.url+"/v1/services", `{"id":"gone","name":"gone","address":"10.0.0.9","port":80}`)
		waitFor(b, 10*time.Second, "gone on B", func() bool { return srvCount(cb.dns, "gone.service.sidecar.") == 1 })
		// Election held on C's node lease (session TTL 2s).
		call(b, "PUT", cc.url+"/v1/elections/e/campaign", `{"candidate":"c","value":"10.0.0.9:1"}`)
		call(b, "PUT", cb.url+"/v1/elections/e/campaign", `{"candidate":"b","value":"10.0.0.8:1"}`)
		killed := time.Now()
		cc.p.kill9()
		var left, led time.Duration
		for left == 0 || led == 0 {
			if left == 0 && srvCount(cb.dns, "gone.service.sidecar.") == 0 {
				left = time.Since(killed)
			}
			if led == 0 {
				if code, _ := call(b, "GET", cb.url+"/v1/elections/e/self", ""); code == 200 {
					led = time.Since(killed)
				}
			}
			if time.Since(killed) > 30*time.Second {
				b.Fatal("no handover within 30s")
			}
			time.Sleep(time.Millisecond)
		}
		leave, handover = append(leave, left), append(handover, led)
		// Write gap after the leader dies: the longest time between two
		// acknowledged writes of a sequential writer.
		leader := leaderNode(b, servers)
		var last time.Time
		var worst time.Duration
		done := make(chan struct{})
		go func() {
			time.Sleep(200 * time.Millisecond)
			leader.p.kill9()
			close(done)
		}()
		deadline := time.Now().Add(6 * time.Second)
		for j := 0; time.Now().Before(deadline); j++ {
			code, _ := call(b, "PUT", ca.url+"/v1/services", fmt.Sprintf(`{"id":"g%d","name":"g","port":1}`, j))
			if code == 200 {
				now := time.Now()
				if !last.IsZero() && now.Sub(last) > worst {
					worst = now.Sub(last)
				}
				last = now
			}
		}
		<-done
		gap = append(gap, worst)
	}
	med := func(d []time.Duration) float64 { return ms(quantile(d, .5)) }
	b.ReportMetric(med(prop50), "ms-propagation-p50")
	b.ReportMetric(med(prop99), "ms-propagation-p99")
	b.ReportMetric(med(gap), "ms-write-gap-after-leader-kill")
	b.ReportMetric(med(leave), "ms-killed-client-leaves-dns")
	b.ReportMetric(med(handover), "ms-handover-after-node-kill-ttl2s")
}

// kill -9 of a client right after its registrations were answered 200, then
// a restart on its data dir: every acknowledged registration is there, and
// stays there once the restarted agent compared the registry with its local
// state (which removes what it does not know). Deregistrations answered 200
// stay deregistered.
func TestProcessCluster_clientKill9AfterRegistration_keepsIt(t *testing.T) {
	servers, _ := processCluster(t)
	dir := t.TempDir()
	seed := servers[0].gossip
	c := startNode(t, "client-k", 0, seed, "--data-dir", dir)
	waitFor(t, 60*time.Second, "client-k ready", c.ready)

	const writers, each = 4, 10
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				body := fmt.Sprintf(`{"id":"k-%d-%d","name":"k","port":%d}`, w, i, 1000+i)
				if code, out := call(t, "PUT", c.url+"/v1/services", body); code != 200 {
					t.Errorf("register: %d %s", code, out)
				}
			}
		}()
	}
	wg.Wait()
	if code, out := call(t, "DELETE", c.url+"/v1/services/k-0-0", ""); code != 200 {
		t.Fatalf("deregister: %d %s", code, out)
	}
	c.p.kill9()

	c = startNode(t, "client-k", 0, seed, "--data-dir", dir)
	waitFor(t, 60*time.Second, "client-k ready again", c.ready)
	code, body := call(t, "GET", servers[1].url+"/v1/services/k?consistent", "")
	var got []api.Instance
	if code != 200 || json.Unmarshal(body, &got) != nil {
		t.Fatalf("read k: %d %s", code, body)
	}
	ids := map[string]bool{}
	for _, in := range got {
		ids[in.ID] = true
	}
	if len(ids) != writers*each-1 || ids["k-0-0"] {
		t.Fatalf("after kill -9 and restart: %d instances (k-0-0 present: %v), want %d without k-0-0", len(ids), ids["k-0-0"], writers*each-1)
	}
}
