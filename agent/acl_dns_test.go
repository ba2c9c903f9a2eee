package agent_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sidecarhq/sidecar/acl"
	"github.com/sidecarhq/sidecar/agent"
	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/fsm"
)

// Under --acl-default-policy deny, DNS answers follow --acl-dns-token
// (SPEC: Security): nothing while the token does not exist, the service
// once a token with that secret and service:read on it is created (after
// the agent started), and nothing again once it is deleted. Names its rules
// do not grant stay NXDOMAIN throughout.
func TestAgent_DNS_followsDNSToken(t *testing.T) {
	const dnsSecret, mgmtSecret = "dns-secret-7c1f", "mgmt-secret-93ab"
	a := agenttest.Start(t, func(c *agent.Config) {
		c.ACLDefaultPolicy = "deny"
		c.ACLDNSToken = dnsSecret
	})
	apply := func(cmd fsm.Command) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := a.Apply(ctx, cmd); err != nil {
			t.Fatalf("apply %s: %v", cmd.Type(), err)
		}
	}
	apply(&fsm.ACLSetToken{Create: true, Token: fsm.ACLToken{ID: "t-mgmt", SecretHash: acl.HashSecret(mgmtSecret), Management: true}})

	r, _ := http.NewRequest("PUT", a.URL+"/v1/services", strings.NewReader(`{"id":"web-1","name":"web","address":"10.1.2.3","port":8080}`))
	r.Header.Set(acl.HeaderToken, mgmtSecret)
	resp, err := http.DefaultClient.Do(r)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("register: %v %v", resp, err)
	}
	resp.Body.Close()
	agenttest.WaitFor(t, 10*time.Second, "web in the registry", func() bool {
		return a.FSM().VisitService("web", func(*fsm.Instance, string) {})
	})

	ask := func(name string, qtype uint16) *dns.Msg {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		in, err := dns.Exchange(m, a.DNSAddr())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return in
	}
	hidden := func(what string) {
		t.Helper()
		for _, q := range []struct {
			name  string
			qtype uint16
		}{{"web.service.sidecar.", dns.TypeA}, {"_web._tcp.service.sidecar.", dns.TypeSRV}, {"dev.node.sidecar.", dns.TypeA}} {
			if in := ask(q.name, q.qtype); in.Rcode != dns.RcodeNameError || len(in.Answer) != 0 {
				t.Errorf("%s: %s answers %s %v, want NXDOMAIN", what, q.name, dns.RcodeToString[in.Rcode], in.Answer)
			}
		}
	}
	hidden("no DNS token yet")

	rules, _ := json.Marshal(map[string]any{"service": map[string]string{"web": "read"}})
	apply(&fsm.ACLSetToken{Create: true, Token: fsm.ACLToken{ID: "t-dns", SecretHash: acl.HashSecret(dnsSecret), Rules: rules}})
	agenttest.WaitFor(t, 5*time.Second, "web answered once the DNS token exists", func() bool {
		in := ask("_web._tcp.service.sidecar.", dns.TypeSRV)
		return in.Rcode == dns.RcodeSuccess && len(in.Answer) == 1
	})
	if in := ask("web.service.sidecar.", dns.TypeA); len(in.Answer) != 1 || in.Answer[0].(*dns.A).A.String() != "10.1.2.3" {
		t.Errorf("web A with the DNS token: %v", in.Answer)
	}
	if in := ask("dev.node.sidecar.", dns.TypeA); in.Rcode != dns.RcodeNameError {
		t.Errorf("dev.node without node:read answers %s %v, want NXDOMAIN", dns.RcodeToString[in.Rcode], in.Answer)
	}

	apply(&fsm.ACLDeleteToken{ID: "t-dns"})
	agenttest.WaitFor(t, 5*time.Second, "web hidden once the DNS token is deleted", func() bool {
		return ask("web.service.sidecar.", dns.TypeA).Rcode == dns.RcodeNameError
	})
	hidden("DNS token deleted")
}
