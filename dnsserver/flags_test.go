package dnsserver_test

import (
	"testing"

	"github.com/miekg/dns"

	"github.com/sidecarhq/sidecar/dnsserver"
)

// TestServer_headerFlags: every answer of the domain, packed by hand
// (services) or not (the rest), is authoritative, echoes the query's ID,
// RD and CD, and offers recursion (RA) exactly when recursors are
// configured.
func TestServer_headerFlags(t *testing.T) {
	fx := newFixture(t)
	for _, recursors := range [][]string{nil, {"127.0.0.1:1"}} {
		cfg := dnsserver.TestConfig()
		cfg.Recursors = recursors
		s, err := dnsserver.New(cfg, fx.reg.f, nil)
		if err != nil {
			t.Fatal(err)
		}
		wantRA := len(recursors) > 0
		for _, q := range []struct {
			name  string
			qtype uint16
			rcode int
		}{
			{"web.service.sidecar.", dns.TypeSRV, dns.RcodeSuccess},
			{"web.service.sidecar.", dns.TypeA, dns.RcodeSuccess},
			{"big.service.sidecar.", dns.TypeSRV, dns.RcodeSuccess}, // truncated
			{"node1.node.sidecar.", dns.TypeA, dns.RcodeSuccess},
			{"web.service.sidecar.", dns.TypeTXT, dns.RcodeSuccess},
			{"nosuch.service.sidecar.", dns.TypeA, dns.RcodeNameError},
		} {
			for _, bits := range []struct{ rd, cd bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
				m := new(dns.Msg)
				m.SetQuestion(q.name, q.qtype)
				m.Id = 4242
				m.RecursionDesired, m.CheckingDisabled = bits.rd, bits.cd
				rec := &recorder{}
				s.ServeDNS(rec, m)
				resp := new(dns.Msg)
				if err := resp.Unpack(rec.writes[0]); err != nil {
					t.Fatal(err)
				}
				if resp.Id != 4242 || !resp.Response || !resp.Authoritative || resp.Opcode != dns.OpcodeQuery ||
					resp.Rcode != q.rcode || resp.RecursionAvailable != wantRA ||
					resp.RecursionDesired != bits.rd || resp.CheckingDisabled != bits.cd {
					t.Errorf("recursors %v, %s %s RD %v CD %v: got id %d QR %v AA %v opcode %d rcode %s RA %v RD %v CD %v; want RA %v",
						recursors, q.name, dns.TypeToString[q.qtype], bits.rd, bits.cd,
						resp.Id, resp.Response, resp.Authoritative, resp.Opcode, dns.RcodeToString[resp.Rcode],
						resp.RecursionAvailable, resp.RecursionDesired, resp.CheckingDisabled, wantRA)
				}
			}
		}
	}
}
