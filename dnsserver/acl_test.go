package dnsserver_test

import (
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sidecarhq/sidecar/acl"
	"github.com/sidecarhq/sidecar/dnsserver"
)

// fakeAuthz grants read on names starting with one of its prefixes, by
// resource; it records what it was asked.
type fakeAuthz struct {
	read  map[acl.Resource][]string
	asked atomic.Int64
}

func (f *fakeAuthz) Allowed(res acl.Resource, name string, want acl.Access) bool {
	f.asked.Add(1)
	if want > acl.Read {
		return false
	}
	for _, p := range f.read[res] {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

func aclServer(t *testing.T, authz func() dnsserver.Authorizer) (*dnsserver.Server, *prometheus.Registry) {
	t.Helper()
	fx := newFixture(t)
	fx.reg.apply(instance("bill-1", "Billing", "node1", "10.0.5.1", 7000))
	cfg := dnsserver.TestConfig()
	cfg.ACL = authz
	return startServer(t, cfg, fx.reg.f)
}

// TestServer_ACL_names: every kind of name follows what the DNS token may
// read, and a name it may not read answers exactly as an absent one does
// (NXDOMAIN with the SOA), counted by kind.
func TestServer_ACL_names(t *testing.T) {
	authz := &fakeAuthz{read: map[acl.Resource][]string{
		acl.Service:  {"web", "Bill"},
		acl.Node:     {"node1", "Node6"},
		acl.Election: {"lead"},
	}}
	s, pr := aclServer(t, func() dnsserver.Authorizer { return authz })
	for _, tc := range []struct {
		name  string
		qtype uint16
		rcode int
		n     int // answers, -1: any number > 0
	}{
		{"web.service.sidecar.", dns.TypeA, dns.RcodeSuccess, -1},
		{"v1.web.service.sidecar.", dns.TypeSRV, dns.RcodeSuccess, -1},
		{"_web._tcp.service.sidecar.", dns.TypeSRV, dns.RcodeSuccess, -1},
		{"WEB.service.sidecar.", dns.TypeA, dns.RcodeSuccess, -1},
		// Registered as "Billing", granted by "Bill": found in any case.
		{"billing.service.sidecar.", dns.TypeA, dns.RcodeSuccess, 1},
		{"api.service.sidecar.", dns.TypeA, dns.RcodeNameError, 0},
		{"_api._tcp.service.sidecar.", dns.TypeSRV, dns.RcodeNameError, 0},
		{"primary.api.service.sidecar.", dns.TypeA, dns.RcodeNameError, 0},
		{"node1.node.sidecar.", dns.TypeA, dns.RcodeSuccess, 1},
		{"node6.node.sidecar.", dns.TypeAAAA, dns.RcodeSuccess, 1},
		{"node2.node.sidecar.", dns.TypeA, dns.RcodeNameError, 0},
		{"lead.leader.sidecar.", dns.TypeTXT, dns.RcodeSuccess, 1},
		{"leadhost.leader.sidecar.", dns.TypeSRV, dns.RcodeSuccess, 1},
		{"vacant.leader.sidecar.", dns.TypeA, dns.RcodeNameError, 0},
		// Unaffected: the apex, ns, .addr, and the empty non-terminals
		// above readable names.
		{"sidecar.", dns.TypeSOA, dns.RcodeSuccess, 1},
		{"0a000101.addr.sidecar.", dns.TypeA, dns.RcodeSuccess, 1},
		{"service.sidecar.", dns.TypeA, dns.RcodeSuccess, 0},
		{"node.sidecar.", dns.TypeA, dns.RcodeSuccess, 0},
		{"leader.sidecar.", dns.TypeA, dns.RcodeSuccess, 0},
	} {
		resp := exchange(t, s.Addr(), query{name: tc.name, qtype: tc.qtype, net: "tcp"})
		if resp.Rcode != tc.rcode {
			t.Errorf("%s %s: rcode %s, want %s", tc.name, dns.TypeToString[tc.qtype], dns.RcodeToString[resp.Rcode], dns.RcodeToString[tc.rcode])
			continue
		}
		if tc.n >= 0 && len(resp.Answer) != tc.n || tc.n < 0 && len(resp.Answer) == 0 {
			t.Errorf("%s %s: %d answers %v, want %d", tc.name, dns.TypeToString[tc.qtype], len(resp.Answer), resp.Answer, tc.n)
		}
		if tc.rcode == dns.RcodeNameError && (len(resp.Ns) != 1 || resp.Ns[0].Header().Rrtype != dns.TypeSOA) {
			t.Errorf("%s: a denied name answers %v in authority, want the SOA as an absent one", tc.name, resp.Ns)
		}
	}
	// A denied name and an absent one are the same answer, byte for byte
	// but the ID and the name.
	denied := exchange(t, s.Addr(), query{name: "api.service.sidecar.", qtype: dns.TypeA})
	absent := exchange(t, s.Addr(), query{name: "nosuch.service.sidecar.", qtype: dns.TypeA})
	denied.Id, denied.Question, absent.Id, absent.Question = 0, nil, 0, nil
	if denied.String() != absent.String() {
		t.Errorf("denied answer\n%v\ndiffers from an absent name's\n%v", denied, absent)
	}
	for kind, want := range map[string]float64{"service": 4, "node": 1, "election": 1} {
		got := testutil.ToFloat64(counterOf(t, pr, "sidecar_dns_acl_denied_total", "kind", kind))
		if got != want {
			t.Errorf("sidecar_dns_acl_denied_total{kind=%q} = %v, want %v", kind, got, want)
		}
	}
}

// TestServer_ACL_nothingReadable: an ACL that answers nil (an unknown DNS
// token) hides every registry name, and the empty non-terminals above
// them, which then have nothing readable beneath.
func TestServer_ACL_nothingReadable(t *testing.T) {
	s, _ := aclServer(t, func() dnsserver.Authorizer { return nil })
	for _, name := range []string{
		"web.service.sidecar.", "node1.node.sidecar.", "lead.leader.sidecar.",
		"service.sidecar.", "_tcp.service.sidecar.", "node.sidecar.", "leader.sidecar.",
	} {
		if resp := exchange(t, s.Addr(), query{name: name, qtype: dns.TypeA}); resp.Rcode != dns.RcodeNameError {
			t.Errorf("%s: rcode %s, want NXDOMAIN", name, dns.RcodeToString[resp.Rcode])
		}
	}
	if resp := exchange(t, s.Addr(), query{name: "sidecar.", qtype: dns.TypeSOA}); resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
		t.Errorf("apex SOA: %v", resp)
	}
}

// TestServer_ACL_perQuery: the authorizer is asked for each query, so a
// permission granted (a DNS token created) after the server started, or
// taken away, counts from the next query, even for a service whose
// answer is cached.
func TestServer_ACL_perQuery(t *testing.T) {
	none := &fakeAuthz{}
	web := &fakeAuthz{read: map[acl.Resource][]string{acl.Service: {"web"}}}
	var cur atomic.Pointer[fakeAuthz]
	cur.Store(none)
	s, _ := aclServer(t, func() dnsserver.Authorizer { return cur.Load() })
	q := query{name: "web.service.sidecar.", qtype: dns.TypeSRV, net: "tcp"}
	for i, step := range []struct {
		authz *fakeAuthz
		rcode int
	}{{none, dns.RcodeNameError}, {web, dns.RcodeSuccess}, {web, dns.RcodeSuccess}, {none, dns.RcodeNameError}, {web, dns.RcodeSuccess}} {
		cur.Store(step.authz)
		resp := exchange(t, s.Addr(), q)
		if resp.Rcode != step.rcode || step.rcode == dns.RcodeSuccess && len(resp.Answer) == 0 {
			t.Errorf("step %d: rcode %s with %d answers, want %s", i, dns.RcodeToString[resp.Rcode], len(resp.Answer), dns.RcodeToString[step.rcode])
		}
	}
}

// TestServer_ACL_allocatesNothing: an allowed service answer with an ACL
// set still allocates nothing.
func TestServer_ACL_allocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("under the race detector sync.Pool drops scratch buffers at random")
	}
	fx := newFixture(t)
	authz := &fakeAuthz{read: map[acl.Resource][]string{acl.Service: {""}}}
	cfg := dnsserver.TestConfig()
	cfg.ACL = func() dnsserver.Authorizer { return authz }
	s, err := dnsserver.New(cfg, fx.reg.f, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := new(dns.Msg)
	m.SetQuestion("web.service.sidecar.", dns.TypeSRV)
	var w dns.ResponseWriter = discard{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}}
	s.ServeDNS(w, m)
	if n := testing.AllocsPerRun(200, func() { s.ServeDNS(w, m) }); n > 0 {
		t.Errorf("%.1f allocations per allowed answer, want 0", n)
	}
	if authz.asked.Load() == 0 {
		t.Error("the authorizer was never asked")
	}
}

// counterOf returns the child of a counter vector by one label, through
// the registry's output.
func counterOf(t *testing.T, pr *prometheus.Registry, name, label, value string) prometheus.Collector {
	t.Helper()
	fams, err := pr.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					c := prometheus.NewCounter(prometheus.CounterOpts{Name: name})
					c.Add(m.GetCounter().GetValue())
					return c
				}
			}
		}
	}
	t.Fatalf("no %s{%s=%q}", name, label, value)
	return nil
}
