package ui_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/agent"
	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/api"
)

// The browser test runs under `make ui-browser` (part of `make test`),
// which sets SIDECAR_UI_BROWSER=1; plain `go test ./...` skips it.
// Screenshots go to SIDECAR_UI_SHOTS (default /tmp/sidecar-ui-shots).

// chromium finds Debian's chromium, installing it with apt-get when it is
// missing and the test runs as root.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("chromium is not installed and installing it needs root")
	}
	t.Log("installing chromium with apt-get")
	env := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	for _, args := range [][]string{
		{"-o", "DPkg::Lock::Timeout=300", "-y", "install", "--no-install-recommends", "chromium"},
	} {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			// The package lists may be missing or old: update once, retry.
			up := exec.Command("apt-get", "-o", "DPkg::Lock::Timeout=300", "update")
			up.Env = env
			up.Run()
			cmd = exec.Command("apt-get", args...)
			cmd.Env = env
			if out2, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("apt-get install chromium: %v\n%s\n%s", err, out, out2)
			}
		}
	}
	p, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium still missing after apt-get: %v", err)
	}
	return p
}

func shotsDir(t *testing.T) string {
	dir := os.Getenv("SIDECAR_UI_SHOTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "sidecar-ui-shots")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func send(t *testing.T, method, url, token, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set(api.HeaderToken, token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func mustSend(t *testing.T, method, url, token, body string) string {
	t.Helper()
	code, b := send(t, method, url, token, body)
	if code/100 != 2 {
		t.Fatalf("%s %s: %d %s", method, url, code, b)
	}
	return b
}

// latency logs how long the page took to show a change.
func latency(t *testing.T, what string, from, shown time.Time) {
	t.Helper()
	line := fmt.Sprintf("ui latency: %-44s %6.0f ms", what, float64(shown.Sub(from).Microseconds())/1000)
	t.Log(line)
	fmt.Println(line)
}

// The rendered page of a client of a 3-server + 2-client cluster follows
// the cluster: a registered service, a check turned critical, an election's
// leader and token, a new leader after the old one's agent is killed, the
// killed node failed. "Within 1 s" is the page's update path (blocking
// queries): each state is asserted to appear, and the time from the change
// to the DOM showing it is printed, not asserted (the machine is shared).
func TestBrowser_cluster(t *testing.T) {
	if os.Getenv("SIDECAR_UI_BROWSER") == "" {
		t.Skip("set SIDECAR_UI_BROWSER=1 (make ui-browser) to drive chromium")
	}
	bin := chromium(t)
	shots := shotsDir(t)
	servers := agenttest.Cluster(t, 3, nil)
	c1 := agenttest.Join(t, servers[0], "client-1", false, nil)
	c2 := agenttest.Join(t, servers[0], "client-2", false, nil)
	c1.WaitReady(30 * time.Second)
	c2.WaitReady(30 * time.Second)

	b := startBrowser(t, bin)
	b.viewport(1280, 1000, false, "light")
	b.navigate(c1.URL + "/ui/#/services/web")
	b.waitTrue("the page to reach the agent", `document.querySelector('#conn').textContent === 'live'`, 10*time.Second)

	// A service registered through a client shows with its instance.
	start := time.Now()
	mustSend(t, "PUT", c1.URL+"/v1/services", "", `{"id":"web-1","name":"web","address":"10.0.0.11","port":8080,"tags":["v2","canary"],"meta":{"zone":"eu-1a"},
		"checks":[{"id":"web-1-ttl","name":"app heartbeat","type":"ttl","ttl":"1h"}]}`)
	mustSend(t, "PUT", c2.URL+"/v1/services", "", `{"id":"web-2","name":"web","address":"10.0.0.12","port":8080,"tags":["v2"],"meta":{"zone":"eu-1b"}}`)
	mustSend(t, "PUT", c2.URL+"/v1/services", "", `{"id":"db-1","name":"db","address":"10.0.0.21","port":5432,"tags":["primary"]}`)
	shown := b.waitTrue("web-1 listed", `document.querySelector('tr[data-instance="web-1"]')`, 10*time.Second)
	latency(t, "service registered -> instance shown", start, shown)
	mustSend(t, "PUT", c1.URL+"/v1/checks/web-1-ttl/pass?note=ok", "", "")
	b.waitTrue("web-1 passing", `document.querySelector('tr[data-instance="web-1"].status-passing')`, 10*time.Second)

	// A check turned critical shows red with its output.
	start = time.Now()
	mustSend(t, "PUT", c1.URL+"/v1/checks/web-1-ttl/fail?note="+strings.ReplaceAll("upstream timed out after 2s", " ", "%20"), "", "")
	shown = b.waitTrue("web-1 critical with its output",
		`document.querySelector('tr[data-instance="web-1"].status-critical li[data-check="web-1-ttl"].status-critical pre.output')?.textContent.includes('upstream timed out')`, 10*time.Second)
	latency(t, "check failed -> red with its output", start, shown)
	var color string
	b.eval(`getComputedStyle(document.querySelector('tr[data-instance="web-1"] .chip.status-critical')).backgroundColor`, &color)
	t.Logf("critical chip background %s", color)
	b.screenshot(filepath.Join(shots, "service-critical.png"))

	// An election: leader and token, then, after the leader's agent is
	// killed, the new leader with a greater token.
	b.eval(`location.hash = '#/elections'`, nil)
	mustSend(t, "PUT", c2.URL+"/v1/elections/db-primary/campaign", "", `{"candidate":"db-a","value":"10.0.0.21:5432"}`)
	start = time.Now()
	mustSend(t, "PUT", c1.URL+"/v1/elections/db-primary/campaign", "", `{"candidate":"db-b","value":"10.0.0.22:5432","wait":"0s"}`)
	var info api.ElectionInfo
	json.Unmarshal([]byte(mustSend(t, "GET", c1.URL+"/v1/elections/db-primary", "", "")), &info)
	if info.Leader == nil || info.Leader.Candidate != "db-a" {
		t.Fatalf("election leader %+v, want db-a", info.Leader)
	}
	firstToken := info.Leader.Token
	shown = b.waitTrue("db-a leads with its token, db-b waits", fmt.Sprintf(
		`(r => r && r.querySelector('.holder').textContent.includes('db-a') && r.querySelector('.token').textContent.trim() === '%d' && r.textContent.includes('db-b'))(document.querySelector('tr[data-election="db-primary"]'))`,
		firstToken), 10*time.Second)
	latency(t, "waiter queued -> election row shown", start, shown)
	mustSend(t, "PUT", c2.URL+"/v1/locks/nightly-report", "", `{"value":"batch-7"}`)
	b.waitTrue("the lock shown", `document.querySelector('tr[data-lock="nightly-report"] .holder')?.textContent.includes('client-2')`, 10*time.Second)
	b.screenshot(filepath.Join(shots, "elections.png"))

	// The remaining lease counts down where the deadline is known: on the
	// Raft leader's own UI (a client knows only the TTL of another agent's
	// lease).
	var st api.Status
	json.Unmarshal([]byte(mustSend(t, "GET", c1.URL+"/v1/status", "", "")), &st)
	for _, s := range servers {
		if s.Node() == st.Leader {
			b.navigate(s.URL + "/ui/#/elections")
		}
	}
	b.waitTrue("a countdown on the leader's UI", `document.querySelector('tr[data-election="db-primary"] .countdown')`, 10*time.Second)
	var before, after string
	b.eval(`document.querySelector('tr[data-election="db-primary"] .countdown').textContent`, &before)
	time.Sleep(600 * time.Millisecond)
	b.eval(`document.querySelector('tr[data-election="db-primary"] .countdown').textContent`, &after)
	if before == after {
		t.Errorf("the lease countdown stood still: %q then %q", before, after)
	}
	t.Logf("lease countdown on the leader: %s, 600 ms later %s", before, after)
	b.screenshot(filepath.Join(shots, "elections-leader.png"))
	b.navigate(c1.URL + "/ui/#/elections")
	b.waitTrue("back on client-1", `document.querySelector('tr[data-election="db-primary"]') && document.querySelector('#conn').textContent === 'live'`, 10*time.Second)

	killed := time.Now()
	c2.Kill()
	// The registry's change, as another agent's API sees it.
	var changed time.Time
	agenttest.WaitFor(t, 30*time.Second, "db-b to lead", func() bool {
		code, body := send(t, "GET", servers[0].URL+"/v1/elections/db-primary", "", "")
		var e api.ElectionInfo
		if code == 200 && json.Unmarshal([]byte(body), &e) == nil && e.Leader != nil && e.Leader.Candidate == "db-b" {
			changed = time.Now()
			return true
		}
		return false
	})
	shown = b.waitTrue("db-b leads with a greater token", fmt.Sprintf(
		`(r => r && r.querySelector('.holder').textContent.includes('db-b') && Number(r.querySelector('.token').textContent) > %d)(document.querySelector('tr[data-election="db-primary"]'))`,
		firstToken), 10*time.Second)
	latency(t, "agent killed -> new leader shown", killed, shown)
	latency(t, "new leader in the registry -> shown", changed, shown)

	// The killed node shows as failed, once the page's agent's gossip
	// says so.
	b.eval(`location.hash = '#/nodes'`, nil)
	var failed time.Time
	agenttest.WaitFor(t, 30*time.Second, "client-1 to see client-2 failed", func() bool {
		_, body := send(t, "GET", c1.URL+"/v1/members", "", "")
		var ms []api.Member
		json.Unmarshal([]byte(body), &ms)
		for _, m := range ms {
			if m.Name == "client-2" && m.Status == "failed" {
				failed = time.Now()
				return true
			}
		}
		return false
	})
	shown = b.waitTrue("client-2 failed", `document.querySelector('tr[data-member="client-2"].status-failed')`, 30*time.Second)
	latency(t, "agent killed -> node shown failed", killed, shown)
	latency(t, "node failed in gossip -> shown", failed, shown)
	b.screenshot(filepath.Join(shots, "nodes-failed.png"))

	// The overview puts the problems first: wide, dark, and on a phone.
	b.eval(`location.hash = '#/overview'`, nil)
	b.waitTrue("problems listed", `document.querySelectorAll('#problems li.problem').length >= 2`, 10*time.Second)
	b.screenshot(filepath.Join(shots, "overview.png"))
	// Loading it afresh, the layout does not jump as the answers arrive:
	// the cumulative layout shift of the load (0.1 is the "good" bound of
	// web.dev's Core Web Vitals).
	b.navigate(c1.URL + "/ui/#/overview")
	b.waitTrue("the overview loaded", `document.querySelectorAll('#problems li.problem').length >= 2 && document.querySelector('#raft-leader a')`, 10*time.Second)
	time.Sleep(500 * time.Millisecond)
	var cls float64
	b.evalAwait(`new Promise(resolve => { let sum = 0; new PerformanceObserver(l => { for (const e of l.getEntries()) sum += e.value; }).observe({type: 'layout-shift', buffered: true}); setTimeout(() => resolve(sum), 100); })`, &cls)
	t.Logf("cumulative layout shift of loading the overview: %.4f", cls)
	fmt.Printf("ui layout shift: overview load CLS %.4f\n", cls)
	if cls > 0.1 {
		t.Errorf("loading the overview shifts its layout by %.3f (CLS), want at most 0.1", cls)
	}
	b.viewport(1280, 1000, false, "dark")
	b.screenshot(filepath.Join(shots, "overview-dark.png"))
	b.viewport(390, 844, true, "light")
	b.screenshot(filepath.Join(shots, "overview-phone.png"))
	b.eval(`location.hash = '#/services/web'`, nil)
	b.waitTrue("web on the phone", `document.querySelector('tr[data-instance="web-1"]')`, 5*time.Second)
	b.screenshot(filepath.Join(shots, "service-phone.png"))
	var overflow bool
	b.eval(`document.documentElement.scrollWidth > window.innerWidth + 1`, &overflow)
	if overflow {
		t.Errorf("the page scrolls sideways on a 390 px wide phone")
	}
	b.viewport(1280, 1000, false, "light")

	// The agent going away shows; coming back, the page recovers. The
	// page's own agent is c1: killing it ends its HTTP server.
	down := time.Now()
	c1.Kill()
	shown = b.waitTrue("unreachable shown", `document.querySelector('#conn').textContent === 'unreachable' && document.querySelector('#banner').textContent.includes('unreachable')`, 10*time.Second)
	latency(t, "agent killed -> unreachable shown", down, shown)
	b.screenshot(filepath.Join(shots, "unreachable.png"))
}

// Under default-deny the page asks for a token, and works once given one
// through the URL fragment (/ui/#token=SECRET), which it stores and
// removes from the address bar.
func TestBrowser_aclToken(t *testing.T) {
	if os.Getenv("SIDECAR_UI_BROWSER") == "" {
		t.Skip("set SIDECAR_UI_BROWSER=1 (make ui-browser) to drive chromium")
	}
	bin := chromium(t)
	shots := shotsDir(t)
	a := agenttest.Start(t, func(c *agent.Config) { c.ACLDefaultPolicy = "deny" })
	var tok api.ACLToken
	json.Unmarshal([]byte(mustSend(t, "PUT", a.URL+"/v1/acl/bootstrap", "", "")), &tok)
	if tok.Secret == "" {
		t.Fatal("no bootstrap secret")
	}
	mustSend(t, "PUT", a.URL+"/v1/services", tok.Secret, `{"id":"api-1","name":"api","port":9000}`)

	b := startBrowser(t, bin)
	b.viewport(1280, 800, false, "light")
	b.navigate(a.URL + "/ui/")
	b.waitTrue("the page to ask for a token",
		`document.body.dataset.tokenNeeded === 'yes' && document.querySelector('#banner').textContent.includes('needs an ACL token')`, 10*time.Second)
	b.screenshot(filepath.Join(shots, "token-needed.png"))

	start := time.Now()
	b.eval(`location.hash = '#token=`+tok.Secret+`'`, nil)
	shown := b.waitTrue("the page to work with the token",
		`document.body.dataset.tokenNeeded === 'no' && document.querySelector('#conn').textContent === 'live' && document.querySelector('#raft-leader a')`, 10*time.Second)
	latency(t, "token given -> page works", start, shown)
	var state struct {
		Hash, Stored string
	}
	b.eval(`({hash: location.hash, stored: localStorage.getItem('sidecar.token')})`, &state)
	if strings.Contains(state.Hash, "token") || state.Stored != tok.Secret {
		t.Fatalf("after #token=: hash %q, stored %q; want the token stored and out of the address bar", state.Hash, state.Stored)
	}
	b.eval(`location.hash = '#/services'`, nil)
	b.waitTrue("api listed", `document.querySelector('tr[data-service="api"]')`, 10*time.Second)
}
