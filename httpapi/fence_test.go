package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/api"
)

func lockAs(t *testing.T, u, name, lease string) api.LockResult {
	t.Helper()
	r := do(t, "PUT", u+"/v1/locks/"+name, `{"lease":"`+lease+`"}`)
	mustOK(t, r)
	var res api.LockResult
	json.Unmarshal(r.body, &res)
	return res
}

func fenceOf(t *testing.T, url string) (int, api.FenceResult) {
	t.Helper()
	r := do(t, "GET", url, "")
	var res api.FenceResult
	if r.code == 200 || r.code == 409 {
		if err := json.Unmarshal(r.body, &res); err != nil {
			t.Fatalf("fence answer %s", r.body)
		}
	}
	return r.code, res
}

// DELETE /v1/locks/{name} with a token releases only that acquisition: a
// late release naming an old token, on the same lease, is 409 naming the
// current token and changes nothing.
func TestAPI_unlockToken(t *testing.T) {
	a := agenttest.Start(t, nil)
	u := a.URL
	var lease api.Lease
	r := do(t, "POST", u+"/v1/leases", `{"ttl":"30s"}`)
	mustOK(t, r)
	json.Unmarshal(r.body, &lease)
	first := lockAs(t, u, "job", lease.ID)
	mustOK(t, do(t, "DELETE", u+"/v1/locks/job", fmt.Sprintf(`{"lease":%q,"token":%d}`, lease.ID, first.Token)))
	second := lockAs(t, u, "job", lease.ID)
	if second.Token <= first.Token {
		t.Fatalf("tokens %d then %d", first.Token, second.Token)
	}
	before := a.FSM().Digest()
	r = do(t, "DELETE", u+"/v1/locks/job", fmt.Sprintf(`{"lease":%q,"token":%d}`, lease.ID, first.Token))
	if r.code != http.StatusConflict || !strings.Contains(string(r.body), fmt.Sprintf("current token %d", second.Token)) {
		t.Fatalf("late release: %d %s, want 409 naming token %d", r.code, r.body, second.Token)
	}
	if a.FSM().Digest() != before {
		t.Fatal("a refused release changed the registry")
	}
	if m, _ := a.FSM().Lock("job"); m.Holder == nil || m.Holder.Token != second.Token {
		t.Fatalf("the newer hold ended: %+v", m.Holder)
	}
	// Through the Go client too.
	c, _ := api.NewClient(strings.TrimPrefix(u, "http://"))
	err := c.UnlockToken(context.Background(), "job", lease.ID, first.Token)
	if se, ok := err.(*api.StatusError); !ok || se.Code != http.StatusConflict {
		t.Fatalf("client UnlockToken(old) = %v, want a 409 StatusError", err)
	}
	if err := c.UnlockToken(context.Background(), "job", lease.ID, second.Token); err != nil {
		t.Fatal(err)
	}
}

// Fence routes: 200 for the live token, 409 with the current token for an
// old one, 409 with 0 when vacant; 400 without a token.
func TestAPI_fence(t *testing.T) {
	a := agenttest.Start(t, nil)
	u := a.URL
	held := lockAs(t, u, "job", "")
	for _, c := range []struct {
		url         string
		code        int
		current     bool
		token       uint64
		description string
	}{
		{fmt.Sprintf("/v1/locks/job/fence?token=%d", held.Token), 200, true, held.Token, "live token"},
		{fmt.Sprintf("/v1/locks/job/fence?token=%d", held.Token-1), 409, false, held.Token, "old token"},
		{"/v1/locks/never/fence?token=3", 409, false, 0, "vacant"},
	} {
		code, res := fenceOf(t, u+c.url)
		if code != c.code || res.Current != c.current || res.Token != c.token {
			t.Errorf("%s: %d %+v, want %d current %v token %d", c.description, code, res, c.code, c.current, c.token)
		}
	}
	for _, bad := range []string{"/v1/locks/job/fence", "/v1/locks/job/fence?token=x", "/v1/locks/job/fence?token=-1", "/v1/elections/db/fence?token="} {
		if r := do(t, "GET", u+bad, ""); r.code != 400 {
			t.Errorf("%s: %d %s, want 400", bad, r.code, r.body)
		}
	}
	mustOK(t, do(t, "PUT", u+"/v1/elections/db/campaign", `{"candidate":"c1","value":"x:1"}`))
	var info api.ElectionInfo
	json.Unmarshal(do(t, "GET", u+"/v1/elections/db", "").body, &info)
	if code, res := fenceOf(t, fmt.Sprintf("%s/v1/elections/db/fence?token=%d", u, info.Leader.Token)); code != 200 || !res.Current {
		t.Errorf("election live token: %d %+v", code, res)
	}
	mustOK(t, do(t, "DELETE", u+"/v1/elections/db/campaign?candidate=c1", ""))
	if code, res := fenceOf(t, fmt.Sprintf("%s/v1/elections/db/fence?token=%d", u, info.Leader.Token)); code != 409 || res.Current || res.Token != 0 {
		t.Errorf("vacant election: %d %+v, want 409 token 0", code, res)
	}
	// The Go client reads a 409 as an answer.
	c, _ := api.NewClient(strings.TrimPrefix(u, "http://"))
	if res, err := c.LockFence(context.Background(), "job", held.Token-1); err != nil || res.Current || res.Token != held.Token {
		t.Fatalf("client LockFence: %+v %v", res, err)
	}
}

func percentile(d []time.Duration, p float64) time.Duration {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[int(float64(len(d)-1)*p)]
}

// Through a client agent and a follower server, a fence check after the
// holder changed on the leader answers 409 with the new token (the check
// goes to the leader's read index). Prints the fence check latency through
// the client agent over 1,000 checks, and that of concurrent checks.
func TestAPI_fence_throughClient(t *testing.T) {
	servers := agenttest.Cluster(t, 3, nil)
	client := agenttest.Join(t, servers[0], "client-0", false, nil)
	client.WaitReady(30 * time.Second)
	var leader, follower *agenttest.Agent
	for _, s := range servers {
		if s.Server().IsLeader() {
			leader = s
		} else {
			follower = s
		}
	}
	var l1, l2 api.Lease
	json.Unmarshal(do(t, "POST", leader.URL+"/v1/leases", `{"ttl":"30s"}`).body, &l1)
	json.Unmarshal(do(t, "POST", leader.URL+"/v1/leases", `{"ttl":"30s"}`).body, &l2)
	old := lockAs(t, leader.URL, "job", l1.ID)
	mustOK(t, do(t, "DELETE", leader.URL+"/v1/locks/job", fmt.Sprintf(`{"lease":%q,"token":%d}`, l1.ID, old.Token)))
	cur := lockAs(t, leader.URL, "job", l2.ID)
	for _, n := range []*agenttest.Agent{client, follower} {
		// Asked at once after the leader acknowledged the new holder.
		code, res := fenceOf(t, fmt.Sprintf("%s/v1/locks/job/fence?token=%d", n.URL, old.Token))
		if code != 409 || res.Current || res.Token != cur.Token {
			t.Fatalf("%s: old token: %d %+v, want 409 naming %d", n.Node(), code, res, cur.Token)
		}
		if code, res := fenceOf(t, fmt.Sprintf("%s/v1/locks/job/fence?token=%d", n.URL, cur.Token)); code != 200 || !res.Current {
			t.Fatalf("%s: live token: %d %+v", n.Node(), code, res)
		}
	}

	c, _ := api.NewClient(strings.TrimPrefix(client.URL, "http://"))
	ctx := context.Background()
	lat := make([]time.Duration, 0, 1000)
	for i := 0; i < 1000; i++ {
		start := time.Now()
		res, err := c.LockFence(ctx, "job", cur.Token)
		lat = append(lat, time.Since(start))
		if err != nil || !res.Current {
			t.Fatalf("check %d: %+v %v", i, res, err)
		}
	}
	t.Logf("fence check through a client agent, 1000 sequential: p50 %v p99 %v", percentile(lat, 0.5), percentile(lat, 0.99))
	// 16 callers at once share leadership confirmations on the leader.
	var mu sync.Mutex
	conc := make([]time.Duration, 0, 1000)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000/16; i++ {
				s := time.Now()
				res, err := c.LockFence(ctx, "job", cur.Token)
				d := time.Since(s)
				if err != nil || !res.Current {
					t.Errorf("concurrent check: %+v %v", res, err)
					return
				}
				mu.Lock()
				conc = append(conc, d)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	t.Logf("fence check through a client agent, 16 concurrent callers: %d checks in %v, p50 %v p99 %v",
		len(conc), time.Since(start).Round(time.Millisecond), percentile(conc, 0.5), percentile(conc, 0.99))
}
