package dnsserver_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/sidecarhq/sidecar/dnsserver"
	"github.com/sidecarhq/sidecar/fsm"
)

// row is one query of the table and what its answer must be.
type row struct {
	name   string
	q      query
	rcode  int
	answer []string // zone lines, compared as a set; nil: empty
	extra  []string // zone lines, compared as a set (OPT aside); nil: empty
	soa    bool     // the authority section holds the domain's SOA
}

func TestServer_answers(t *testing.T) {
	fx := newFixture(t)
	// The cache of service matches is used only with a Watcher: both
	// ways must answer alike.
	for _, reg := range []struct {
		name string
		reg  dnsserver.Registry
	}{{"fsm", fx.reg.f}, {"without Watcher", noWatch{fx.reg.f}}} {
		t.Run(reg.name, func(t *testing.T) {
			s, _ := startServer(t, dnsserver.TestConfig(), reg.reg)
			testAnswers(t, fx, s.Addr())
		})
	}
}

func testAnswers(t *testing.T, fx *fixture, addr string) {
	const (
		A, AAAA, SRV, TXT, ANY, SOA = dns.TypeA, dns.TypeAAAA, dns.TypeSRV, dns.TypeTXT, dns.TypeANY, dns.TypeSOA
		ok, nx                      = dns.RcodeSuccess, dns.RcodeNameError
	)
	webSRV := func(owner string) []string {
		return []string{
			owner + " 5 IN SRV 1 1 8080 0a000101.addr.sidecar.",
			owner + " 5 IN SRV 1 1 8081 node2.node.sidecar.",
			owner + " 5 IN SRV 1 1 8085 fd000000000000000000000000000005.addr.sidecar.",
			owner + " 5 IN SRV 1 1 8086 web6.example.com.",
		}
	}
	webExtra := []string{
		"0a000101.addr.sidecar. 5 IN A 10.0.1.1",
		"node2.node.sidecar. 5 IN A 10.0.0.2",
		"fd000000000000000000000000000005.addr.sidecar. 5 IN AAAA fd00::5",
	}
	rows := []row{
		// Services: passing instances only (web-3 critical, web-4 on a
		// failed node, web-7 warning are left out); web-2 has no address
		// and uses its node's; web-6's host name has no A record.
		{name: "service A", q: query{name: "web.service.sidecar.", qtype: A}, rcode: ok, answer: []string{
			"web.service.sidecar. 5 IN A 10.0.1.1",
			"web.service.sidecar. 5 IN A 10.0.0.2",
		}},
		{name: "service AAAA", q: query{name: "web.service.sidecar.", qtype: AAAA}, rcode: ok, answer: []string{
			"web.service.sidecar. 5 IN AAAA fd00::5",
		}},
		{name: "service SRV", q: query{name: "web.service.sidecar.", qtype: SRV}, rcode: ok,
			answer: webSRV("web.service.sidecar."), extra: webExtra},
		{name: "service SRV over TCP", q: query{name: "web.service.sidecar.", qtype: SRV, net: "tcp"}, rcode: ok,
			answer: webSRV("web.service.sidecar."), extra: webExtra},
		{name: "RFC 2782 tcp", q: query{name: "_web._tcp.service.sidecar.", qtype: SRV}, rcode: ok,
			answer: webSRV("_web._tcp.service.sidecar."), extra: webExtra},
		{name: "RFC 2782 udp", q: query{name: "_web._udp.service.sidecar.", qtype: SRV}, rcode: ok,
			answer: webSRV("_web._udp.service.sidecar."), extra: webExtra},
		{name: "RFC 2782 tag", q: query{name: "_web._primary.service.sidecar.", qtype: SRV}, rcode: ok, answer: []string{
			"_web._primary.service.sidecar. 5 IN SRV 1 1 8080 0a000101.addr.sidecar.",
			"_web._primary.service.sidecar. 5 IN SRV 1 1 8085 fd000000000000000000000000000005.addr.sidecar.",
		}, extra: []string{
			"0a000101.addr.sidecar. 5 IN A 10.0.1.1",
			"fd000000000000000000000000000005.addr.sidecar. 5 IN AAAA fd00::5",
		}},
		{name: "one tag SRV", q: query{name: "primary.web.service.sidecar.", qtype: SRV}, rcode: ok, answer: []string{
			"primary.web.service.sidecar. 5 IN SRV 1 1 8080 0a000101.addr.sidecar.",
			"primary.web.service.sidecar. 5 IN SRV 1 1 8085 fd000000000000000000000000000005.addr.sidecar.",
		}, extra: []string{
			"0a000101.addr.sidecar. 5 IN A 10.0.1.1",
			"fd000000000000000000000000000005.addr.sidecar. 5 IN AAAA fd00::5",
		}},
		{name: "one tag A", q: query{name: "v1.web.service.sidecar.", qtype: A}, rcode: ok, answer: []string{
			"v1.web.service.sidecar. 5 IN A 10.0.1.1",
			"v1.web.service.sidecar. 5 IN A 10.0.0.2",
		}},
		{name: "two tags", q: query{name: "primary.v1.web.service.sidecar.", qtype: A}, rcode: ok, answer: []string{
			"primary.v1.web.service.sidecar. 5 IN A 10.0.1.1",
		}},
		{name: "two tags other order SRV", q: query{name: "v1.primary.web.service.sidecar.", qtype: SRV}, rcode: ok, answer: []string{
			"v1.primary.web.service.sidecar. 5 IN SRV 1 1 8080 0a000101.addr.sidecar.",
		}, extra: []string{"0a000101.addr.sidecar. 5 IN A 10.0.1.1"}},
		{name: "two tags, tag case ignored", q: query{name: "PRIMARY.v2.web.service.sidecar.", qtype: AAAA}, rcode: ok, answer: []string{
			"primary.v2.web.service.sidecar. 5 IN AAAA fd00::5",
		}},
		{name: "tags nobody has all of", q: query{name: "primary.ext.web.service.sidecar.", qtype: A}, rcode: ok, soa: true},
		{name: "unknown tag", q: query{name: "nosuch.web.service.sidecar.", qtype: SRV}, rcode: ok, soa: true},
		{name: "host-name instance has no A", q: query{name: "ext.web.service.sidecar.", qtype: A}, rcode: ok, soa: true},
		{name: "one address record per target", q: query{name: "api.service.sidecar.", qtype: SRV}, rcode: ok, answer: []string{
			"api.service.sidecar. 5 IN SRV 1 1 9001 0a000301.addr.sidecar.",
			"api.service.sidecar. 5 IN SRV 1 1 9002 0a000301.addr.sidecar.",
		}, extra: []string{"0a000301.addr.sidecar. 5 IN A 10.0.3.1"}},
		{name: "known service without passing instance", q: query{name: "db.service.sidecar.", qtype: A}, rcode: ok, soa: true},
		{name: "known service without passing instance SRV", q: query{name: "db.service.sidecar.", qtype: SRV}, rcode: ok, soa: true},
		{name: "unknown service", q: query{name: "nosuch.service.sidecar.", qtype: A}, rcode: nx, soa: true},
		{name: "unknown service SRV", q: query{name: "_nosuch._tcp.service.sidecar.", qtype: SRV}, rcode: nx, soa: true},
		{name: "service, other type", q: query{name: "web.service.sidecar.", qtype: TXT}, rcode: ok, soa: true},
		{name: "service ANY", q: query{name: "web.service.sidecar.", qtype: ANY}, rcode: ok, answer: []string{
			`web.service.sidecar. 5 IN HINFO "RFC8482" ""`,
		}},
		{name: "unknown service ANY", q: query{name: "nosuch.service.sidecar.", qtype: ANY}, rcode: nx, soa: true},
		{name: "case-insensitive service", q: query{name: "WEB.Service.SIDECAR.", qtype: A}, rcode: ok, answer: []string{
			"web.service.sidecar. 5 IN A 10.0.1.1",
			"web.service.sidecar. 5 IN A 10.0.0.2",
		}},

		// Nodes.
		{name: "node A", q: query{name: "node1.node.sidecar.", qtype: A}, rcode: ok, answer: []string{
			"node1.node.sidecar. 5 IN A 10.0.0.1",
		}},
		{name: "node of another family", q: query{name: "node1.node.sidecar.", qtype: AAAA}, rcode: ok, soa: true},
		{name: "node AAAA", q: query{name: "Node6.node.sidecar.", qtype: AAAA}, rcode: ok, answer: []string{
			"node6.node.sidecar. 5 IN AAAA fd00::6",
		}},
		{name: "node registered with capitals, queried lower", q: query{name: "node6.node.sidecar.", qtype: AAAA}, rcode: ok, answer: []string{
			"node6.node.sidecar. 5 IN AAAA fd00::6",
		}},
		{name: "node queried upper", q: query{name: "NODE1.NODE.SIDECAR.", qtype: A}, rcode: ok, answer: []string{
			"node1.node.sidecar. 5 IN A 10.0.0.1",
		}},
		{name: "failed node still has its address", q: query{name: "nodedown.node.sidecar.", qtype: A}, rcode: ok, answer: []string{
			"nodedown.node.sidecar. 5 IN A 10.0.0.9",
		}},
		{name: "node ANY", q: query{name: "node1.node.sidecar.", qtype: ANY}, rcode: ok, answer: []string{
			`node1.node.sidecar. 5 IN HINFO "RFC8482" ""`,
		}},
		{name: "unknown node", q: query{name: "nosuch.node.sidecar.", qtype: A}, rcode: nx, soa: true},
		{name: "too many labels", q: query{name: "a.node1.node.sidecar.", qtype: A}, rcode: nx, soa: true},

		// Encoded addresses, the SRV targets.
		{name: "addr A", q: query{name: "0a000101.addr.sidecar.", qtype: A}, rcode: ok, answer: []string{
			"0a000101.addr.sidecar. 5 IN A 10.0.1.1",
		}},
		{name: "addr A upper", q: query{name: "0A000101.ADDR.SIDECAR.", qtype: A}, rcode: ok, answer: []string{
			"0a000101.addr.sidecar. 5 IN A 10.0.1.1",
		}},
		{name: "addr AAAA", q: query{name: "fd000000000000000000000000000005.addr.sidecar.", qtype: AAAA}, rcode: ok, answer: []string{
			"fd000000000000000000000000000005.addr.sidecar. 5 IN AAAA fd00::5",
		}},
		{name: "addr of another family", q: query{name: "0a000101.addr.sidecar.", qtype: AAAA}, rcode: ok, soa: true},
		{name: "bad addr", q: query{name: "zz000101.addr.sidecar.", qtype: A}, rcode: nx, soa: true},

		// Leaders: TTL 5 unless the lease is shorter.
		{name: "leader A", q: query{name: "lead.leader.sidecar.", qtype: A}, rcode: ok, answer: []string{
			"lead.leader.sidecar. 5 IN A 10.0.2.1",
		}},
		{name: "leader SRV", q: query{name: "lead.leader.sidecar.", qtype: SRV}, rcode: ok, answer: []string{
			"lead.leader.sidecar. 5 IN SRV 1 1 9000 0a000201.addr.sidecar.",
		}, extra: []string{"0a000201.addr.sidecar. 5 IN A 10.0.2.1"}},
		{name: "leader TXT", q: query{name: "lead.leader.sidecar.", qtype: TXT}, rcode: ok, answer: []string{
			fmt.Sprintf(`lead.leader.sidecar. 5 IN TXT "token=%d"`, fx.tokens["lead"]),
		}},
		{name: "leader ANY", q: query{name: "lead.leader.sidecar.", qtype: ANY}, rcode: ok, answer: []string{
			`lead.leader.sidecar. 5 IN HINFO "RFC8482" ""`,
		}},
		{name: "leader host name A", q: query{name: "leadhost.leader.sidecar.", qtype: A}, rcode: ok, answer: []string{
			"leadhost.leader.sidecar. 5 IN CNAME db.example.com.",
		}},
		{name: "leader host name SRV", q: query{name: "leadhost.leader.sidecar.", qtype: SRV}, rcode: ok, answer: []string{
			"leadhost.leader.sidecar. 5 IN SRV 1 1 5432 db.example.com.",
		}},
		{name: "leader without port A", q: query{name: "leadnoport.leader.sidecar.", qtype: A}, rcode: ok, answer: []string{
			"leadnoport.leader.sidecar. 5 IN A 10.0.2.2",
		}},
		{name: "leader without port SRV", q: query{name: "leadnoport.leader.sidecar.", qtype: SRV}, rcode: ok, soa: true},
		{name: "leader IPv6 AAAA", q: query{name: "leadv6.leader.sidecar.", qtype: AAAA}, rcode: ok, answer: []string{
			"leadv6.leader.sidecar. 5 IN AAAA fd00::7",
		}},
		{name: "leader IPv6 A", q: query{name: "leadv6.leader.sidecar.", qtype: A}, rcode: ok, soa: true},
		{name: "leader IPv6 SRV", q: query{name: "leadv6.leader.sidecar.", qtype: SRV}, rcode: ok, answer: []string{
			"leadv6.leader.sidecar. 5 IN SRV 1 1 7000 fd000000000000000000000000000007.addr.sidecar.",
		}, extra: []string{"fd000000000000000000000000000007.addr.sidecar. 5 IN AAAA fd00::7"}},
		{name: "leader value :port uses its node", q: query{name: "leadnode.leader.sidecar.", qtype: SRV}, rcode: ok, answer: []string{
			"leadnode.leader.sidecar. 5 IN SRV 1 1 7100 0a000001.addr.sidecar.",
		}, extra: []string{"0a000001.addr.sidecar. 5 IN A 10.0.0.1"}},
		{name: "election registered with capitals", q: query{name: "leadcap.leader.sidecar.", qtype: A}, rcode: ok, answer: []string{
			"leadcap.leader.sidecar. 5 IN A 10.0.2.3",
		}},
		{name: "election queried upper", q: query{name: "LEAD.LEADER.SIDECAR.", qtype: A}, rcode: ok, answer: []string{
			"lead.leader.sidecar. 5 IN A 10.0.2.1",
		}},
		{name: "leader TTL capped by lease, rounded down", q: query{name: "leadshort.leader.sidecar.", qtype: A}, rcode: ok, answer: []string{
			"leadshort.leader.sidecar. 2 IN A 10.0.2.4",
		}},
		{name: "leader TTL capped by lease SRV", q: query{name: "leadshort.leader.sidecar.", qtype: SRV}, rcode: ok, answer: []string{
			"leadshort.leader.sidecar. 2 IN SRV 1 1 2 0a000204.addr.sidecar.",
		}, extra: []string{"0a000204.addr.sidecar. 2 IN A 10.0.2.4"}},
		{name: "leader TTL capped by lease TXT", q: query{name: "leadshort.leader.sidecar.", qtype: TXT}, rcode: ok, answer: []string{
			fmt.Sprintf(`leadshort.leader.sidecar. 2 IN TXT "token=%d"`, fx.tokens["leadshort"]),
		}},
		{name: "leader lease unknown: TTL 0", q: query{name: "leadunknown.leader.sidecar.", qtype: A}, rcode: ok, answer: []string{
			"leadunknown.leader.sidecar. 0 IN A 10.0.2.5",
		}},
		{name: "leader lease run out: TTL 0", q: query{name: "leadgone.leader.sidecar.", qtype: A}, rcode: ok, answer: []string{
			"leadgone.leader.sidecar. 0 IN A 10.0.2.6",
		}},
		{name: "vacant election", q: query{name: "vacant.leader.sidecar.", qtype: A}, rcode: ok, soa: true},
		{name: "unknown election", q: query{name: "nosuch.leader.sidecar.", qtype: A}, rcode: nx, soa: true},

		// The rest of the domain.
		{name: "apex SOA", q: query{name: "sidecar.", qtype: SOA}, rcode: ok, answer: []string{
			"sidecar. 5 IN SOA ns.sidecar. hostmaster.sidecar. SERIAL 3600 600 86400 5",
		}},
		{name: "apex A", q: query{name: "sidecar.", qtype: A}, rcode: ok, soa: true},
		{name: "empty non-terminal", q: query{name: "service.sidecar.", qtype: A}, rcode: ok, soa: true},
		{name: "apex NS", q: query{name: "sidecar.", qtype: dns.TypeNS}, rcode: ok,
			answer: []string{"sidecar. 5 IN NS ns.sidecar."}, extra: []string{"ns.sidecar. 5 IN A 127.0.0.1"}},
		{name: "apex ANY", q: query{name: "sidecar.", qtype: ANY}, rcode: ok, answer: []string{
			"sidecar. 5 IN SOA ns.sidecar. hostmaster.sidecar. SERIAL 3600 600 86400 5",
		}},
		{name: "name server A", q: query{name: "ns.sidecar.", qtype: A}, rcode: ok, answer: []string{"ns.sidecar. 5 IN A 127.0.0.1"}},
		{name: "name server upper", q: query{name: "NS.Sidecar.", qtype: A}, rcode: ok, answer: []string{"ns.sidecar. 5 IN A 127.0.0.1"}},
		{name: "name server of another family", q: query{name: "ns.sidecar.", qtype: AAAA}, rcode: ok, soa: true},
		{name: "below the name server", q: query{name: "x.ns.sidecar.", qtype: A}, rcode: nx, soa: true},

		// Empty non-terminals: every type, ANY included, gets NOERROR
		// with no record and the SOA (RFC 8020).
		{name: "ENT service ANY", q: query{name: "service.sidecar.", qtype: ANY}, rcode: ok, soa: true},
		{name: "ENT _tcp", q: query{name: "_tcp.service.sidecar.", qtype: SRV}, rcode: ok, soa: true},
		{name: "ENT _tcp A", q: query{name: "_tcp.service.sidecar.", qtype: A}, rcode: ok, soa: true},
		{name: "ENT _udp", q: query{name: "_udp.service.sidecar.", qtype: TXT}, rcode: ok, soa: true},
		{name: "ENT _<tag>", q: query{name: "_primary.service.sidecar.", qtype: SRV}, rcode: ok, soa: true},
		{name: "ENT _tcp upper", q: query{name: "_TCP.Service.sidecar.", qtype: ANY}, rcode: ok, soa: true},
		{name: "ENT node", q: query{name: "node.sidecar.", qtype: A}, rcode: ok, soa: true},
		{name: "ENT leader", q: query{name: "leader.sidecar.", qtype: TXT}, rcode: ok, soa: true},
		{name: "ENT addr", q: query{name: "addr.sidecar.", qtype: A}, rcode: ok, soa: true},
		{name: "nothing below an RFC 2782 name", q: query{name: "x._web._tcp.service.sidecar.", qtype: SRV}, rcode: nx, soa: true},
		{name: "RFC 2782 form without underscore", q: query{name: "web._tcp.service.sidecar.", qtype: SRV}, rcode: nx, soa: true},
		{name: "nothing below an addr", q: query{name: "x.0a000101.addr.sidecar.", qtype: A}, rcode: nx, soa: true},
		{name: "nothing below a leader", q: query{name: "x.lead.leader.sidecar.", qtype: A}, rcode: nx, soa: true},
		{name: "unknown kind", q: query{name: "foo.sidecar.", qtype: A}, rcode: nx, soa: true},
		{name: "unknown kind deeper", q: query{name: "a.b.foo.sidecar.", qtype: A}, rcode: nx, soa: true},
	}
	for _, tc := range rows {
		t.Run(tc.name, func(t *testing.T) {
			resp := exchange(t, addr, tc.q)
			if resp.Rcode != tc.rcode {
				t.Fatalf("rcode = %s, want %s\n%v", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tc.rcode], resp)
			}
			if !resp.Authoritative {
				t.Errorf("AA not set")
			}
			if resp.Truncated {
				t.Errorf("TC set on a small answer")
			}
			if got, want := rrStrings(resp.Answer), parseRRs(t, serial(tc.answer, resp)...); !slices.Equal(got, want) {
				t.Errorf("answer:\n got %q\nwant %q", got, want)
			}
			if got, want := rrStrings(resp.Extra), parseRRs(t, tc.extra...); !slices.Equal(got, want) {
				t.Errorf("additional:\n got %q\nwant %q", got, want)
			}
			hasSOA := len(resp.Ns) == 1 && resp.Ns[0].Header().Rrtype == dns.TypeSOA &&
				resp.Ns[0].Header().Name == "sidecar." && resp.Ns[0].(*dns.SOA).Minttl == 5
			if hasSOA != tc.soa || (!tc.soa && len(resp.Ns) > 0) {
				t.Errorf("authority = %v, want SOA: %v", resp.Ns, tc.soa)
			}
			// Owner names echo the question as asked.
			for _, rr := range resp.Answer {
				if rr.Header().Name != tc.q.name {
					t.Errorf("owner %q, want %q as asked", rr.Header().Name, tc.q.name)
				}
			}
		})
	}
}

// serial puts the SOA serial the server chose into expected SOA lines.
func serial(want []string, resp *dns.Msg) []string {
	out := slices.Clone(want)
	for _, rr := range resp.Answer {
		if soa, ok := rr.(*dns.SOA); ok {
			for i := range out {
				out[i] = strings.Replace(out[i], " SERIAL ", fmt.Sprintf(" %d ", soa.Serial), 1)
			}
		}
	}
	return out
}

func TestServer_SRVTargetsResolve(t *testing.T) {
	fx := newFixture(t)
	s, _ := startServer(t, dnsserver.TestConfig(), fx.reg.f)
	for _, name := range []string{"web.service.sidecar.", "big.service.sidecar.", "lead.leader.sidecar.", "leadnode.leader.sidecar."} {
		resp := exchange(t, s.Addr(), query{name: name, qtype: dns.TypeSRV, net: "tcp"})
		extra := map[string]string{}
		for _, rr := range resp.Extra {
			switch rr := rr.(type) {
			case *dns.A:
				extra[rr.Hdr.Name] = rr.A.String()
			case *dns.AAAA:
				extra[rr.Hdr.Name] = rr.AAAA.String()
			}
		}
		for _, rr := range resp.Answer {
			tgt := rr.(*dns.SRV).Target
			if !strings.HasSuffix(tgt, ".sidecar.") {
				continue // an outside host name
			}
			want, ok := extra[tgt]
			if !ok {
				t.Errorf("%s: target %s has no additional record", name, tgt)
				continue
			}
			var got []string
			for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
				r := exchange(t, s.Addr(), query{name: tgt, qtype: qt})
				for _, a := range r.Answer {
					switch a := a.(type) {
					case *dns.A:
						got = append(got, a.A.String())
					case *dns.AAAA:
						got = append(got, a.AAAA.String())
					}
				}
			}
			if len(got) != 1 || got[0] != want {
				t.Errorf("%s: target %s resolves to %v, additional says %s", name, tgt, got, want)
			}
		}
	}
}

func TestServer_truncation(t *testing.T) {
	fx := newFixture(t)
	s, _ := startServer(t, dnsserver.TestConfig(), fx.reg.f)
	cfg4k := dnsserver.TestConfig()
	cfg4k.MaxUDPSize = 4096
	s4k, _ := startServer(t, cfg4k, fx.reg.f)

	tests := []struct {
		name      string
		addr      string
		qtype     uint16
		edns      uint16
		wantTC    bool
		maxLen    int
		wantCount int // answers when not truncated
	}{
		{"A without EDNS0 exceeds 512", s.Addr(), dns.TypeA, 0, true, 512, 0},
		{"A fits the EDNS0 size", s.Addr(), dns.TypeA, 1232, false, 1232, 64},
		{"SRV exceeds the EDNS0 size", s.Addr(), dns.TypeSRV, 1232, true, 1232, 0},
		{"SRV exceeds MaxUDPSize whatever the client says", s.Addr(), dns.TypeSRV, 4096, true, 1232, 0},
		{"EDNS0 size below 512 counts as 512", s.Addr(), dns.TypeA, 100, true, 512, 0},
		{"SRV fits a larger MaxUDPSize", s4k.Addr(), dns.TypeSRV, 4096, false, 4096, 64},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q := query{name: "big.service.sidecar.", qtype: tc.qtype, edns: tc.edns}
			resp := exchange(t, tc.addr, q)
			resp.Compress = true
			packed, err := resp.Pack()
			if err != nil {
				t.Fatal(err)
			}
			if resp.Rcode != dns.RcodeSuccess || resp.Truncated != tc.wantTC {
				t.Fatalf("rcode %s TC %v, want NOERROR TC %v", dns.RcodeToString[resp.Rcode], resp.Truncated, tc.wantTC)
			}
			if len(packed) > tc.maxLen {
				t.Errorf("UDP answer of %d bytes, limit %d", len(packed), tc.maxLen)
			}
			if (tc.edns > 0) != (resp.IsEdns0() != nil) {
				t.Errorf("OPT in answer: %v, in query: %v", resp.IsEdns0() != nil, tc.edns > 0)
			}
			if !tc.wantTC {
				if len(resp.Answer) != tc.wantCount {
					t.Errorf("%d answers, want %d", len(resp.Answer), tc.wantCount)
				}
				return
			}
			if len(resp.Answer) >= 64 {
				t.Errorf("truncated answer still has %d records", len(resp.Answer))
			}
			// The client retries over TCP and gets the whole answer,
			// capped at MaxRecords.
			q.net = "tcp"
			full := exchange(t, tc.addr, q)
			if full.Truncated || full.Rcode != dns.RcodeSuccess {
				t.Fatalf("TCP: rcode %s TC %v", dns.RcodeToString[full.Rcode], full.Truncated)
			}
			if len(full.Answer) != 64 {
				t.Errorf("TCP: %d answers, want 64 (MaxRecords)", len(full.Answer))
			}
			if tc.qtype == dns.TypeSRV && len(rrStrings(full.Extra)) != 64 {
				t.Errorf("TCP: %d additional records, want 64", len(rrStrings(full.Extra)))
			}
		})
	}
}

func TestServer_shuffledAndSampled(t *testing.T) {
	fx := newFixture(t)
	s, _ := startServer(t, dnsserver.TestConfig(), fx.reg.f)
	orders := map[string]bool{}
	sets := map[string]bool{}
	for range 20 {
		resp := exchange(t, s.Addr(), query{name: "big.service.sidecar.", qtype: dns.TypeA, net: "tcp"})
		var order []string
		for _, rr := range resp.Answer {
			order = append(order, rr.(*dns.A).A.String())
		}
		if len(order) != 64 {
			t.Fatalf("%d answers, want 64", len(order))
		}
		orders[strings.Join(order, ",")] = true
		slices.Sort(order)
		sets[strings.Join(order, ",")] = true
	}
	if len(orders) < 2 {
		t.Errorf("20 answers came in %d order(s): not shuffled", len(orders))
	}
	// 100 instances, 64 per answer: the same asker keeps the same 64.
	if len(sets) != 1 {
		t.Errorf("20 answers to one asker held %d different sets of 64", len(sets))
	}
	// Other askers get other subsets: 20 of them miss one instance with
	// probability about 100*(0.36^20), 1e-7.
	seen := map[string]bool{}
	for i := range 20 {
		peer := &net.TCPAddr{IP: net.IPv4(10, 7, 0, byte(i+1)), Port: 4000 + i}
		for _, rr := range askFrom(t, s, peer, "big.service.sidecar.", dns.TypeA).Answer {
			seen[rr.(*dns.A).A.String()] = true
		}
	}
	if len(seen) != bigSize {
		t.Errorf("20 askers were answered %d of %d instances: the cap does not spread", len(seen), bigSize)
	}
}

func TestServer_EDNS0(t *testing.T) {
	fx := newFixture(t)
	s, _ := startServer(t, dnsserver.TestConfig(), fx.reg.f)
	for _, tc := range []struct {
		q     query
		rcode int
	}{
		{query{name: "web.service.sidecar.", qtype: dns.TypeA, edns: 1232}, dns.RcodeSuccess},
		{query{name: "nosuch.service.sidecar.", qtype: dns.TypeA, edns: 4096}, dns.RcodeNameError},
		{query{name: "web.service.sidecar.", qtype: dns.TypeSRV, edns: 512, net: "tcp"}, dns.RcodeSuccess},
		{query{name: "example.com.", qtype: dns.TypeA, edns: 1232}, dns.RcodeRefused},
	} {
		resp := exchange(t, s.Addr(), tc.q)
		opt := resp.IsEdns0()
		if opt == nil {
			t.Errorf("%s: no OPT record echoed", tc.q.name)
			continue
		}
		if opt.UDPSize() != 1232 || opt.Version() != 0 || resp.Rcode != tc.rcode {
			t.Errorf("%s: OPT size %d version %d rcode %s", tc.q.name, opt.UDPSize(), opt.Version(), dns.RcodeToString[resp.Rcode])
		}
	}
	resp := exchange(t, s.Addr(), query{name: "web.service.sidecar.", qtype: dns.TypeA})
	if resp.IsEdns0() != nil {
		t.Errorf("OPT record in the answer to a query without one")
	}

	// RFC 6891: an unknown EDNS version gets BADVERS.
	m := new(dns.Msg)
	m.SetQuestion("web.service.sidecar.", dns.TypeA)
	m.SetEdns0(1232, false)
	m.IsEdns0().SetVersion(1)
	resp, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Rcode != dns.RcodeBadVers || resp.IsEdns0() == nil || len(resp.Answer) != 0 {
		t.Errorf("EDNS version 1: rcode %s, OPT %v", dns.RcodeToString[resp.Rcode], resp.IsEdns0())
	}
}

func TestServer_malformed(t *testing.T) {
	fx := newFixture(t)
	s, _ := startServer(t, dnsserver.TestConfig(), fx.reg.f)
	c := &dns.Client{Timeout: 5 * time.Second}

	m := new(dns.Msg)
	m.SetQuestion("web.service.sidecar.", dns.TypeA)
	m.Question[0].Qclass = dns.ClassCHAOS
	resp, _, err := c.Exchange(m, s.Addr())
	if err != nil || resp.Rcode != dns.RcodeRefused {
		t.Errorf("class CHAOS: %v %v", resp, err)
	}

	m = new(dns.Msg)
	m.SetNotify("web.service.sidecar.")
	resp, _, err = c.Exchange(m, s.Addr())
	if err != nil || resp.Rcode != dns.RcodeNotImplemented {
		t.Errorf("NOTIFY: %v %v", resp, err)
	}

	// Two questions: miekg's server answers FORMERR before the handler.
	m = new(dns.Msg)
	m.SetQuestion("web.service.sidecar.", dns.TypeA)
	m.Question = append(m.Question, m.Question[0])
	resp, _, err = c.Exchange(m, s.Addr())
	if err != nil || resp.Rcode != dns.RcodeFormatError {
		t.Errorf("two questions: %v %v", resp, err)
	}
}

func TestServer_forwarding(t *testing.T) {
	good := startUpstream(t, dns.RcodeSuccess)
	refusing := startUpstream(t, dns.RcodeRefused)
	silent := silentUDP(t)
	closed := closedUDP(t)
	fx := newFixture(t)

	t.Run("first recursor answers", func(t *testing.T) {
		cfg := dnsserver.TestConfig()
		cfg.Recursors = []string{good.addr, silent}
		s, _ := startServer(t, cfg, fx.reg.f)
		resp := exchange(t, s.Addr(), query{name: "example.com.", qtype: dns.TypeA})
		want := parseRRs(t, "example.com. 60 IN A 93.184.216.34")
		if got := rrStrings(resp.Answer); resp.Rcode != dns.RcodeSuccess || !slices.Equal(got, want) {
			t.Errorf("rcode %s answer %q, want %q", dns.RcodeToString[resp.Rcode], got, want)
		}
		if resp.Authoritative {
			t.Errorf("AA set on a forwarded answer")
		}
		// Upstream NXDOMAIN is relayed, not retried.
		resp = exchange(t, s.Addr(), query{name: "nosuch.example.com.", qtype: dns.TypeA})
		if resp.Rcode != dns.RcodeNameError {
			t.Errorf("nosuch: rcode %s", dns.RcodeToString[resp.Rcode])
		}
		// Names of the domain never reach the recursor.
		n := good.count()
		exchange(t, s.Addr(), query{name: "nosuch.service.sidecar.", qtype: dns.TypeA})
		if good.count() != n {
			t.Errorf("a name of the domain was forwarded")
		}
	})

	t.Run("falls back past a dead and a refusing recursor", func(t *testing.T) {
		cfg := dnsserver.TestConfig()
		cfg.Recursors = []string{silent, refusing.addr, good.addr}
		s, _ := startServer(t, cfg, fx.reg.f)
		start := time.Now()
		resp := exchange(t, s.Addr(), query{name: "EXAMPLE.com.", qtype: dns.TypeA})
		if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
			t.Fatalf("rcode %s answer %v", dns.RcodeToString[resp.Rcode], resp.Answer)
		}
		if d := time.Since(start); d < cfg.RecursorTimeout || d > 3*cfg.RecursorTimeout+time.Second {
			t.Errorf("answered after %v: the dead recursor should cost one timeout (%v)", d, cfg.RecursorTimeout)
		}
		if refusing.count() == 0 {
			t.Errorf("the refusing recursor was not asked")
		}
	})

	t.Run("falls back past a closed port at once, over TCP too", func(t *testing.T) {
		cfg := dnsserver.TestConfig()
		cfg.Recursors = []string{closed, good.addr}
		s, _ := startServer(t, cfg, fx.reg.f)
		for _, n := range []string{"udp", "tcp"} {
			start := time.Now()
			resp := exchange(t, s.Addr(), query{name: "example.com.", qtype: dns.TypeA, net: n})
			if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
				t.Errorf("%s: rcode %s answer %v", n, dns.RcodeToString[resp.Rcode], resp.Answer)
			}
			if d := time.Since(start); d >= cfg.RecursorTimeout {
				t.Errorf("%s: a refused recursor cost %v, as much as a timeout", n, d)
			}
		}
	})

	t.Run("all recursors fail: SERVFAIL, or the last failure", func(t *testing.T) {
		cfg := dnsserver.TestConfig()
		cfg.Recursors = []string{silent, closed}
		s, _ := startServer(t, cfg, fx.reg.f)
		resp := exchange(t, s.Addr(), query{name: "example.com.", qtype: dns.TypeA, edns: 1232})
		if resp.Rcode != dns.RcodeServerFailure || resp.IsEdns0() == nil {
			t.Errorf("rcode %s, OPT %v; want SERVFAIL with OPT", dns.RcodeToString[resp.Rcode], resp.IsEdns0())
		}
		cfg.Recursors = []string{refusing.addr}
		s2, _ := startServer(t, cfg, fx.reg.f)
		resp = exchange(t, s2.Addr(), query{name: "example.com.", qtype: dns.TypeA})
		if resp.Rcode != dns.RcodeRefused {
			t.Errorf("rcode %s, want the recursor's REFUSED", dns.RcodeToString[resp.Rcode])
		}
	})

	t.Run("no recursors: REFUSED", func(t *testing.T) {
		s, _ := startServer(t, dnsserver.TestConfig(), fx.reg.f)
		resp := exchange(t, s.Addr(), query{name: "example.com.", qtype: dns.TypeA})
		if resp.Rcode != dns.RcodeRefused || len(resp.Answer) != 0 || resp.RecursionAvailable {
			t.Errorf("rcode %s RA %v answer %v", dns.RcodeToString[resp.Rcode], resp.RecursionAvailable, resp.Answer)
		}
	})

	t.Run("truncated upstream answer, then TCP", func(t *testing.T) {
		cfg := dnsserver.TestConfig()
		cfg.Recursors = []string{good.addr}
		s, _ := startServer(t, cfg, fx.reg.f)
		resp := exchange(t, s.Addr(), query{name: "big.example.com.", qtype: dns.TypeTXT})
		if !resp.Truncated {
			t.Errorf("UDP answer of 20 long TXT records not truncated (%d records)", len(resp.Answer))
		}
		resp = exchange(t, s.Addr(), query{name: "big.example.com.", qtype: dns.TypeTXT, net: "tcp"})
		if resp.Truncated || len(resp.Answer) != 20 {
			t.Errorf("TCP: TC %v, %d records", resp.Truncated, len(resp.Answer))
		}
	})
}

func TestServer_metrics(t *testing.T) {
	fx := newFixture(t)
	s, pr := startServer(t, dnsserver.TestConfig(), fx.reg.f)
	exchange(t, s.Addr(), query{name: "web.service.sidecar.", qtype: dns.TypeSRV})
	exchange(t, s.Addr(), query{name: "web.service.sidecar.", qtype: dns.TypeSRV})
	exchange(t, s.Addr(), query{name: "nosuch.service.sidecar.", qtype: dns.TypeA})
	exchange(t, s.Addr(), query{name: "web.service.sidecar.", qtype: dns.TypeNAPTR})

	want := map[string]float64{
		`qtype="SRV",rcode="NOERROR"`:   2,
		`qtype="A",rcode="NXDOMAIN"`:    1,
		`qtype="other",rcode="NOERROR"`: 1,
	}
	// The server counts a query after it wrote the answer, so the last
	// one may land a moment after the client has it: poll.
	var families []*dto.MetricFamily
	var got map[string]float64
	var histCount uint64
	deadline := time.Now().Add(5 * time.Second)
	for {
		var err error
		if families, err = pr.Gather(); err != nil {
			t.Fatal(err)
		}
		got, histCount = map[string]float64{}, 0
		for _, f := range families {
			switch f.GetName() {
			case "sidecar_dns_queries_total":
				for _, m := range f.GetMetric() {
					var labels []string
					for _, l := range m.GetLabel() {
						labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
					}
					got[strings.Join(labels, ",")] = m.GetCounter().GetValue()
				}
			case "sidecar_dns_request_duration_seconds":
				histCount = f.GetMetric()[0].GetHistogram().GetSampleCount()
			}
		}
		if histCount >= 4 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("sidecar_dns_queries_total{%s} = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
	if histCount != 4 {
		t.Errorf("duration histogram counted %d queries, want 4", histCount)
	}
	problems, err := promlint.NewWithMetricFamilies(families).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
}

func TestServer_lifecycle(t *testing.T) {
	fx := newFixture(t)

	t.Run("Close twice and before Start", func(t *testing.T) {
		s, err := dnsserver.New(dnsserver.TestConfig(), fx.reg.f, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Start(); !errors.Is(err, dnsserver.ErrClosed) {
			t.Fatalf("Start after Close: %v, want ErrClosed", err)
		}
	})

	t.Run("UDP and TCP on the same port", func(t *testing.T) {
		s, _ := startServer(t, dnsserver.TestConfig(), fx.reg.f)
		host, port, err := net.SplitHostPort(s.Addr())
		if err != nil || host != "127.0.0.1" || port == "0" {
			t.Fatalf("Addr() = %q", s.Addr())
		}
		if err := s.Start(); err != nil {
			t.Fatalf("second Start: %v", err)
		}
		for _, n := range []string{"udp", "tcp"} {
			resp := exchange(t, s.Addr(), query{name: "node1.node.sidecar.", qtype: dns.TypeA, net: n})
			if len(resp.Answer) != 1 {
				t.Errorf("%s: %v", n, resp)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("Run until the context ends", func(t *testing.T) {
		cfg := dnsserver.TestConfig()
		cfg.Logger = testLogger(t)
		s, err := dnsserver.New(cfg, fx.reg.f, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		deadline := time.Now().Add(5 * time.Second)
		for s.Addr() == "" && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		resp := exchange(t, s.Addr(), query{name: "lead.leader.sidecar.", qtype: dns.TypeA})
		// Without Leases, leader answers are never cached.
		if len(resp.Answer) != 1 || resp.Answer[0].Header().Ttl != 0 {
			t.Errorf("leader answer without Leases: %v", resp.Answer)
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after cancel")
		}
	})

	t.Run("address in use", func(t *testing.T) {
		s, _ := startServer(t, dnsserver.TestConfig(), fx.reg.f)
		cfg := dnsserver.TestConfig()
		cfg.Addr = s.Addr()
		cfg.Registerer = prometheus.NewRegistry()
		s2, err := dnsserver.New(cfg, fx.reg.f, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s2.Close()
		if err := s2.Start(); err == nil {
			t.Fatal("Start on a busy address succeeded")
		}
	})
}

func TestNew_config(t *testing.T) {
	fx := newFixture(t)
	bad := []func(*dnsserver.Config){
		func(c *dnsserver.Config) { c.Addr = "" },
		func(c *dnsserver.Config) { c.Addr = "127.0.0.1" },
		func(c *dnsserver.Config) { c.Domain = "." },
		func(c *dnsserver.Config) { c.Domain = "a..b" },
		func(c *dnsserver.Config) { c.ServiceTTL = -time.Second },
		func(c *dnsserver.Config) { c.MaxRecords = 0 },
		func(c *dnsserver.Config) { c.MaxUDPSize = 100 },
		func(c *dnsserver.Config) { c.Recursors = []string{"1.1.1.1"}; c.RecursorTimeout = 0 },
	}
	for i, mod := range bad {
		cfg := dnsserver.DefaultConfig()
		mod(&cfg)
		if _, err := dnsserver.New(cfg, fx.reg.f, nil); !errors.Is(err, dnsserver.ErrConfig) {
			t.Errorf("case %d: New(%+v) = %v, want ErrConfig", i, cfg, err)
		}
	}
	if _, err := dnsserver.New(dnsserver.DefaultConfig(), nil, nil); !errors.Is(err, dnsserver.ErrConfig) {
		t.Errorf("nil registry: %v", err)
	}
	pr := prometheus.NewRegistry()
	cfg := dnsserver.DefaultConfig()
	cfg.Registerer = pr
	if _, err := dnsserver.New(cfg, fx.reg.f, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := dnsserver.New(cfg, fx.reg.f, nil); err == nil {
		t.Errorf("two servers on one registerer")
	}
}

func TestServer_otherDomain(t *testing.T) {
	fx := newFixture(t)
	cfg := dnsserver.TestConfig()
	cfg.Domain = "Mesh.Example" // no final dot, capitals
	s, _ := startServer(t, cfg, fx.reg.f)
	resp := exchange(t, s.Addr(), query{name: "web.service.mesh.example.", qtype: dns.TypeSRV})
	if len(resp.Answer) != 4 {
		t.Fatalf("answer %v", resp.Answer)
	}
	for _, rr := range resp.Answer {
		if tgt := rr.(*dns.SRV).Target; tgt != "web6.example.com." && !strings.HasSuffix(tgt, ".mesh.example.") {
			t.Errorf("target %s outside the domain", tgt)
		}
	}
	resp = exchange(t, s.Addr(), query{name: "web.service.sidecar.", qtype: dns.TypeA})
	if resp.Rcode != dns.RcodeRefused {
		t.Errorf("the default domain is answered: %v", resp)
	}
}

// TestServer_followsRegistry changes the registry between queries: answers
// must follow at once, cache or not.
func TestServer_followsRegistry(t *testing.T) {
	for _, mode := range []string{"fsm", "without Watcher"} {
		t.Run(mode, func(t *testing.T) {
			r := newRegistry(t)
			r.apply(node("n1", "10.0.0.1"), node("n2", "10.0.0.2"))
			r.apply(
				withCheck(instance("a", "svc", "n1", "10.0.5.1", 1), fsm.StatusPassing),
				instance("b", "svc", "n2", "", 2, "blue"),
			)
			var reg dnsserver.Registry = r.f
			if mode != "fsm" {
				reg = noWatch{r.f}
			}
			s, _ := startServer(t, dnsserver.TestConfig(), reg)
			expect := func(step, name string, qtype uint16, rcode int, want ...string) {
				t.Helper()
				resp := exchange(t, s.Addr(), query{name: name, qtype: qtype})
				if got, w := rrStrings(resp.Answer), parseRRs(t, want...); resp.Rcode != rcode || !slices.Equal(got, w) {
					t.Fatalf("%s: %s %s: rcode %s answer %q, want %s %q", step, name, dns.TypeToString[qtype],
						dns.RcodeToString[resp.Rcode], got, dns.RcodeToString[rcode], w)
				}
			}
			const svcA = "svc.service.sidecar."
			expect("start", svcA, dns.TypeA, dns.RcodeSuccess, svcA+" 5 IN A 10.0.5.1", svcA+" 5 IN A 10.0.0.2")
			expect("start", "blue."+svcA, dns.TypeA, dns.RcodeSuccess, "blue."+svcA+" 5 IN A 10.0.0.2")

			r.apply(&fsm.UpdateCheck{Node: "n1", CheckID: "a:ttl", Status: fsm.StatusCritical})
			expect("check critical", svcA, dns.TypeA, dns.RcodeSuccess, svcA+" 5 IN A 10.0.0.2")

			r.apply(node("n2", "10.0.0.22"))
			expect("node moved", svcA, dns.TypeA, dns.RcodeSuccess, svcA+" 5 IN A 10.0.0.22")
			expect("node moved", svcA, dns.TypeSRV, dns.RcodeSuccess, svcA+" 5 IN SRV 1 1 2 n2.node.sidecar.")

			r.apply(&fsm.SetNodeStatus{Name: "n2", Status: fsm.NodeFailed})
			expect("node failed", svcA, dns.TypeA, dns.RcodeSuccess)
			expect("node failed", "blue."+svcA, dns.TypeA, dns.RcodeSuccess)

			r.apply(&fsm.UpdateCheck{Node: "n1", CheckID: "a:ttl", Status: fsm.StatusPassing})
			expect("check passing", svcA, dns.TypeA, dns.RcodeSuccess, svcA+" 5 IN A 10.0.5.1")

			r.apply(&fsm.DeregisterInstance{Node: "n1", ID: "a"}, &fsm.DeregisterInstance{Node: "n2", ID: "b"})
			expect("deregistered", svcA, dns.TypeA, dns.RcodeNameError)

			r.apply(instance("c", "svc", "n1", "10.0.5.3", 3))
			expect("registered again", svcA, dns.TypeA, dns.RcodeSuccess, svcA+" 5 IN A 10.0.5.3")

			// A snapshot restore replaces everything (a user's restore is
			// reindexed past the registry, as the servers do).
			empty := newRegistry(t)
			empty.apply(node("n1", "10.0.0.1"))
			var snap strings.Builder
			if err := empty.f.WriteSnapshot(&snap); err != nil {
				t.Fatal(err)
			}
			data, err := fsm.Reindex([]byte(snap.String()), r.f.Index()+1)
			if err != nil {
				t.Fatal(err)
			}
			if err := r.f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
				t.Fatal(err)
			}
			expect("restored", svcA, dns.TypeA, dns.RcodeNameError)
		})
	}
}

// TestServer_bareRegistry answers from a Registry with no optional
// capability: names registered with capitals are found as queried or in
// lower case only.
func TestServer_bareRegistry(t *testing.T) {
	fx := newFixture(t)
	s, _ := startServer(t, dnsserver.TestConfig(), bare{fx.reg.f})
	for _, tc := range []struct {
		name  string
		rcode int
	}{
		{"Node6.node.sidecar.", dns.RcodeSuccess},
		{"node1.node.sidecar.", dns.RcodeSuccess},
		{"NODE1.node.sidecar.", dns.RcodeSuccess},
		{"node6.node.sidecar.", dns.RcodeNameError},
		{"LeadCap.leader.sidecar.", dns.RcodeSuccess},
		{"web.service.sidecar.", dns.RcodeSuccess},
	} {
		if resp := exchange(t, s.Addr(), query{name: tc.name, qtype: dns.TypeANY}); resp.Rcode != tc.rcode {
			t.Errorf("%s: rcode %s, want %s", tc.name, dns.RcodeToString[resp.Rcode], dns.RcodeToString[tc.rcode])
		}
	}
	resp := exchange(t, s.Addr(), query{name: "web.service.sidecar.", qtype: dns.TypeSRV})
	if len(resp.Answer) != 4 || len(resp.Extra) != 3 {
		t.Errorf("web SRV: %v", resp)
	}
}
