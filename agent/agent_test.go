package agent_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/discovery/discoverytest"
)

func TestMain(m *testing.M) {
	discoverytest.VerifyTestMain(m)
}

// Every metric is named sidecar_* and passes Prometheus' own lint.
func TestAgent_Metrics_namingConventions(t *testing.T) {
	a := agenttest.Start(t, nil)
	// Touch the lazily created series.
	for _, req := range []struct{ method, path, body string }{
		{"PUT", "/v1/locks/job", `{}`}, {"PUT", "/v1/elections/db/campaign", `{"candidate":"c"}`}, {"GET", "/v1/status", ""},
	} {
		r, _ := http.NewRequest(req.method, a.URL+req.path, strings.NewReader(req.body))
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	families, err := a.Metrics().Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{
		"sidecar_raft_apply_duration_seconds": false, "sidecar_raft_state": false, "sidecar_http_requests_total": false,
		"sidecar_leases_active": false, "sidecar_lock_acquisitions_total": false, "sidecar_election_leader": false,
	}
	for _, f := range families {
		if !strings.HasPrefix(f.GetName(), "sidecar_") {
			t.Errorf("metric %s is not prefixed sidecar_", f.GetName())
		}
		if _, ok := want[f.GetName()]; ok {
			want[f.GetName()] = true
		}
	}
	for name, seen := range want {
		if !seen {
			t.Errorf("metric %s missing", name)
		}
	}
	problems, err := testutil.GatherAndLint(a.Metrics())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// The dev agent answers DNS for what is registered over HTTP.
func TestAgent_DNS_answersRegistrations(t *testing.T) {
	a := agenttest.Start(t, nil)
	r, _ := http.NewRequest("PUT", a.URL+"/v1/services", strings.NewReader(`{"id":"web-1","name":"web","address":"10.1.2.3","port":8080}`))
	resp, err := http.DefaultClient.Do(r)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("register: %v %v", resp, err)
	}
	resp.Body.Close()
	m := new(dns.Msg)
	m.SetQuestion("_web._tcp.service.sidecar.", dns.TypeSRV)
	in, err := dns.Exchange(m, a.DNSAddr())
	if err != nil {
		t.Fatal(err)
	}
	if len(in.Answer) != 1 || in.Answer[0].(*dns.SRV).Port != 8080 {
		t.Fatalf("SRV answer: %v", in.Answer)
	}
	var addr string
	for _, rr := range in.Extra {
		if a, ok := rr.(*dns.A); ok {
			addr = a.A.String()
		}
	}
	if addr != "10.1.2.3" {
		t.Fatalf("SRV additional A = %q, want 10.1.2.3 (%v)", addr, in.Extra)
	}
}
