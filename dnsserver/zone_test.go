package dnsserver_test

import (
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sidecarhq/sidecar/dnsserver"
	"github.com/sidecarhq/sidecar/fsm"
)

// world is a random registry and what the test knows it holds, so that the
// names that exist can be worked out without the server's own code.
type world struct {
	reg       *registry
	services  []string
	nodes     []string
	elections []string
	vocab     []string // labels queries are made of
}

var (
	worldServices  = []string{"web", "api", "db", "Cache"}
	worldNodes     = []string{"n1", "n2", "Node3"}
	worldElections = []string{"lead", "Other"}
)

func newWorld(t testing.TB, rng *rand.Rand) *world {
	w := &world{reg: newRegistry(t)}
	for _, n := range worldNodes {
		if rng.IntN(2) == 0 {
			w.reg.apply(node(n, fmt.Sprintf("10.0.0.%d", 1+rng.IntN(200))))
			w.nodes = append(w.nodes, n)
		}
	}
	for _, svc := range worldServices {
		if rng.IntN(2) == 0 {
			continue
		}
		if len(w.nodes) == 0 {
			w.reg.apply(node(worldNodes[0], "10.0.0.1"))
			w.nodes = append(w.nodes, worldNodes[0])
		}
		w.services = append(w.services, svc)
		for i := range 1 + rng.IntN(3) {
			addr := ""
			switch rng.IntN(3) {
			case 0:
				addr = fmt.Sprintf("10.1.0.%d", 1+rng.IntN(200))
			case 1:
				addr = fmt.Sprintf("fd00::%x", 1+rng.IntN(200))
			}
			in := instance(fmt.Sprintf("%s-%d", svc, i), svc, w.nodes[rng.IntN(len(w.nodes))], addr, 1000+i, "primary")
			if rng.IntN(3) == 0 {
				// Not passing: the service still exists.
				in = withCheck(in, fsm.StatusCritical)
			}
			w.reg.apply(in)
		}
	}
	for i, e := range worldElections {
		if rng.IntN(2) == 0 {
			w.reg.campaign(e, fmt.Sprintf("lease-%d", i), "10.0.2.1:80")
			w.elections = append(w.elections, e)
		}
	}
	w.vocab = []string{"service", "node", "leader", "addr", "ns", "_tcp", "_udp", "_primary", "primary",
		"x", "_x", "_", "nosuch", "_nosuch", "0a000001", "0A00000g", "fd000000000000000000000000000001",
		"00000000000000000000ffff0a000001", "sidecar"}
	for _, names := range [][]string{worldServices, worldNodes, worldElections} {
		for _, n := range names {
			w.vocab = append(w.vocab, n, strings.ToLower(n), "_"+strings.ToLower(n))
		}
	}
	return w
}

// name builds a random relative name of 0 to 4 labels of the vocabulary,
// each in random case now and then.
func (w *world) name(rng *rand.Rand) []string {
	labels := make([]string, rng.IntN(5))
	for i := range labels {
		l := w.vocab[rng.IntN(len(w.vocab))]
		if rng.IntN(8) == 0 {
			l = strings.ToUpper(l)
		}
		labels[i] = l
	}
	return labels
}

func has(list []string, name string) bool {
	return slices.ContainsFunc(list, func(s string) bool { return strings.EqualFold(s, name) })
}

// registered reports whether a relative name (labels, lower-case, leftmost
// first) is itself a name the domain holds: the apex, its name server,
// services with any tag labels, RFC 2782 service names, nodes, elections
// and well-formed addresses.
func (w *world) registered(l []string) bool {
	n := len(l)
	switch {
	case n == 0:
		return true
	case n == 1:
		return l[0] == "ns"
	case l[n-1] == "service" && n == 3 && len(l[0]) > 1 && l[0][0] == '_' && len(l[1]) > 1 && l[1][0] == '_':
		return has(w.services, l[0][1:])
	case l[n-1] == "service":
		return has(w.services, l[n-2])
	case n == 2 && l[1] == "node":
		return has(w.nodes, l[0])
	case n == 2 && l[1] == "leader":
		return has(w.elections, l[0])
	case n == 2 && l[1] == "addr":
		b, err := hex.DecodeString(l[0])
		if err != nil || (len(b) != 4 && len(b) != 16) {
			return false
		}
		return len(b) == 4 || !netip.AddrFrom16([16]byte(b)).Is4In6()
	}
	return false
}

// exists reports whether a name is registered or lies above one: a search
// of the names up to two labels longer made of the vocabulary, which holds
// every label a registered name may need there.
func (w *world) exists(l []string, depth int) bool {
	if w.registered(l) {
		return true
	}
	if depth == 0 || len(l) > 6 {
		return false
	}
	for _, v := range w.vocab {
		if w.exists(append([]string{strings.ToLower(v)}, l...), depth-1) {
			return true
		}
	}
	return false
}

// ask answers one query through the handler.
func ask(t testing.TB, s *dnsserver.Server, name string, qtype uint16) *dns.Msg {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	rec := &recorder{}
	s.ServeDNS(rec, q)
	if len(rec.writes) != 1 {
		t.Fatalf("%s %s: %d answers", name, dns.TypeToString[qtype], len(rec.writes))
	}
	resp := new(dns.Msg)
	if err := resp.Unpack(rec.writes[0]); err != nil {
		t.Fatalf("%s: answer does not parse: %v", name, err)
	}
	return resp
}

// checkName asks one name of the world's server and checks RFC 8020: NXDOMAIN
// exactly when nothing exists at or below it, and the SOA with every
// negative answer.
func checkName(t *testing.T, w *world, s *dnsserver.Server, labels []string, qtype uint16) {
	t.Helper()
	name := strings.Join(append(slices.Clone(labels), "sidecar."), ".")
	lower := make([]string, len(labels))
	for i, l := range labels {
		lower[i] = strings.ToLower(l)
	}
	want := w.exists(lower, 2)
	resp := ask(t, s, name, qtype)
	if got := resp.Rcode != dns.RcodeNameError; got != want || (resp.Rcode != dns.RcodeSuccess && got) {
		t.Fatalf("%s %s: rcode %s, want exists=%v (services %v, nodes %v, elections %v)",
			name, dns.TypeToString[qtype], dns.RcodeToString[resp.Rcode], want, w.services, w.nodes, w.elections)
	}
	if len(resp.Answer) == 0 && (len(resp.Ns) != 1 || resp.Ns[0].Header().Rrtype != dns.TypeSOA) {
		t.Fatalf("%s %s: negative answer without the SOA: %v", name, dns.TypeToString[qtype], resp)
	}
}

var treeQtypes = []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeSRV, dns.TypeTXT, dns.TypeANY, dns.TypeNS, dns.TypeSOA}

// TestZone_NXDOMAINExactlyWhenNothingBelow: for random registries and
// random names in the domain, NXDOMAIN exactly when no registered name lies
// at or below the name asked.
func TestZone_NXDOMAINExactlyWhenNothingBelow(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 21))
	registries, names := 60, 150
	if testing.Short() {
		registries = 10
	}
	for range registries {
		w := newWorld(t, rng)
		for _, reg := range []dnsserver.Registry{w.reg.f, bare{w.reg.f}} {
			s, err := dnsserver.New(dnsserver.TestConfig(), reg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := reg.(bare); ok {
				// Without listing, the server cannot tell that no
				// service, node or election exists, and must not
				// answer NXDOMAIN above one that might.
				for _, l := range [][]string{{"service"}, {"_tcp", "service"}, {"node"}, {"leader"}} {
					if resp := ask(t, s, strings.Join(l, ".")+".sidecar.", dns.TypeA); resp.Rcode != dns.RcodeSuccess {
						t.Fatalf("bare registry: %v answers %s", l, dns.RcodeToString[resp.Rcode])
					}
				}
				continue
			}
			for range names {
				checkName(t, w, s, w.name(rng), treeQtypes[rng.IntN(len(treeQtypes))])
			}
		}
	}
}

// TestZone_emptyRegistry: with nothing registered, only the apex, its name
// server and the address names exist.
func TestZone_emptyRegistry(t *testing.T) {
	s, err := dnsserver.New(dnsserver.TestConfig(), newRegistry(t).f, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, rcode := range map[string]int{
		"sidecar.":                   dns.RcodeSuccess,
		"ns.sidecar.":                dns.RcodeSuccess,
		"addr.sidecar.":              dns.RcodeSuccess,
		"7f000001.addr.sidecar.":     dns.RcodeSuccess,
		"service.sidecar.":           dns.RcodeNameError,
		"_tcp.service.sidecar.":      dns.RcodeNameError,
		"_web._tcp.service.sidecar.": dns.RcodeNameError,
		"node.sidecar.":              dns.RcodeNameError,
		"leader.sidecar.":            dns.RcodeNameError,
	} {
		if resp := ask(t, s, name, dns.TypeA); resp.Rcode != rcode {
			t.Errorf("%s: %s, want %s", name, dns.RcodeToString[resp.Rcode], dns.RcodeToString[rcode])
		}
	}
}

// FuzzZone checks the property of TestZone_NXDOMAINExactlyWhenNothingBelow
// on names the fuzzer makes up, against a registry drawn from the seed.
func FuzzZone(f *testing.F) {
	for _, name := range []string{"", "service", "_tcp.service", "_web._tcp.service", "x.web.service",
		"node", "n1.node", "addr", "0a000001.addr", "ns", "x.ns", "leader", "lead.leader", "a.b.c"} {
		f.Add(uint64(1), name)
		f.Add(uint64(7), name)
	}
	f.Fuzz(func(t *testing.T, seed uint64, rel string) {
		rng := rand.New(rand.NewPCG(seed, 21))
		w := newWorld(t, rng)
		var labels []string
		if rel != "" {
			labels = strings.Split(rel, ".")
		}
		for _, l := range labels {
			// Plain labels only: the vocabulary stands for the rest.
			if l == "" || len(l) > 63 || strings.ContainsFunc(l, func(r rune) bool {
				return !(r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
			}) {
				return
			}
		}
		if len(labels) > 6 {
			return
		}
		// The search above a name uses the vocabulary: the name's own
		// labels join it, so that any label the name needs below is
		// there.
		for _, l := range labels {
			w.vocab = append(w.vocab, strings.ToLower(l), "_"+strings.ToLower(l))
		}
		s, err := dnsserver.New(dnsserver.TestConfig(), w.reg.f, nil)
		if err != nil {
			t.Fatal(err)
		}
		checkName(t, w, s, labels, dns.TypeA)
	})
}
