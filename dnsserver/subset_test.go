package dnsserver_test

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/sidecarhq/sidecar/dnsserver"
	"github.com/sidecarhq/sidecar/fsm"
)

// askFrom answers one query through the handler as if peer asked (a
// *net.UDPAddr asks over UDP without EDNS0, so the answer is cut to 512
// bytes; a *net.TCPAddr over TCP).
func askFrom(t testing.TB, s *dnsserver.Server, peer net.Addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	_, tcp := peer.(*net.TCPAddr)
	rec := &recorder{tcp: tcp, remote: peer}
	s.ServeDNS(rec, q)
	if len(rec.writes) != 1 {
		t.Fatalf("%s: %d answers", name, len(rec.writes))
	}
	resp := new(dns.Msg)
	if err := resp.Unpack(rec.writes[0]); err != nil {
		t.Fatalf("%s: answer does not parse: %v", name, err)
	}
	return resp
}

// answerSet is the records of an answer section as sorted text.
func answerSet(m *dns.Msg) string {
	return strings.Join(rrStrings(m.Answer), "\n")
}

// fortyRegistry holds service web of 40 passing instances, weight 1.
func fortyRegistry(t testing.TB) *registry {
	r := newRegistry(t)
	r.apply(node("node1", "10.0.0.1"))
	for i := range 40 {
		r.apply(instance(fmt.Sprintf("web-%d", i), "web", "node1", fmt.Sprintf("10.3.0.%d", i+1), 8000+i))
	}
	return r
}

// TestServer_truncatedSubsetStable: a UDP answer too large for one datagram
// keeps the same records for the same asker while the service does not
// change, for SRV and A alike, and the order still varies.
func TestServer_truncatedSubsetStable(t *testing.T) {
	r := fortyRegistry(t)
	for _, reg := range []struct {
		name string
		reg  dnsserver.Registry
	}{{"fsm", r.f}, {"without Watcher", noWatch{r.f}}} {
		t.Run(reg.name, func(t *testing.T) {
			s, _ := startServer(t, dnsserver.TestConfig(), reg.reg)
			for _, qt := range []struct {
				qtype uint16
				edns  uint16
			}{{dns.TypeSRV, 0}, {dns.TypeSRV, 1232}, {dns.TypeA, 0}} {
				sets, orders := map[string]int{}, map[string]bool{}
				n := 0
				for range 50 {
					resp := exchange(t, s.Addr(), query{name: "_web._tcp.service.sidecar.", qtype: qt.qtype, edns: qt.edns})
					if !resp.Truncated || len(resp.Answer) == 0 || len(resp.Answer) >= 40 {
						t.Fatalf("%s: TC %v with %d records, want a truncated answer", dns.TypeToString[qt.qtype], resp.Truncated, len(resp.Answer))
					}
					n = len(resp.Answer)
					sets[answerSet(resp)]++
					var order []string
					for _, rr := range resp.Answer {
						order = append(order, rr.String())
					}
					orders[strings.Join(order, ",")] = true
				}
				if len(sets) != 1 {
					t.Errorf("%s EDNS %d: 50 truncated answers to one asker held %d different sets", dns.TypeToString[qt.qtype], qt.edns, len(sets))
				}
				if len(orders) < 2 {
					t.Errorf("%s EDNS %d: 50 answers in one order: the kept records are not shuffled", dns.TypeToString[qt.qtype], qt.edns)
				}
				t.Logf("%s EDNS %d: %d of 40 records per truncated answer, %d set(s), %d orders", dns.TypeToString[qt.qtype], qt.edns, n, len(sets), len(orders))
			}
		})
	}
}

// TestServer_truncatedSubsetsDifferByAgent: two agents answer the same
// asker with different subsets, so that askers spread over every instance;
// and one agent answers different askers differently.
func TestServer_truncatedSubsetsDifferByAgent(t *testing.T) {
	r := fortyRegistry(t)
	peer := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
	subset := func(s *dnsserver.Server, peer net.Addr, qtype uint16) string {
		resp := askFrom(t, s, peer, "web.service.sidecar.", qtype)
		if !resp.Truncated {
			t.Fatalf("%s answer of 40 instances not truncated", dns.TypeToString[qtype])
		}
		return answerSet(resp)
	}
	servers := map[string]*dnsserver.Server{}
	// "" stands for an agent that does not name its node: the host name
	// and listen address seed it.
	for _, name := range []string{"agent-a", "agent-b", ""} {
		cfg := dnsserver.TestConfig()
		cfg.NodeName = name
		s, err := dnsserver.New(cfg, r.f, nil)
		if err != nil {
			t.Fatal(err)
		}
		servers[name] = s
	}
	for _, qtype := range []uint16{dns.TypeSRV, dns.TypeA} {
		a, b, anon := subset(servers["agent-a"], peer, qtype), subset(servers["agent-b"], peer, qtype), subset(servers[""], peer, qtype)
		if a == b || a == anon || b == anon {
			t.Errorf("%s: agents answered the same truncated subset (a=b %v, a=unnamed %v, b=unnamed %v)", dns.TypeToString[qtype], a == b, a == anon, b == anon)
		}
		// The seed comes from the node name: the same name gives the
		// same subset, e.g. after a restart.
		cfg := dnsserver.TestConfig()
		cfg.NodeName = "agent-a"
		again, err := dnsserver.New(cfg, r.f, nil)
		if err != nil {
			t.Fatal(err)
		}
		if subset(again, peer, qtype) != a {
			t.Errorf("%s: same node name, other subset", dns.TypeToString[qtype])
		}
		other := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 40000}
		if subset(servers["agent-a"], other, qtype) == a {
			t.Errorf("%s: two askers got the same subset", dns.TypeToString[qtype])
		}
		// The port is not the asker: resolvers draw one per query.
		if subset(servers["agent-a"], &net.UDPAddr{IP: peer.IP, Port: 50000}, qtype) != a {
			t.Errorf("%s: another source port of the same asker got another subset", dns.TypeToString[qtype])
		}
	}
}

// TestServer_truncatedSubsetFollowsChanges: a registration changes the
// subset little (a kept instance stays kept unless the new one takes its
// place), and a removed instance leaves it.
func TestServer_truncatedSubsetFollowsChanges(t *testing.T) {
	r := fortyRegistry(t)
	s, err := dnsserver.New(dnsserver.TestConfig(), r.f, nil)
	if err != nil {
		t.Fatal(err)
	}
	peer := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
	before := rrStrings(askFrom(t, s, peer, "web.service.sidecar.", dns.TypeA).Answer)
	victim := before[0]
	var id string
	for i := range 40 {
		if f := strings.Fields(victim); f[len(f)-1] == fmt.Sprintf("10.3.0.%d", i+1) {
			id = fmt.Sprintf("web-%d", i)
		}
	}
	r.apply(&fsm.DeregisterInstance{Node: "node1", ID: id})
	after := rrStrings(askFrom(t, s, peer, "web.service.sidecar.", dns.TypeA).Answer)
	if slices.Contains(after, victim) {
		t.Errorf("deregistered %s still answered", victim)
	}
	kept := 0
	for _, rr := range before[1:] {
		if slices.Contains(after, rr) {
			kept++
		}
	}
	// Rendezvous hashing: every other kept record stays.
	if kept != len(before)-1 {
		t.Errorf("after one deregistration %d of the other %d kept records stayed", kept, len(before)-1)
	}
}

// TestServer_SRVWeights: SRV records carry each instance's weight, and
// instances stored without one (0) have weight 1.
func TestServer_SRVWeights(t *testing.T) {
	r := newRegistry(t)
	r.apply(node("node1", "10.0.0.1"))
	for i, w := range []int{0, 1, 3, 100, 65535} {
		in := instance(fmt.Sprintf("w-%d", i), "weighted", "node1", fmt.Sprintf("10.4.0.%d", i+1), 9000+i)
		in.Instance.Weight = w
		r.apply(in)
	}
	s, _ := startServer(t, dnsserver.TestConfig(), r.f)
	resp := exchange(t, s.Addr(), query{name: "_weighted._tcp.service.sidecar.", qtype: dns.TypeSRV, net: "tcp"})
	want := parseRRs(t,
		"_weighted._tcp.service.sidecar. 5 IN SRV 1 1 9000 0a040001.addr.sidecar.",
		"_weighted._tcp.service.sidecar. 5 IN SRV 1 1 9001 0a040002.addr.sidecar.",
		"_weighted._tcp.service.sidecar. 5 IN SRV 1 3 9002 0a040003.addr.sidecar.",
		"_weighted._tcp.service.sidecar. 5 IN SRV 1 100 9003 0a040004.addr.sidecar.",
		"_weighted._tcp.service.sidecar. 5 IN SRV 1 65535 9004 0a040005.addr.sidecar.",
	)
	if got := rrStrings(resp.Answer); !slices.Equal(got, want) {
		t.Errorf("SRV:\n got %q\nwant %q", got, want)
	}
}

// TestServer_weightedOrder: over 10,000 A answers for two instances of
// which one weighs three times the other, the heavier comes first 75% of
// the time (± 3%; the standard deviation is 0.43%), also when neither has
// the default weight 1.
func TestServer_weightedOrder(t *testing.T) {
	for _, w := range []struct{ light, heavy int }{{1, 3}, {2, 6}} {
		r := newRegistry(t)
		r.apply(node("node1", "10.0.0.1"))
		light := instance("light", "canary", "node1", "10.5.0.1", 80)
		heavy := instance("heavy", "canary", "node1", "10.5.0.3", 80)
		light.Instance.Weight, heavy.Instance.Weight = w.light, w.heavy
		r.apply(light, heavy)
		for _, reg := range []struct {
			name string
			reg  dnsserver.Registry
		}{{"fsm", r.f}, {"without Watcher", noWatch{r.f}}} {
			t.Run(fmt.Sprintf("%d:%d/%s", w.light, w.heavy, reg.name), func(t *testing.T) {
				s, err := dnsserver.New(dnsserver.TestConfig(), reg.reg, nil)
				if err != nil {
					t.Fatal(err)
				}
				const n = 10000
				first := 0
				for range n {
					resp := askFrom(t, s, udpPeer, "canary.service.sidecar.", dns.TypeA)
					if len(resp.Answer) != 2 {
						t.Fatalf("%d answers, want 2", len(resp.Answer))
					}
					if resp.Answer[0].(*dns.A).A.String() == "10.5.0.3" {
						first++
					}
				}
				share := float64(first) / n
				t.Logf("heavier instance first in %d of %d answers (%.2f%%)", first, n, 100*share)
				if share < 0.72 || share > 0.78 {
					t.Errorf("heavier instance first in %.2f%% of answers, want 75%% ± 3%%", 100*share)
				}
			})
		}
	}
}

// TestServer_truncatedSubsetWeighted: over many askers, a truncated answer
// keeps heavier instances more often, in proportion to their weight.
func TestServer_truncatedSubsetWeighted(t *testing.T) {
	r := newRegistry(t)
	r.apply(node("node1", "10.0.0.1"))
	for i := range 40 {
		in := instance(fmt.Sprintf("web-%d", i), "web", "node1", fmt.Sprintf("10.3.0.%d", i+1), 8000+i)
		if i < 10 {
			in.Instance.Weight = 10
		}
		r.apply(in)
	}
	cfg := dnsserver.TestConfig()
	cfg.NodeName = "agent-a" // the same subsets on every machine
	s, err := dnsserver.New(cfg, r.f, nil)
	if err != nil {
		t.Fatal(err)
	}
	heavy, light := 0, 0
	for i := range 200 {
		peer := &net.UDPAddr{IP: net.IPv4(10, 9, byte(i/250), byte(i%250+1)), Port: 53}
		resp := askFrom(t, s, peer, "_web._tcp.service.sidecar.", dns.TypeSRV)
		if !resp.Truncated {
			t.Fatal("answer of 40 SRV records not truncated")
		}
		for _, rr := range resp.Answer {
			if rr.(*dns.SRV).Weight == 10 {
				heavy++
			} else {
				light++
			}
		}
	}
	// 10 instances of weight 10 and 30 of weight 1; each answer keeps
	// about 11. Drawn by weight, a heavy instance is kept in most answers
	// and a light one in few: per instance, heavy ones are kept at least
	// 4 times as often (uniform subsets would keep both alike).
	perHeavy, perLight := float64(heavy)/10, float64(light)/30
	t.Logf("kept per heavy instance %.0f, per light instance %.0f, over 200 askers", perHeavy, perLight)
	if perHeavy < 4*perLight {
		t.Errorf("heavy instances kept %.1f times, light ones %.1f: the subset ignores weights", perHeavy, perLight)
	}
}

// TestServer_serviceAnswerAllocatesNothing: the choice of subsets, weights
// and the cache of orders keep service answers free of allocation once an
// asker's order is known (README, "Performance").
func TestServer_serviceAnswerAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("under the race detector sync.Pool drops scratch buffers at random")
	}
	r := fortyRegistry(t)
	canary := instance("canary", "web", "node1", "10.3.1.1", 9000)
	canary.Instance.Weight = 5
	r.apply(canary)
	s, err := dnsserver.New(dnsserver.TestConfig(), r.f, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		qtype uint16
		peer  net.Addr
	}{
		{"SRV truncated", dns.TypeSRV, udpPeer},
		{"A truncated", dns.TypeA, udpPeer},
		{"SRV whole", dns.TypeSRV, tcpPeer},
		{"A whole", dns.TypeA, tcpPeer},
	} {
		m := new(dns.Msg)
		m.SetQuestion("web.service.sidecar.", tc.qtype)
		var w dns.ResponseWriter = discard{tc.peer}
		s.ServeDNS(w, m) // fills the caches
		if n := testing.AllocsPerRun(200, func() { s.ServeDNS(w, m) }); n > 0 {
			t.Errorf("%s: %.1f allocations per answer, want 0", tc.name, n)
		}
	}
}
