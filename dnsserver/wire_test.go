package dnsserver_test

import (
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/sidecarhq/sidecar/dnsserver"
)

// strictUnpack parses an answer as a strict resolver does: exactly the
// records its header counts, ending exactly at the end of the message
// (miekg/dns's Unpack forgives counts that claim more records than there
// are).
func strictUnpack(t testing.TB, msg []byte) *dns.Msg {
	t.Helper()
	resp := new(dns.Msg)
	if err := resp.Unpack(msg); err != nil {
		t.Fatalf("answer does not parse: %v", err)
	}
	if len(msg) < 12 {
		t.Fatalf("answer of %d bytes", len(msg))
	}
	counts := [4]int{}
	for i := range counts {
		counts[i] = int(binary.BigEndian.Uint16(msg[4+2*i:]))
	}
	off := 12
	for range counts[0] {
		var err error
		if _, off, err = dns.UnpackDomainName(msg, off); err != nil || off+4 > len(msg) {
			t.Fatalf("question: %v (offset %d of %d)", err, off, len(msg))
		}
		off += 4
	}
	for section, n := range counts[1:] {
		for i := range n {
			var err error
			if _, off, err = dns.UnpackRR(msg, off); err != nil {
				t.Fatalf("section %d: record %d of the %d counted: %v", section+1, i+1, n, err)
			}
		}
	}
	if off != len(msg) {
		t.Fatalf("records counted end at byte %d of %d", off, len(msg))
	}
	if got := [4]int{len(resp.Question), len(resp.Answer), len(resp.Ns), len(resp.Extra)}; got != counts {
		t.Fatalf("sections hold %v records, header counts %v", got, counts)
	}
	return resp
}

// TestServer_wireCounts: the header's counts match the records of every
// kind of answer, packed by hand (services) or not.
func TestServer_wireCounts(t *testing.T) {
	fx := newFixture(t)
	s, err := dnsserver.New(dnsserver.TestConfig(), fx.reg.f, leases)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []struct {
		name  string
		qtype uint16
	}{
		{"web.service.sidecar.", dns.TypeSRV}, {"web.service.sidecar.", dns.TypeA}, {"web.service.sidecar.", dns.TypeAAAA},
		{"api.service.sidecar.", dns.TypeSRV}, {"big.service.sidecar.", dns.TypeSRV}, {"big.service.sidecar.", dns.TypeA},
		{"lead.leader.sidecar.", dns.TypeSRV}, {"sidecar.", dns.TypeNS}, {"nosuch.service.sidecar.", dns.TypeA},
	} {
		for _, tcp := range []bool{false, true} {
			for _, edns := range []uint16{0, 1232} {
				m := new(dns.Msg)
				m.SetQuestion(q.name, q.qtype)
				if edns > 0 {
					m.SetEdns0(edns, false)
				}
				rec := &recorder{tcp: tcp}
				s.ServeDNS(rec, m)
				t.Run(fmt.Sprintf("%s %s tcp %v edns %d", q.name, dns.TypeToString[q.qtype], tcp, edns), func(t *testing.T) {
					strictUnpack(t, rec.writes[0])
				})
			}
		}
	}
}

// TestServer_SRVAnswerFitsExactly: a UDP SRV answer is whole, address
// records included, exactly when the whole answer (as TCP gets it) fits in
// 512 bytes, to the byte; else it is truncated. Services of 1 to 8
// instances, names of three lengths and domains of 2 to 41 bytes make
// answers of many sizes around 512, a few of exactly 512.
func TestServer_SRVAnswerFitsExactly(t *testing.T) {
	r := newRegistry(t)
	r.apply(node("node1", "10.0.0.1"))
	prefixes := []string{"s", "sv", "svc"}
	for k := 1; k <= 8; k++ {
		for _, p := range prefixes {
			for i := range k {
				r.apply(instance(fmt.Sprintf("%s%d-%d", p, k, i), fmt.Sprintf("%s%d", p, k), "node1", fmt.Sprintf("10.6.%d.%d", k, i+1), 80+i))
			}
		}
	}
	exact := 0
	for n := 1; n <= 40; n++ {
		cfg := dnsserver.TestConfig()
		cfg.Domain = strings.Repeat("x", n) + "."
		s, err := dnsserver.New(cfg, r.f, nil)
		if err != nil {
			t.Fatal(err)
		}
		for k := 1; k <= 8; k++ {
			for _, p := range prefixes {
				name := fmt.Sprintf("%s%d.service.%s", p, k, cfg.Domain)
				whole, wholeSize := askEDNS(t, s, true, name, dns.TypeSRV, 0)
				if len(whole.Answer) != k || len(whole.Extra) != k {
					t.Fatalf("%s over TCP: %d answers, %d additional, want %d each", name, len(whole.Answer), len(whole.Extra), k)
				}
				udp, udpSize := askEDNS(t, s, false, name, dns.TypeSRV, 0)
				if wholeSize == 512 {
					exact++
				}
				if wholeSize > 512 {
					if !udp.Truncated || udpSize > 512 {
						t.Errorf("%s: whole answer of %d bytes, UDP answer of %d with TC %v", name, wholeSize, udpSize, udp.Truncated)
					}
					continue
				}
				if udp.Truncated || udpSize != wholeSize || answerSet(udp) != answerSet(whole) ||
					strings.Join(rrStrings(udp.Extra), "\n") != strings.Join(rrStrings(whole.Extra), "\n") {
					t.Errorf("%s: whole answer of %d bytes fits, but UDP got %d bytes, TC %v, %d answers, %d additional",
						name, wholeSize, udpSize, udp.Truncated, len(udp.Answer), len(udp.Extra))
				}
			}
		}
	}
	if exact == 0 {
		t.Fatal("no answer of exactly 512 bytes: the test misses the edge it is for")
	}
}
