package dnsserver_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/sidecarhq/sidecar/acl"
	"github.com/sidecarhq/sidecar/dnsserver"
	"github.com/sidecarhq/sidecar/fsm"
)

// askEDNS answers one query through the handler, as a UDP (or TCP) client
// with an EDNS0 buffer of size edns (0: no OPT record) would ask it; it
// returns the answer, parsed strictly, and its size on the wire.
func askEDNS(t testing.TB, s *dnsserver.Server, tcp bool, name string, qtype, edns uint16) (*dns.Msg, int) {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	if edns > 0 {
		q.SetEdns0(edns, false)
	}
	rec := &recorder{tcp: tcp}
	s.ServeDNS(rec, q)
	if len(rec.writes) != 1 {
		t.Fatalf("%s %s: %d answers", name, dns.TypeToString[qtype], len(rec.writes))
	}
	return strictUnpack(t, rec.writes[0]), len(rec.writes[0])
}

// TestServer_nameCase: every capital letter of a query name is folded,
// 'A' and 'Z' included, wherever it stands.
func TestServer_nameCase(t *testing.T) {
	r := newRegistry(t)
	r.apply(node("zulu", "10.0.0.26"), node("alpha", "10.0.0.1"))
	s, err := dnsserver.New(dnsserver.TestConfig(), r.f, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{
		"ZULU.node.sidecar.", "Zulu.node.sidecar.", "zuLU.node.sidecar.", "zulu.node.sidecaR.",
		"ALPHA.node.sidecar.", "alphA.node.sidecar.", "alpha.node.sidecAr.", "alpha.NODE.SIDECAR.",
	} {
		resp := ask(t, s, name, dns.TypeA)
		if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 || !resp.Authoritative {
			t.Errorf("%s: rcode %s AA %v answer %v, want its node's address", name, dns.RcodeToString[resp.Rcode], resp.Authoritative, resp.Answer)
			continue
		}
		// The owner echoes the question as asked.
		if got := resp.Answer[0].Header().Name; got != name {
			t.Errorf("%s: owner %s", name, got)
		}
	}
}

// TestServer_escapedLabels: a label that needs an escape (no registered
// name has one) does not exist, wherever the escape stands in the name.
func TestServer_escapedLabels(t *testing.T) {
	fx := newFixture(t)
	s, err := dnsserver.New(dnsserver.TestConfig(), fx.reg.f, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{
		`\@x.web.service.sidecar.`, `x\@.web.service.sidecar.`, `\.x.web.service.sidecar.`,
		`\@web.service.sidecar.`, `\046.node.sidecar.`,
	} {
		resp := ask(t, s, name, dns.TypeA)
		if resp.Rcode != dns.RcodeNameError || len(resp.Answer) != 0 || len(resp.Ns) != 1 {
			t.Errorf("%s: rcode %s answer %v authority %v, want NXDOMAIN with the SOA", name, dns.RcodeToString[resp.Rcode], resp.Answer, resp.Ns)
		}
	}
}

// TestServer_foldFollowsRegistry: a node or an election registered with
// capitals after the server answered others is found in lower case too.
func TestServer_foldFollowsRegistry(t *testing.T) {
	fx := newFixture(t)
	s, err := dnsserver.New(dnsserver.TestConfig(), fx.reg.f, nil)
	if err != nil {
		t.Fatal(err)
	}
	expect := func(name string, qtype uint16, rcode int) {
		t.Helper()
		if resp := ask(t, s, name, qtype); resp.Rcode != rcode {
			t.Fatalf("%s: rcode %s, want %s", name, dns.RcodeToString[resp.Rcode], dns.RcodeToString[rcode])
		}
	}
	// Lower-case lookups of names registered with capitals.
	expect("node6.node.sidecar.", dns.TypeAAAA, dns.RcodeSuccess)
	expect("leadcap.leader.sidecar.", dns.TypeA, dns.RcodeSuccess)
	expect("laternode.node.sidecar.", dns.TypeA, dns.RcodeNameError)
	expect("laterlead.leader.sidecar.", dns.TypeA, dns.RcodeNameError)

	fx.reg.apply(node("LaterNode", "10.0.0.77"))
	fx.reg.campaign("LaterLead", "lease-later", "10.0.2.77:1")
	expect("laternode.node.sidecar.", dns.TypeA, dns.RcodeSuccess)
	expect("laterlead.leader.sidecar.", dns.TypeA, dns.RcodeSuccess)
	expect("node6.node.sidecar.", dns.TypeAAAA, dns.RcodeSuccess)
}

// TestServer_longDomain: a domain near the longest a name allows still
// gives SRV targets of both families that resolve, and an answer too long
// for 512 bytes (a leader's CNAME to a long host name) is truncated with TC
// over UDP and whole over TCP.
func TestServer_longDomain(t *testing.T) {
	domain := strings.Repeat(strings.Repeat("d", 60)+".", 3) // 183 bytes
	host := strings.Repeat(strings.Repeat("h", 62)+".", 4)   // 252 bytes
	r := newRegistry(t)
	r.apply(node("n1", "10.0.0.1"))
	r.apply(instance("v4", "web", "n1", "10.0.1.1", 80), instance("v6", "web", "n1", "fd00::1", 81))
	election := strings.Repeat("e", 60)
	r.campaign(election, "lease-long", host[:len(host)-1]+":443")
	cfg := dnsserver.TestConfig()
	cfg.Domain = domain
	s, err := dnsserver.New(cfg, r.f, leases)
	if err != nil {
		t.Fatal(err)
	}

	resp, _ := askEDNS(t, s, true, "web.service."+domain, dns.TypeSRV, 0)
	want := parseRRs(t,
		"web.service."+domain+" 5 IN SRV 1 1 80 0a000101.addr."+domain,
		"web.service."+domain+" 5 IN SRV 1 1 81 fd000000000000000000000000000001.addr."+domain,
	)
	if got := rrStrings(resp.Answer); !slices.Equal(got, want) {
		t.Errorf("SRV:\n got %q\nwant %q", got, want)
	}
	wantExtra := parseRRs(t,
		"0a000101.addr."+domain+" 5 IN A 10.0.1.1",
		"fd000000000000000000000000000001.addr."+domain+" 5 IN AAAA fd00::1",
	)
	if got := rrStrings(resp.Extra); !slices.Equal(got, wantExtra) {
		t.Errorf("additional:\n got %q\nwant %q", got, wantExtra)
	}

	name := election + ".leader." + domain
	for _, tc := range []struct {
		tcp    bool
		edns   uint16
		wantTC bool
		limit  int
	}{{false, 0, true, 512}, {true, 0, false, 65535}, {false, 1232, false, 1232}} {
		resp, size := askEDNS(t, s, tc.tcp, name, dns.TypeA, tc.edns)
		if resp.Rcode != dns.RcodeSuccess || resp.Truncated != tc.wantTC || size > tc.limit {
			t.Errorf("tcp %v edns %d: rcode %s TC %v, %d bytes; want TC %v within %d bytes",
				tc.tcp, tc.edns, dns.RcodeToString[resp.Rcode], resp.Truncated, size, tc.wantTC, tc.limit)
		}
		if tc.wantTC {
			continue
		}
		if got, want := rrStrings(resp.Answer), parseRRs(t, name+" 5 IN CNAME "+host); !slices.Equal(got, want) {
			t.Errorf("tcp %v edns %d: answer %q, want %q", tc.tcp, tc.edns, got, want)
		}
	}
}

// TestServer_instanceFamilies: an instance without an address of its own
// answers with its node's, of either family, and an IPv6 address written
// with a leading "::" is an IPv6 address.
func TestServer_instanceFamilies(t *testing.T) {
	r := newRegistry(t)
	r.apply(node("v4node", "10.0.0.4"), node("v6node", "fd00::6"))
	r.apply(
		instance("on-v4", "svc", "v4node", "", 1),
		instance("on-v6", "svc", "v6node", "", 2),
		instance("low-v6", "svc", "v4node", "::abcd", 3),
		instance("plain-v4", "svc", "v4node", "10.0.1.1", 4),
	)
	for _, reg := range []struct {
		name string
		reg  dnsserver.Registry
	}{{"fsm", r.f}, {"without Watcher", noWatch{r.f}}} {
		t.Run(reg.name, func(t *testing.T) {
			s, err := dnsserver.New(dnsserver.TestConfig(), reg.reg, nil)
			if err != nil {
				t.Fatal(err)
			}
			const owner = "svc.service.sidecar."
			for _, tc := range []struct {
				qtype uint16
				want  []string
			}{
				{dns.TypeA, []string{owner + " 5 IN A 10.0.0.4", owner + " 5 IN A 10.0.1.1"}},
				{dns.TypeAAAA, []string{owner + " 5 IN AAAA fd00::6", owner + " 5 IN AAAA ::abcd"}},
			} {
				resp := ask(t, s, owner, tc.qtype)
				if got, want := rrStrings(resp.Answer), parseRRs(t, tc.want...); !slices.Equal(got, want) {
					t.Errorf("%s:\n got %q\nwant %q", dns.TypeToString[tc.qtype], got, want)
				}
			}
		})
	}
}

// TestServer_tagFormAndRFC2782FormDiffer: "_primary.web.service" filters
// on the tag "_primary" (as written), "_web._primary.service" on the tag
// "primary"; the answer to one must not depend on whether the other was
// asked first.
func TestServer_tagFormAndRFC2782FormDiffer(t *testing.T) {
	fx := newFixture(t)
	s, err := dnsserver.New(dnsserver.TestConfig(), fx.reg.f, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if resp := ask(t, s, "_primary.web.service.sidecar.", dns.TypeSRV); resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 0 {
			t.Errorf("tag _primary: rcode %s answer %v, want NODATA (no instance has it)", dns.RcodeToString[resp.Rcode], resp.Answer)
		}
		if resp := ask(t, s, "_web._primary.service.sidecar.", dns.TypeSRV); len(resp.Answer) != 2 {
			t.Errorf("_web._primary: answer %v, want web-1 and web-5", resp.Answer)
		}
	}
}

// TestServer_nsAddress: ns.<domain>, the apex's name server, resolves to
// NSAddr, else to the address served, else (a wildcard) to the address of
// the node NodeName names, else to loopback of the wildcard's family.
func TestServer_nsAddress(t *testing.T) {
	fx := newFixture(t)
	fx.reg.apply(node("anynode", "0.0.0.0"))
	for _, tc := range []struct {
		addr, nodeName, nsAddr string
		a, aaaa                string // "": NODATA
	}{
		{addr: "127.0.0.1:7053", a: "127.0.0.1"},
		{addr: "127.0.0.1:7053", nsAddr: "fd00::53", aaaa: "fd00::53"},
		{addr: "10.1.2.3:7053", nodeName: "node2", a: "10.1.2.3"},
		{addr: "[fd00::1]:7053", aaaa: "fd00::1"},
		{addr: "0.0.0.0:7053", a: "127.0.0.1"},
		{addr: ":7053", a: "127.0.0.1"},
		{addr: "[::]:7053", aaaa: "::1"},
		{addr: "0.0.0.0:7053", nodeName: "node2", a: "10.0.0.2"},
		{addr: "[::]:7053", nodeName: "Node6", aaaa: "fd00::6"},
		{addr: "0.0.0.0:7053", nodeName: "nosuch", a: "127.0.0.1"},
		{addr: "0.0.0.0:7053", nodeName: "anynode", a: "127.0.0.1"},
	} {
		cfg := dnsserver.TestConfig()
		cfg.Addr, cfg.NodeName, cfg.NSAddr = tc.addr, tc.nodeName, tc.nsAddr
		s, err := dnsserver.New(cfg, fx.reg.f, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range []struct {
			qtype uint16
			want  string
		}{{dns.TypeA, tc.a}, {dns.TypeAAAA, tc.aaaa}} {
			resp := ask(t, s, "ns.sidecar.", q.qtype)
			var got string
			switch {
			case len(resp.Answer) == 1:
				got = strings.Fields(resp.Answer[0].String())[4]
			case len(resp.Answer) > 1:
				got = fmt.Sprint(resp.Answer)
			}
			if got != q.want || resp.Rcode != dns.RcodeSuccess {
				t.Errorf("addr %s node %q ns %q: ns.sidecar. %s = %q (%s), want %q",
					tc.addr, tc.nodeName, tc.nsAddr, dns.TypeToString[q.qtype], got, dns.RcodeToString[resp.Rcode], q.want)
			}
		}
	}
}

// TestServer_ACL_caseOfRegisteredNames: a grant on a service's name as
// registered lets it through whichever of its instances' spellings the
// grant matches, and the empty non-terminal above it exists when the grant
// names the lower-case form only.
func TestServer_ACL_caseOfRegisteredNames(t *testing.T) {
	r := newRegistry(t)
	r.apply(node("node1", "10.0.0.1"))
	// Two spellings of one service; the grant matches only the second.
	r.apply(instance("a", "BILLING", "node1", "10.0.5.1", 1), instance("b", "Billing", "node1", "10.0.5.2", 2))
	reg := ordered{r.f}
	for _, tc := range []struct {
		name  string
		grant []string
	}{
		{"registered spelling", []string{"Bill"}},
		{"lower case", []string{"billing"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			authz := &fakeAuthz{read: map[acl.Resource][]string{acl.Service: tc.grant}}
			cfg := dnsserver.TestConfig()
			cfg.ACL = func() dnsserver.Authorizer { return authz }
			s, err := dnsserver.New(cfg, reg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp := ask(t, s, "billing.service.sidecar.", dns.TypeA); resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 2 {
				t.Errorf("billing: rcode %s answer %v", dns.RcodeToString[resp.Rcode], resp.Answer)
			}
			if resp := ask(t, s, "service.sidecar.", dns.TypeA); resp.Rcode != dns.RcodeSuccess {
				t.Errorf("service.sidecar.: rcode %s, want NOERROR above a readable service", dns.RcodeToString[resp.Rcode])
			}
		})
	}
}

// ordered is the FSM visiting a service's instances sorted by ID, so that
// a test knows which instance comes first.
type ordered struct{ f *fsm.FSM }

func (o ordered) VisitService(name string, fn func(*fsm.Instance, string)) bool {
	type visit struct {
		in     fsm.Instance
		status string
	}
	var all []visit
	ok := o.f.VisitService(name, func(in *fsm.Instance, status string) {
		all = append(all, visit{*in, status})
	})
	slices.SortFunc(all, func(a, b visit) int { return strings.Compare(a.in.ID, b.in.ID) })
	for i := range all {
		fn(&all[i].in, all[i].status)
	}
	return ok
}
func (o ordered) Node(name string) (*fsm.Node, bool)      { return o.f.Node(name) }
func (o ordered) Election(name string) (*fsm.Mutex, bool) { return o.f.Election(name) }
func (o ordered) Services() map[string][]string           { return o.f.Services() }

// TestZone_loneUnderscore: "_" alone is neither a protocol nor an RFC 2782
// service label, so nothing lies at or below a name that uses it so.
func TestZone_loneUnderscore(t *testing.T) {
	fx := newFixture(t)
	s, err := dnsserver.New(dnsserver.TestConfig(), fx.reg.f, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"_.service.sidecar.", "_web._.service.sidecar.", "_._tcp.service.sidecar."} {
		for _, qtype := range []uint16{dns.TypeSRV, dns.TypeA} {
			if resp := ask(t, s, name, qtype); resp.Rcode != dns.RcodeNameError || len(resp.Ns) != 1 {
				t.Errorf("%s %s: rcode %s authority %v, want NXDOMAIN with the SOA", name, dns.TypeToString[qtype], dns.RcodeToString[resp.Rcode], resp.Ns)
			}
		}
	}
	// "_x" is a protocol (a tag): it exists while some service does.
	if resp := ask(t, s, "_x.service.sidecar.", dns.TypeSRV); resp.Rcode != dns.RcodeSuccess {
		t.Errorf("_x.service.sidecar.: rcode %s, want NOERROR", dns.RcodeToString[resp.Rcode])
	}
}

// TestServer_longestNames: names at the limits of DNS are answered: a
// service name of 63 bytes (the longest label), and a query name and SRV
// targets of 254 bytes (255 on the wire, the longest name).
func TestServer_longestNames(t *testing.T) {
	svc63 := strings.Repeat("s", 63)
	domain := strings.Repeat(strings.Repeat("d", 60)+".", 3) + strings.Repeat("d", 56) + "." // 240 bytes
	r := newRegistry(t)
	r.apply(node("node1", "10.0.0.1"))
	r.apply(instance("long-1", svc63, "node1", "10.0.1.1", 80), instance("web-1", "web01", "node1", "10.0.1.2", 80))

	s, err := dnsserver.New(dnsserver.TestConfig(), r.f, nil)
	if err != nil {
		t.Fatal(err)
	}
	name := svc63 + ".service.sidecar."
	if got, want := rrStrings(ask(t, s, name, dns.TypeA).Answer), parseRRs(t, name+" 5 IN A 10.0.1.1"); !slices.Equal(got, want) {
		t.Errorf("%s A: %q, want %q", name, got, want)
	}
	if got, want := rrStrings(ask(t, s, name, dns.TypeSRV).Answer), parseRRs(t, name+" 5 IN SRV 1 1 80 0a000101.addr.sidecar."); !slices.Equal(got, want) {
		t.Errorf("%s SRV: %q, want %q", name, got, want)
	}

	cfg := dnsserver.TestConfig()
	cfg.Domain = domain
	s, err = dnsserver.New(cfg, r.f, nil)
	if err != nil {
		t.Fatal(err)
	}
	name, target := "web01.service."+domain, "0a000102.addr."+domain
	if len(name) != 254 || len(target) != 254 {
		t.Fatalf("names of %d and %d bytes", len(name), len(target))
	}
	if got, want := rrStrings(ask(t, s, name, dns.TypeA).Answer), parseRRs(t, name+" 5 IN A 10.0.1.2"); !slices.Equal(got, want) {
		t.Errorf("254-byte name A: %q, want %q", got, want)
	}
	resp := askFrom(t, s, tcpPeer, name, dns.TypeSRV)
	if got, want := rrStrings(resp.Answer), parseRRs(t, name+" 5 IN SRV 1 1 80 "+target); !slices.Equal(got, want) {
		t.Errorf("254-byte name SRV: %q, want %q", got, want)
	}
	if got, want := rrStrings(resp.Extra), parseRRs(t, target+" 5 IN A 10.0.1.2"); !slices.Equal(got, want) {
		t.Errorf("254-byte target's address: %q, want %q", got, want)
	}
}
