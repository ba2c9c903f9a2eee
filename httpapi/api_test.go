package httpapi_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/agent"
	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/discovery/discoverytest"
)

func TestMain(m *testing.M) {
	discoverytest.VerifyTestMain(m)
}

type reply struct {
	code   int
	header http.Header
	body   []byte
}

func do(t *testing.T, method, url, body string) reply {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, resp.Header, b}
}

func mustOK(t *testing.T, r reply) {
	t.Helper()
	if r.code != http.StatusOK {
		t.Fatalf("status %d: %s", r.code, r.body)
	}
}

// Bad input gets a 4xx with a JSON error and leaves the registry as it was.
func TestAPI_badInput(t *testing.T) {
	a := agenttest.Start(t, nil)
	u := a.URL
	mustOK(t, do(t, "PUT", u+"/v1/services", `{"id":"web-1","name":"web","port":80,"checks":[{"type":"ttl","ttl":"10s"},{"type":"tcp","tcp":"127.0.0.1:1"}]}`))
	var lease api.Lease
	r := do(t, "POST", u+"/v1/leases", `{"ttl":"30s"}`)
	mustOK(t, r)
	json.Unmarshal(r.body, &lease)
	mustOK(t, do(t, "PUT", u+"/v1/locks/held", `{"lease":"`+lease.ID+`"}`))
	other := do(t, "POST", u+"/v1/leases", `{"ttl":"30s"}`)
	var otherLease api.Lease
	json.Unmarshal(other.body, &otherLease)

	huge := `{"id":"big","name":"big","port":1,"meta":{"x":"` + strings.Repeat("a", 1<<20) + `"}}`
	cases := []struct {
		name, method, path, body string
		want                     int
	}{
		{"malformed json", "PUT", "/v1/services", `{"id":"x",`, 400},
		{"not an object", "PUT", "/v1/services", `[1,2]`, 400},
		{"trailing data", "PUT", "/v1/services", `{"id":"a","name":"a","port":1} {}`, 400},
		{"wrong field type", "PUT", "/v1/services", `{"id":"a","name":"a","port":"80"}`, 400},
		{"unknown field", "PUT", "/v1/services", `{"id":"a","name":"a","port":1,"prot":2}`, 400},
		{"empty body", "PUT", "/v1/services", ``, 400},
		{"body over 1 MiB", "PUT", "/v1/services", huge, 413},
		{"service name not a label", "PUT", "/v1/services", `{"id":"a","name":"web_app","port":1}`, 400},
		{"port out of range", "PUT", "/v1/services", `{"id":"a","name":"a","port":70000}`, 400},
		{"weight zero", "PUT", "/v1/services", `{"id":"a","name":"a","port":1,"weight":0}`, 400},
		{"weight negative", "PUT", "/v1/services", `{"id":"a","name":"a","port":1,"weight":-1}`, 400},
		{"weight too large", "PUT", "/v1/services", `{"id":"a","name":"a","port":1,"weight":65536}`, 400},
		{"weight beyond int64", "PUT", "/v1/services", `{"id":"a","name":"a","port":1,"weight":1e30}`, 400},
		{"weight a string", "PUT", "/v1/services", `{"id":"a","name":"a","port":1,"weight":"3"}`, 400},
		{"weight a fraction", "PUT", "/v1/services", `{"id":"a","name":"a","port":1,"weight":1.5}`, 400},
		{"check without its field", "PUT", "/v1/services", `{"id":"a","name":"a","port":1,"checks":[{"type":"http"}]}`, 400},
		{"check with two fields", "PUT", "/v1/services", `{"id":"a","name":"a","port":1,"checks":[{"type":"tcp","tcp":"h:1","http":"http://h/"}]}`, 400},
		{"check type unknown", "PUT", "/v1/services", `{"id":"a","name":"a","port":1,"checks":[{"type":"grpc"}]}`, 400},
		{"deregister unknown", "DELETE", "/v1/services/nope", ``, 404},
		{"service lookup bad name", "GET", "/v1/services/-x-", ``, 400},
		{"lease ttl zero", "POST", "/v1/leases", `{"ttl":"0s"}`, 400},
		{"lease ttl negative", "POST", "/v1/leases", `{"ttl":"-5s"}`, 400},
		{"lease ttl below minimum", "POST", "/v1/leases", `{"ttl":"500ms"}`, 400},
		{"lease ttl not a duration", "POST", "/v1/leases", `{"ttl":"ten"}`, 400},
		{"lease ttl a number", "POST", "/v1/leases", `{"ttl":10}`, 400},
		{"lease ttl missing", "POST", "/v1/leases", `{}`, 400},
		{"keepalive unknown lease", "PUT", "/v1/leases/00000000deadbeef/keepalive", ``, 404},
		{"revoke unknown lease", "DELETE", "/v1/leases/00000000deadbeef", ``, 404},
		{"lock name not a label", "PUT", "/v1/locks/a.b", `{}`, 400},
		{"lock unknown lease", "PUT", "/v1/locks/job", `{"lease":"00000000deadbeef"}`, 404},
		{"lock negative wait", "PUT", "/v1/locks/job", `{"wait":"-1s"}`, 400},
		{"lock bad hold", "PUT", "/v1/locks/job", `{"hold":"forever"}`, 400},
		{"lock ttl without hold", "PUT", "/v1/locks/job", `{"ttl":"5s"}`, 400},
		{"hold with a lease", "PUT", "/v1/locks/job", `{"hold":"connection","lease":"` + otherLease.ID + `"}`, 400},
		{"unlock unknown lock", "DELETE", "/v1/locks/never", `{}`, 404},
		{"unlock by non-holder", "DELETE", "/v1/locks/held", `{"lease":"` + otherLease.ID + `"}`, 409},
		{"lock info unknown", "GET", "/v1/locks/never", ``, 404},
		{"campaign no candidate", "PUT", "/v1/elections/db/campaign", `{"value":"x"}`, 400},
		{"campaign bad election", "PUT", "/v1/elections/DB_1/campaign", `{"candidate":"a"}`, 400},
		{"campaign unknown lease", "PUT", "/v1/elections/db/campaign", `{"candidate":"a","lease":"00000000deadbeef"}`, 404},
		{"resign unknown", "DELETE", "/v1/elections/never/campaign?candidate=a", ``, 404},
		{"resign no candidate", "DELETE", "/v1/elections/db/campaign", ``, 400},
		{"election vacant", "GET", "/v1/elections/never", ``, 404},
		{"check unknown", "PUT", "/v1/checks/nope/pass", ``, 404},
		{"check not ttl", "PUT", "/v1/checks/web-1:2/pass", ``, 400},
		{"check bad verb", "PUT", "/v1/checks/web-1:1/maybe", ``, 404},
		{"blocking bad index", "GET", "/v1/services?index=abc", ``, 400},
		{"blocking bad wait", "GET", "/v1/services?index=1&wait=-1s", ``, 400},
		{"corrupt snapshot", "PUT", "/v1/snapshot", "sidecar-snapshot v1 00\n{}", 400},
		{"unknown route", "GET", "/v1/nothing", ``, 404},
		{"wrong method", "POST", "/v1/services", `{}`, 405},
	}
	// SPEC: a lock held elsewhere is 409 {"held":false,"holder":...}.
	if r := do(t, "PUT", u+"/v1/locks/held", `{"lease":"`+otherLease.ID+`"}`); r.code != 409 || !strings.Contains(string(r.body), `"held":false`) {
		t.Fatalf("lock held by another: %d %s", r.code, r.body)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := a.FSM().Digest()
			r := do(t, c.method, u+c.path, c.body)
			if r.code != c.want {
				t.Fatalf("%s %s: status %d, want %d (%s)", c.method, c.path, r.code, c.want, r.body)
			}
			var e api.Error
			if err := json.Unmarshal(r.body, &e); err != nil || e.Error == "" {
				t.Fatalf("body %q is not {\"error\": ...}", r.body)
			}
			if after := a.FSM().Digest(); after != before {
				t.Fatalf("registry changed by a refused request")
			}
		})
	}
}

func TestAPI_registerAndBlockingQuery(t *testing.T) {
	a := agenttest.Start(t, nil)
	r := do(t, "GET", a.URL+"/v1/services/web", "")
	mustOK(t, r)
	idx, err := strconv.ParseUint(r.header.Get(api.HeaderIndex), 10, 64)
	if err != nil || idx == 0 {
		t.Fatalf("X-Sidecar-Index %q", r.header.Get(api.HeaderIndex))
	}
	got := make(chan reply, 1)
	go func() {
		got <- do(t, "GET", a.URL+"/v1/services/web?index="+strconv.FormatUint(idx, 10)+"&wait=10s", "")
	}()
	select {
	case r := <-got:
		t.Fatalf("blocking query returned before any change: %s", r.body)
	case <-time.After(100 * time.Millisecond):
	}
	mustOK(t, do(t, "PUT", a.URL+"/v1/services", `{"id":"web-1","name":"web","address":"10.0.0.1","port":80,"tags":["v1","blue"]}`))
	r = <-got
	mustOK(t, r)
	var list []api.Instance
	json.Unmarshal(r.body, &list)
	if len(list) != 1 || list[0].ID != "web-1" || list[0].Status != "passing" || list[0].Node != "dev" {
		t.Fatalf("after registration: %s", r.body)
	}
	if n, _ := strconv.ParseUint(r.header.Get(api.HeaderIndex), 10, 64); n <= idx {
		t.Fatalf("index %d did not move past %d", n, idx)
	}
	// A blocking query whose wait ends returns the same answer.
	start := time.Now()
	r = do(t, "GET", a.URL+"/v1/services/web?index="+r.header.Get(api.HeaderIndex)+"&wait=200ms", "")
	if r.code != 200 || time.Since(start) < 200*time.Millisecond {
		t.Fatalf("wait ended after %v with %d", time.Since(start), r.code)
	}
	// A consistent read sees the registration.
	r = do(t, "GET", a.URL+"/v1/services/web?consistent", "")
	if r.code != 200 || !strings.Contains(string(r.body), `"web-1"`) {
		t.Fatalf("consistent read: %d %s", r.code, r.body)
	}
	// Filters.
	mustOK(t, do(t, "PUT", a.URL+"/v1/services", `{"id":"web-2","name":"web","port":81,"tags":["v2"],"checks":[{"id":"hb","type":"ttl","ttl":"10s"}]}`))
	for q, want := range map[string]int{"": 2, "?passing": 1, "?tag=v1": 1, "?tag=v1&tag=blue": 1, "?tag=v1&tag=v2": 0} {
		r := do(t, "GET", a.URL+"/v1/services/web"+q, "")
		json.Unmarshal(r.body, &list)
		if len(list) != want {
			t.Errorf("GET /v1/services/web%s: %d instances, want %d", q, len(list), want)
		}
	}
	mustOK(t, do(t, "PUT", a.URL+"/v1/checks/hb/pass?note=ok", ""))
	r = do(t, "GET", a.URL+"/v1/services/web?passing", "")
	json.Unmarshal(r.body, &list)
	if len(list) != 2 {
		t.Fatalf("after the TTL check passed: %s", r.body)
	}
	r = do(t, "GET", a.URL+"/v1/services", "")
	if !strings.Contains(string(r.body), `"web":["blue","v1","v2"]`) {
		t.Fatalf("GET /v1/services = %s", r.body)
	}
	for _, in := range list {
		if in.ID == "web-2" && in.Address != "127.0.0.1" {
			t.Fatalf("instance registered without address shows %q, want its node's address", in.Address)
		}
	}
	mustOK(t, do(t, "DELETE", a.URL+"/v1/services/web-1", ""))
	r = do(t, "GET", a.URL+"/v1/services/web", "")
	json.Unmarshal(r.body, &list)
	if len(list) != 1 {
		t.Fatalf("after deregistration: %s", r.body)
	}
}

func TestAPI_locksAndElections(t *testing.T) {
	a := agenttest.Start(t, nil)
	r := do(t, "PUT", a.URL+"/v1/locks/job", `{"value":"me"}`)
	mustOK(t, r)
	var held api.LockResult
	json.Unmarshal(r.body, &held)
	if !held.Held || held.Token == 0 {
		t.Fatalf("lock: %s", r.body)
	}
	r = do(t, "GET", a.URL+"/v1/locks/job", "")
	var info api.LockInfo
	json.Unmarshal(r.body, &info)
	if info.Holder != "dev" || info.Value != "me" || info.Token != held.Token {
		t.Fatalf("lock info: %s", r.body)
	}
	mustOK(t, do(t, "DELETE", a.URL+"/v1/locks/job", ""))
	if r := do(t, "GET", a.URL+"/v1/locks/job", ""); r.code != 404 {
		t.Fatalf("released lock info: %d %s", r.code, r.body)
	}
	r = do(t, "PUT", a.URL+"/v1/locks/job", `{}`)
	var again api.LockResult
	json.Unmarshal(r.body, &again)
	if again.Token <= held.Token {
		t.Fatalf("token after re-acquire %d, not above %d", again.Token, held.Token)
	}

	if r := do(t, "GET", a.URL+"/v1/elections/db/self", ""); r.code != 503 {
		t.Fatalf("self before campaign: %d %s", r.code, r.body)
	}
	r = do(t, "PUT", a.URL+"/v1/elections/db/campaign", `{"candidate":"c1","value":"10.0.0.1:5432"}`)
	mustOK(t, r)
	r = do(t, "GET", a.URL+"/v1/elections/db/self", "")
	var self api.SelfStatus
	json.Unmarshal(r.body, &self)
	if r.code != 200 || !self.Leader || self.Token == 0 || self.ExpiresIn == "" {
		t.Fatalf("self while leading: %d %s", r.code, r.body)
	}
	r = do(t, "GET", a.URL+"/v1/elections/db", "")
	var info2 api.ElectionInfo
	json.Unmarshal(r.body, &info2)
	if info2.Leader == nil || info2.Leader.Candidate != "c1" || info2.Leader.Value != "10.0.0.1:5432" {
		t.Fatalf("election: %s", r.body)
	}
	// A blocking self query returns when leadership changes.
	idx := r.header.Get(api.HeaderIndex)
	got := make(chan reply, 1)
	go func() { got <- do(t, "GET", a.URL+"/v1/elections/db/self?index="+idx+"&wait=10s", "") }()
	mustOK(t, do(t, "DELETE", a.URL+"/v1/elections/db/campaign?candidate=c1", ""))
	if r := <-got; r.code != 503 {
		t.Fatalf("blocking self after resign: %d %s", r.code, r.body)
	}
}

// A connection-bound lock is released the moment its connection closes,
// and the next waiter is handed it with a greater token.
func TestAPI_connectionBoundLock(t *testing.T) {
	a := agenttest.Start(t, nil)
	open := func(ctx context.Context) (*bufio.Scanner, func()) {
		req, _ := http.NewRequestWithContext(ctx, "PUT", a.URL+"/v1/locks/job", strings.NewReader(`{"hold":"connection","ttl":"30s"}`))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
			t.Fatalf("hold answered %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		return bufio.NewScanner(resp.Body), func() { resp.Body.Close() }
	}
	next := func(sc *bufio.Scanner) api.LockResult {
		t.Helper()
		if !sc.Scan() {
			t.Fatalf("stream ended: %v", sc.Err())
		}
		var r api.LockResult
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		return r
	}
	ctx1, drop1 := context.WithCancel(context.Background())
	defer drop1()
	s1, close1 := open(ctx1)
	defer close1()
	first := next(s1)
	if !first.Held {
		t.Fatalf("first hold: %+v", first)
	}
	ctx2, drop2 := context.WithCancel(context.Background())
	defer drop2()
	s2, close2 := open(ctx2)
	defer close2()
	if w := next(s2); w.Held {
		t.Fatalf("second hold got the lock while the first held it: %+v", w)
	}
	drop1()
	second := next(s2)
	if !second.Held || second.Token <= first.Token {
		t.Fatalf("after the first connection closed: %+v, want held with token > %d", second, first.Token)
	}
	drop2()
}

// A blocked read of one service answers with that service's own index and
// is not woken by writes to other services or nodes: it returns when its
// wait ends, with the index it was given.
func TestAPI_blockingQuery_onlyItsOwnService(t *testing.T) {
	a := agenttest.Start(t, nil)
	mustOK(t, do(t, "PUT", a.URL+"/v1/services", `{"id":"web-1","name":"web","port":80}`))
	r := do(t, "GET", a.URL+"/v1/services/web", "")
	mustOK(t, r)
	idx := r.header.Get(api.HeaderIndex)
	got := make(chan reply, 1)
	start := time.Now()
	go func() { got <- do(t, "GET", a.URL+"/v1/services/web?index="+idx+"&wait=1s", "") }()
	for i := 0; i < 5; i++ {
		mustOK(t, do(t, "PUT", a.URL+"/v1/services", `{"id":"db-`+strconv.Itoa(i)+`","name":"db","port":5432}`))
	}
	r = <-got
	mustOK(t, r)
	if r.header.Get(api.HeaderIndex) != idx || time.Since(start) < time.Second {
		t.Fatalf("woken by writes to another service: index %s (was %s) after %v", r.header.Get(api.HeaderIndex), idx, time.Since(start))
	}
	// Its own change wakes it at once.
	go func() { got <- do(t, "GET", a.URL+"/v1/services/web?index="+idx+"&wait=10s", "") }()
	mustOK(t, do(t, "PUT", a.URL+"/v1/services", `{"id":"web-2","name":"web","port":81}`))
	r = <-got
	if n, _ := strconv.ParseUint(r.header.Get(api.HeaderIndex), 10, 64); r.code != 200 || strconv.FormatUint(n, 10) == idx || !strings.Contains(string(r.body), "web-2") {
		t.Fatalf("after web-2: %d index %s %s", r.code, r.header.Get(api.HeaderIndex), r.body)
	}
}

// An instance's weight is in its JSON: as registered, 1 when none was.
func TestAPI_instanceWeight(t *testing.T) {
	a := agenttest.Start(t, nil)
	mustOK(t, do(t, "PUT", a.URL+"/v1/services", `{"id":"w1","name":"web","port":80,"weight":7}`))
	mustOK(t, do(t, "PUT", a.URL+"/v1/services", `{"id":"w2","name":"web","port":81}`))
	var list []api.Instance
	json.Unmarshal(do(t, "GET", a.URL+"/v1/services/web", "").body, &list)
	got := map[string]int{}
	for _, in := range list {
		got[in.ID] = in.Weight
	}
	if got["w1"] != 7 || got["w2"] != 1 {
		t.Fatalf("weights %v, want w1 7 and w2 1", got)
	}
}

// An exec check through the API is refused unless --enable-exec-checks=all:
// whoever reaches the API would run commands as the agent. The refusal
// registers nothing and the command never runs.
func TestAPI_execChecksNeedTheFlag(t *testing.T) {
	marker := t.TempDir() + "/ran"
	body := `{"id":"x","name":"x","port":1,"checks":[{"type":"exec","exec":["/bin/sh","-c","touch ` + marker + `"],"interval":"100ms"}]}`
	a := agenttest.Start(t, nil)
	before := a.FSM().Digest()
	r := do(t, "PUT", a.URL+"/v1/services", body)
	if r.code != http.StatusForbidden || !strings.Contains(string(r.body), "--enable-exec-checks=all") {
		t.Fatalf("exec check without the flag: %d %s", r.code, r.body)
	}
	if a.FSM().Digest() != before {
		t.Fatal("a refused registration changed the registry")
	}
	for _, mode := range []string{"local", "all"} {
		b := agenttest.Start(t, func(c *agent.Config) { c.ExecChecks = mode })
		r := do(t, "PUT", b.URL+"/v1/services", body)
		if mode == "local" && r.code != http.StatusForbidden {
			t.Fatalf("exec check through the API with local: %d %s", r.code, r.body)
		}
		if mode == "all" {
			mustOK(t, r)
			agenttest.WaitFor(t, 10*time.Second, "the exec check ran", func() bool { _, err := os.Stat(marker); return err == nil })
		}
	}
}

// A request whose Host is not this agent's (a page that rebound its own
// name to the agent's address) is refused; IP literals, localhost, the node
// name and allowed hosts are answered.
func TestAPI_hostHeaderChecked(t *testing.T) {
	a := agenttest.Start(t, func(c *agent.Config) { c.AllowedHosts = []string{"sidecar.internal"} })
	_, port, _ := net.SplitHostPort(a.HTTPAddr())
	for host, want := range map[string]int{
		"attacker.example":         http.StatusForbidden,
		"attacker.example:" + port: http.StatusForbidden,
		"127.0.0.1:" + port:        http.StatusOK,
		"[::1]:" + port:            http.StatusOK,
		"localhost:" + port:        http.StatusOK,
		"dev:" + port:              http.StatusOK, // the node name
		"SIDECAR.internal.":        http.StatusOK,
	} {
		req, _ := http.NewRequest("GET", a.URL+"/v1/services", nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("Host %q: %d, want %d", host, resp.StatusCode, want)
		}
	}
	// A write with a foreign Host changes nothing.
	before := a.FSM().Digest()
	req, _ := http.NewRequest("PUT", a.URL+"/v1/services", strings.NewReader(`{"id":"w","name":"w","port":1}`))
	req.Host = "attacker.example"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("write with a foreign Host: %d", resp.StatusCode)
	}
	if a.FSM().Digest() != before {
		t.Fatal("a refused write changed the registry")
	}
}
