package dnsserver_test

import (
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/sidecarhq/sidecar/dnsserver"
)

// TestServer_truncatedAnswerFillsDatagram: a service answer too large for
// one datagram keeps as many records as fit, to the byte, for A, AAAA and
// SRV, with and without EDNS0, whatever the length of the name asked (the
// domain's length varies it here over more than one record's size); and
// the records kept are the same ones at every query of one asker. (Each
// service's records are of one size here: with targets of several
// lengths, a shorter record past the first that does not fit is left out
// too.)
func TestServer_truncatedAnswerFillsDatagram(t *testing.T) {
	r := newRegistry(t)
	r.apply(node("node1", "10.0.0.1"))
	for i := range 40 {
		r.apply(
			instance(fmt.Sprintf("v4-%d", i), "web4", "node1", fmt.Sprintf("10.3.0.%d", i+1), 8000+i),
			instance(fmt.Sprintf("v6-%d", i), "web6", "node1", fmt.Sprintf("fd00::3:%x", i+1), 9000+i),
		)
	}
	for n := 1; n <= 30; n++ {
		cfg := dnsserver.TestConfig()
		cfg.Domain = strings.Repeat("x", n) + "."
		s, err := dnsserver.New(cfg, r.f, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			svc   string
			qtype uint16
			edns  uint16
		}{
			{"web4", dns.TypeA, 0}, {"web6", dns.TypeAAAA, 0}, {"web6", dns.TypeAAAA, 700},
			{"web4", dns.TypeSRV, 0}, {"web6", dns.TypeSRV, 0}, {"web4", dns.TypeSRV, 1232},
		} {
			name := tc.svc + ".service." + cfg.Domain
			limit := 512
			if tc.edns > 0 {
				limit = int(tc.edns)
			}
			var first string
			for i := range 8 {
				resp, size := askEDNS(t, s, false, name, tc.qtype, tc.edns)
				if !resp.Truncated || len(resp.Answer) == 0 || len(resp.Extra) > 1 {
					t.Fatalf("%s %s EDNS %d: TC %v, %d answers, %d additional; want a truncated answer without addresses",
						name, dns.TypeToString[tc.qtype], tc.edns, resp.Truncated, len(resp.Answer), len(resp.Extra))
				}
				// One more record of the kind answered would not fit.
				if rr := dns.Len(resp.Answer[0]) - len(name) + 1; size > limit || size+rr <= limit {
					t.Fatalf("%s %s EDNS %d: %d records in %d bytes: room left for another of %d bytes within %d",
						name, dns.TypeToString[tc.qtype], tc.edns, len(resp.Answer), size, rr, limit)
				}
				set := answerSet(resp)
				if i == 0 {
					first = set
				} else if set != first {
					t.Fatalf("%s %s EDNS %d: one asker got different truncated subsets", name, dns.TypeToString[tc.qtype], tc.edns)
				}
			}
		}
	}
}

// TestServer_largeAnswerAllocatesNothing: an answer larger than the
// server's initial 8 KB buffer (300 SRV records and their addresses over
// TCP, ~17 KB) still allocates nothing once the buffer has grown to it
// (README, "Performance").
func TestServer_largeAnswerAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("under the race detector sync.Pool drops scratch buffers at random")
	}
	r := newRegistry(t)
	r.apply(node("node1", "10.0.0.1"))
	for i := range 300 {
		r.apply(instance(fmt.Sprintf("web-%d", i), "web", "node1", fmt.Sprintf("10.3.%d.%d", i/250, i%250+1), 8000+i))
	}
	cfg := dnsserver.TestConfig()
	cfg.MaxRecords = 300
	s, err := dnsserver.New(cfg, r.f, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := new(dns.Msg)
	m.SetQuestion("web.service.sidecar.", dns.TypeSRV)
	rec := &recorder{tcp: true}
	s.ServeDNS(rec, m)
	resp := new(dns.Msg)
	if err := resp.Unpack(rec.writes[0]); err != nil {
		t.Fatal(err)
	}
	if len(resp.Answer) != 300 || len(resp.Extra) != 300 || len(rec.writes[0]) <= 8192 {
		t.Fatalf("%d answers, %d additional, %d bytes: want 300, 300, over 8 KB", len(resp.Answer), len(resp.Extra), len(rec.writes[0]))
	}
	var w dns.ResponseWriter = discard{tcpPeer}
	if n := testing.AllocsPerRun(100, func() { s.ServeDNS(w, m) }); n > 0 {
		t.Errorf("%.1f allocations per answer of %d bytes, want 0", n, len(rec.writes[0]))
	}
}

// TestServer_additionalRecordsCompressed: in a service answer the owner of
// each address record is a pointer to its SRV target whenever a pointer
// can reach it (offsets up to 0x3FFF, RFC 1035 4.1.4), and the target
// written whole beyond. The name's length puts one target exactly at
// 0x3FFF: 12 bytes of header, 35 of question, 41 per SRV record and its
// 18 bytes before the target give 65 + 41*398 = 16383.
func TestServer_additionalRecordsCompressed(t *testing.T) {
	const svc = "pointer-reach" // 13 bytes
	r := newRegistry(t)
	r.apply(node("node1", "10.0.0.1"))
	for i := range 400 {
		r.apply(instance(fmt.Sprintf("p-%d", i), svc, "node1", fmt.Sprintf("10.3.%d.%d", i/200, i%200+1), 8000+i))
	}
	cfg := dnsserver.TestConfig()
	cfg.MaxRecords = 400
	s, err := dnsserver.New(cfg, r.f, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := new(dns.Msg)
	m.SetQuestion(svc+".service.sidecar.", dns.TypeSRV)
	rec := &recorder{tcp: true}
	s.ServeDNS(rec, m)
	msg := rec.writes[0]
	resp := new(dns.Msg)
	if err := resp.Unpack(msg); err != nil {
		t.Fatal(err)
	}
	if len(resp.Answer) != 400 || len(resp.Extra) != 400 {
		t.Fatalf("%d answers, %d additional, want 400 each", len(resp.Answer), len(resp.Extra))
	}

	// Walk the records: where each SRV target starts, and how each
	// address record names its owner.
	off := 12
	_, off, err = dns.UnpackDomainName(msg, off)
	if err != nil {
		t.Fatal(err)
	}
	off += 4
	targets := map[string]int{} // target name → offset
	for range resp.Answer {
		if _, off, err = dns.UnpackDomainName(msg, off); err != nil {
			t.Fatal(err)
		}
		rdlen := int(msg[off+8])<<8 | int(msg[off+9])
		name, _, err := dns.UnpackDomainName(msg, off+10+6)
		if err != nil {
			t.Fatal(err)
		}
		targets[name] = off + 10 + 6
		off += 10 + rdlen
	}
	if !slices.Contains(slices.Collect(maps.Values(targets)), 0x3FFF) {
		t.Fatalf("no SRV target at offset 0x3FFF: the test's arithmetic is off")
	}
	pointers, whole := 0, 0
	for range resp.Extra {
		owner, next, err := dns.UnpackDomainName(msg, off)
		if err != nil {
			t.Fatal(err)
		}
		at, ok := targets[owner]
		if !ok {
			t.Fatalf("additional record of %s, no SRV target", owner)
		}
		isPtr := msg[off]&0xC0 == 0xC0
		switch {
		case at <= 0x3FFF && (!isPtr || int(msg[off]&0x3F)<<8|int(msg[off+1]) != at):
			t.Errorf("owner %s (target at %#x) not a pointer to its target", owner, at)
		case at > 0x3FFF && isPtr:
			t.Errorf("owner %s (target at %#x) is a pointer", owner, at)
		}
		if isPtr {
			pointers++
		} else {
			whole++
		}
		rdlen := int(msg[next+8])<<8 | int(msg[next+9])
		off = next + 10 + rdlen
	}
	if off != len(msg) || pointers == 0 || whole == 0 {
		t.Errorf("walked %d of %d bytes; %d owners as pointers, %d whole", off, len(msg), pointers, whole)
	}
}

// TestServer_truncatedSubsetsOnOnePort: instances that share a port (the
// usual case: every replica on :80) still give each asker its own subset
// of a truncated answer, so that askers spread over all of them.
func TestServer_truncatedSubsetsOnOnePort(t *testing.T) {
	r := newRegistry(t)
	r.apply(node("node1", "10.0.0.1"))
	for i := range 40 {
		r.apply(instance(fmt.Sprintf("web-%d", i), "web", "node1", fmt.Sprintf("10.3.0.%d", i+1), 80))
	}
	cfg := dnsserver.TestConfig()
	cfg.NodeName = "agent-a" // the same subsets on every machine
	s, err := dnsserver.New(cfg, r.f, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, qtype := range []uint16{dns.TypeA, dns.TypeSRV} {
		subsets, seen := map[string]bool{}, map[string]bool{}
		for i := range 20 {
			peer := &net.UDPAddr{IP: net.IPv4(10, 8, 0, byte(i+1)), Port: 53}
			resp := askFrom(t, s, peer, "web.service.sidecar.", qtype)
			if !resp.Truncated {
				t.Fatalf("%s answer of 40 instances not truncated", dns.TypeToString[qtype])
			}
			subsets[answerSet(resp)] = true
			for _, rr := range resp.Answer {
				seen[rr.String()] = true
			}
		}
		// Each answer keeps 11 (SRV) or 29 (A) of the 40: 20 askers
		// drawing them independently get 20 subsets and miss a given
		// instance with odds below 0.002.
		if len(subsets) < 15 || len(seen) < 35 {
			t.Errorf("%s: 20 askers got %d distinct subsets reaching %d of 40 instances", dns.TypeToString[qtype], len(subsets), len(seen))
		}
	}
}

// TestServer_cachedAnswersAllocateNothing: queries of several services and
// types in turn all stay cached together, so that none of them allocates.
func TestServer_cachedAnswersAllocateNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("under the race detector sync.Pool drops scratch buffers at random")
	}
	fx := newFixture(t)
	s, err := dnsserver.New(dnsserver.TestConfig(), fx.reg.f, nil)
	if err != nil {
		t.Fatal(err)
	}
	var queries []*dns.Msg
	for _, q := range []struct {
		name  string
		qtype uint16
	}{
		{"web.service.sidecar.", dns.TypeA}, {"web.service.sidecar.", dns.TypeSRV},
		{"api.service.sidecar.", dns.TypeSRV}, {"primary.web.service.sidecar.", dns.TypeAAAA},
	} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.qtype)
		queries = append(queries, m)
	}
	var w dns.ResponseWriter = discard{tcpPeer}
	all := func() {
		for _, m := range queries {
			s.ServeDNS(w, m)
		}
	}
	all() // fills the cache
	if n := testing.AllocsPerRun(100, all); n > 0 {
		t.Errorf("%.1f allocations per round of %d cached queries, want 0", n, len(queries))
	}
}
