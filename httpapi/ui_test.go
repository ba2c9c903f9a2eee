package httpapi_test

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/api"
)

// GET /v1/locks and /v1/elections list every name with holder, lease and
// waiters, vacant ones too, and block on their table.
func TestAPI_mutexListings(t *testing.T) {
	a := agenttest.Start(t, nil)
	u := a.URL
	r := do(t, "GET", u+"/v1/elections", "")
	mustOK(t, r)
	if strings.TrimSpace(string(r.body)) != "[]" {
		t.Fatalf("no elections yet: %s, want []", r.body)
	}
	idx := r.header.Get(api.HeaderIndex)
	var lease api.Lease
	r = do(t, "POST", u+"/v1/leases", `{"ttl":"30s"}`)
	mustOK(t, r)
	json.Unmarshal(r.body, &lease)

	done := make(chan reply, 1)
	go func() {
		req, _ := http.NewRequest("GET", u+"/v1/elections?index="+idx+"&wait=5s", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- reply{}
			return
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
		done <- reply{resp.StatusCode, resp.Header, []byte(b.String())}
	}()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	mustOK(t, do(t, "PUT", u+"/v1/elections/db/campaign", `{"candidate":"c1","value":"10.0.0.1:5432","lease":"`+lease.ID+`"}`))
	do(t, "PUT", u+"/v1/elections/db/campaign", `{"candidate":"c2","value":"10.0.0.2:5432","wait":"0s"}`)
	r = <-done
	if r.code != 200 || time.Since(start) > 3*time.Second {
		t.Fatalf("blocking listing: %d after %v: %s", r.code, time.Since(start), r.body)
	}
	r = do(t, "GET", u+"/v1/elections", "")
	var list []api.MutexInfo
	if err := json.Unmarshal(r.body, &list); err != nil || len(list) != 1 {
		t.Fatalf("elections: %s (%v)", r.body, err)
	}
	e := list[0]
	if e.Name != "db" || e.Holder == nil || e.Holder.Candidate != "c1" || e.Holder.Token == 0 || e.Holder.Token != e.LastToken {
		t.Fatalf("election: %+v", e)
	}
	if e.LeaseTTL != "30s" {
		t.Fatalf("lease_ttl %q, want 30s", e.LeaseTTL)
	}
	// The dev agent is the Raft leader: it knows the deadline.
	if d, err := time.ParseDuration(e.ExpiresIn); err != nil || d <= 0 || d > 30*time.Second {
		t.Fatalf("expires_in %q, want within (0, 30s]", e.ExpiresIn)
	}
	if len(e.Waiters) != 1 || e.Waiters[0].Candidate != "c2" || e.Waiters[0].Value != "10.0.0.2:5432" {
		t.Fatalf("waiters %+v, want c2", e.Waiters)
	}

	// Locks: a held one and a released (vacant) one, sorted by name.
	mustOK(t, do(t, "PUT", u+"/v1/locks/a-job", `{"lease":"`+lease.ID+`","value":"v"}`))
	mustOK(t, do(t, "PUT", u+"/v1/locks/b-job", `{"lease":"`+lease.ID+`"}`))
	mustOK(t, do(t, "DELETE", u+"/v1/locks/b-job", `{"lease":"`+lease.ID+`"}`))
	r = do(t, "GET", u+"/v1/locks", "")
	list = nil
	if err := json.Unmarshal(r.body, &list); err != nil || len(list) != 2 {
		t.Fatalf("locks: %s (%v)", r.body, err)
	}
	if list[0].Name != "a-job" || list[0].Holder == nil || list[0].Holder.Value != "v" || list[0].Holder.Candidate != "" {
		t.Fatalf("a-job: %+v", list[0])
	}
	if list[1].Name != "b-job" || list[1].Holder != nil || list[1].LastToken == 0 {
		t.Fatalf("b-job: %+v, want vacant with its last token", list[1])
	}
}

// GET /v1/members blocks on the node table.
func TestAPI_membersBlocking(t *testing.T) {
	a := agenttest.Start(t, nil)
	r := do(t, "GET", a.URL+"/v1/members", "")
	mustOK(t, r)
	idx, err := strconv.ParseUint(r.header.Get(api.HeaderIndex), 10, 64)
	if err != nil || idx == 0 {
		t.Fatalf("X-Sidecar-Index %q", r.header.Get(api.HeaderIndex))
	}
	// An answer before the wait must carry a greater index (the agent's
	// own gossip tags may still change just after it is ready); with
	// nothing changing, it waits.
	for try := 0; ; try++ {
		start := time.Now()
		r = do(t, "GET", a.URL+"/v1/members?index="+strconv.FormatUint(idx, 10)+"&wait=300ms", "")
		mustOK(t, r)
		if time.Since(start) >= 250*time.Millisecond {
			return
		}
		next, _ := strconv.ParseUint(r.header.Get(api.HeaderIndex), 10, 64)
		if next <= idx {
			t.Fatalf("answered after %v with index %d, not after %d: want the wait", time.Since(start), next, idx)
		}
		if try == 10 {
			t.Fatal("the members kept changing")
		}
		idx = next
	}
}

// The UI's files need no token; / leads to them; unknown API routes stay
// JSON 404s.
func TestAPI_ui(t *testing.T) {
	a := agenttest.Start(t, nil)
	r := do(t, "GET", a.URL+"/ui/", "")
	mustOK(t, r)
	if !strings.Contains(r.header.Get("Content-Type"), "text/html") || !strings.Contains(string(r.body), "<html") {
		t.Fatalf("/ui/: %s %.80s", r.header.Get("Content-Type"), r.body)
	}
	if !strings.Contains(r.header.Get("Content-Security-Policy"), "default-src 'self'") {
		t.Fatalf("/ui/ CSP %q", r.header.Get("Content-Security-Policy"))
	}
	for path, ctype := range map[string]string{"/ui/app.js": "javascript", "/ui/style.css": "text/css"} {
		r = do(t, "GET", a.URL+path, "")
		mustOK(t, r)
		if !strings.Contains(r.header.Get("Content-Type"), ctype) {
			t.Fatalf("%s: Content-Type %q", path, r.header.Get("Content-Type"))
		}
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get(a.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/ui/" {
		t.Fatalf("/: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	r = do(t, "GET", a.URL+"/nope", "")
	if r.code != 404 || !strings.Contains(string(r.body), `"error"`) {
		t.Fatalf("/nope: %d %s", r.code, r.body)
	}
	r = do(t, "GET", a.URL+"/ui/nope.js", "")
	if r.code != 404 {
		t.Fatalf("/ui/nope.js: %d", r.code)
	}
}
