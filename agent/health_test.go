package agent_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/agent"
	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/healthcheck"
)

// Leadership follows health: a candidate tied to an instance whose HTTP
// check starts failing loses leadership within about one interval times the
// failure threshold, and the other candidate takes over.
func TestAgent_leadershipFollowsHealth(t *testing.T) {
	var code atomic.Int32
	code.Store(200)
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(int(code.Load())) }))
	defer target.Close()
	cc := healthcheck.TestConfig()
	a := agenttest.Start(t, func(c *agent.Config) { c.Checks = &cc })

	const interval = 100 * time.Millisecond
	if st, body := httpDo(t, "PUT", a.URL+"/v1/services", `{"id":"db-1","name":"db","port":5432,
		"checks":[{"type":"http","http":"`+target.URL+`","interval":"100ms","timeout":"50ms","failures_before_critical":2}]}`); st != 200 {
		t.Fatalf("register: %d %s", st, body)
	}
	agenttest.WaitFor(t, 5*time.Second, "db-1 passing", func() bool {
		_, body := httpDo(t, "GET", a.URL+"/v1/services/db?passing", "")
		return string(body) != "[]\n"
	})
	if st, body := httpDo(t, "PUT", a.URL+"/v1/elections/primary/campaign", `{"candidate":"a","value":"10.0.0.1:5432","service":"db-1"}`); st != 200 {
		t.Fatalf("campaign a: %d %s", st, body)
	}
	if st, body := httpDo(t, "PUT", a.URL+"/v1/elections/primary/campaign", `{"candidate":"b","value":"10.0.0.2:5432"}`); st != 200 {
		t.Fatalf("campaign b: %d %s", st, body)
	}
	leader := func() string {
		_, body := httpDo(t, "GET", a.URL+"/v1/elections/primary", "")
		return string(body)
	}
	if l := leader(); !strings.Contains(l, `"candidate":"a"`) {
		t.Fatalf("leader before failure: %s", l)
	}
	failed := time.Now()
	code.Store(500)
	agenttest.WaitFor(t, 10*time.Second, "b leads", func() bool { return strings.Contains(leader(), `"candidate":"b"`) })
	took := time.Since(failed)
	t.Logf("service turned critical; b led %v after the target started failing (interval %v, 2 failures)", took, interval)
	// Generous: a handover that waited for a lease TTL (5s) would fail it.
	if took > 2*time.Second {
		t.Fatalf("handover took %v, want about 2 intervals", took)
	}
	code.Store(200)
	agenttest.WaitFor(t, 5*time.Second, "a back in line", func() bool {
		m, _ := a.FSM().Election("primary")
		return m.WaiterIndex("a") == 0
	})
}
