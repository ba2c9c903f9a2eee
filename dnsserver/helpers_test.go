package dnsserver_test

import (
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/sidecarhq/sidecar/dnsserver"
	"github.com/sidecarhq/sidecar/fsm"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// registry writes an FSM the way Raft does: encoded commands applied at
// increasing indexes.
type registry struct {
	t    testing.TB
	f    *fsm.FSM
	next uint64
}

func newRegistry(t testing.TB) *registry {
	return &registry{t: t, f: fsm.New(), next: 1}
}

// apply applies commands and fails the test on any error; it returns the
// last result.
func (r *registry) apply(cmds ...fsm.Command) *fsm.Result {
	r.t.Helper()
	var res *fsm.Result
	for _, c := range cmds {
		data, err := fsm.Encode(c)
		if err != nil {
			r.t.Fatalf("encode %T: %v", c, err)
		}
		res = r.f.ApplyBytes(r.next, data)
		r.next++
		if res.Err != nil {
			r.t.Fatalf("apply %T %+v: %v", c, c, res.Err)
		}
	}
	return res
}

func node(name, addr string) *fsm.RegisterNode {
	return &fsm.RegisterNode{Name: name, Address: addr}
}

func instance(id, svc, nodeName, addr string, port int, tags ...string) *fsm.RegisterInstance {
	return &fsm.RegisterInstance{Instance: fsm.Instance{
		ID: id, Name: svc, Node: nodeName, Address: addr, Port: port, Tags: tags,
	}}
}

// withCheck gives an instance one TTL check of the status given.
func withCheck(c *fsm.RegisterInstance, status string) *fsm.RegisterInstance {
	c.Instance.Checks = append(c.Instance.Checks, fsm.Check{
		ID: c.Instance.ID + ":ttl", Type: "ttl", Status: status, TTL: int64(10 * time.Second),
	})
	return c
}

const now = int64(1_700_000_000) * int64(time.Second)

// campaign grants a lease and campaigns with it; it returns the token.
func (r *registry) campaign(election, lease, value string) uint64 {
	r.t.Helper()
	r.apply(&fsm.GrantLease{ID: lease, TTL: int64(10 * time.Second), Node: "node1"})
	res := r.apply(&fsm.Campaign{
		Election: election, Candidate: "cand-" + lease, Lease: lease, Node: "node1", Value: value, Now: now,
	})
	if !res.Held {
		r.t.Fatalf("campaign %s: not held", election)
	}
	return res.Token
}

// fixture is the registry most tests query.
type fixture struct {
	reg    *registry
	tokens map[string]uint64
}

const bigSize = 100

func newFixture(t testing.TB) *fixture {
	r := newRegistry(t)
	r.apply(
		node("node1", "10.0.0.1"),
		node("node2", "10.0.0.2"),
		node("Node6", "fd00::6"),
		node("nodedown", "10.0.0.9"),
		node("bench", "10.9.0.1"),
	)
	r.apply(&fsm.SetNodeStatus{Name: "nodedown", Status: fsm.NodeFailed})
	r.apply(
		instance("web-1", "web", "node1", "10.0.1.1", 8080, "primary", "v1"),
		instance("web-2", "web", "node2", "", 8081, "v1"),
		withCheck(instance("web-3", "web", "node1", "10.0.1.3", 8083, "v1"), fsm.StatusCritical),
		instance("web-4", "web", "nodedown", "10.0.1.4", 8084, "v1"),
		instance("web-5", "web", "node2", "fd00::5", 8085, "v2", "Primary"),
		instance("web-6", "web", "node1", "web6.example.com", 8086, "ext"),
		withCheck(instance("web-7", "web", "node2", "10.0.1.7", 8087, "v1"), fsm.StatusWarning),
		// Two instances on one address: one additional record.
		instance("api-1", "api", "node1", "10.0.3.1", 9001),
		instance("api-2", "api", "node1", "10.0.3.1", 9002),
		withCheck(instance("db-1", "db", "node1", "10.0.4.1", 5432), fsm.StatusCritical),
	)
	for i := range bigSize {
		r.apply(instance(fmt.Sprintf("big-%d", i), "big", "bench", fmt.Sprintf("10.1.%d.%d", i/250, i%250+1), 10000+i))
	}
	fx := &fixture{reg: r, tokens: map[string]uint64{}}
	fx.tokens["lead"] = r.campaign("lead", "lease-lead", "10.0.2.1:9000")
	fx.tokens["leadhost"] = r.campaign("leadhost", "lease-host", "db.example.com:5432")
	fx.tokens["leadnoport"] = r.campaign("leadnoport", "lease-noport", "10.0.2.2")
	fx.tokens["leadv6"] = r.campaign("leadv6", "lease-v6", "[fd00::7]:7000")
	fx.tokens["leadnode"] = r.campaign("leadnode", "lease-node", ":7100")
	fx.tokens["LeadCap"] = r.campaign("LeadCap", "lease-cap", "10.0.2.3:1")
	fx.tokens["leadshort"] = r.campaign("leadshort", "lease-short", "10.0.2.4:2")
	fx.tokens["leadunknown"] = r.campaign("leadunknown", "lease-unknown", "10.0.2.5:3")
	fx.tokens["leadgone"] = r.campaign("leadgone", "lease-gone", "10.0.2.6:4")
	r.campaign("vacant", "lease-vacant", "10.0.2.9:9")
	r.apply(&fsm.Resign{Election: "vacant", Candidate: "cand-lease-vacant", Now: now})
	return fx
}

// leases is what the tests' leader TTLs are capped by.
var leases = dnsserver.LeasesFunc(func(id string) (time.Duration, bool) {
	switch id {
	case "lease-short":
		return 2900 * time.Millisecond, true // capped to 2s, never rounded up
	case "lease-unknown":
		return 0, false
	case "lease-gone":
		return -time.Second, true
	}
	return time.Minute, true
})

// testLogger sends a server's logs to t.Log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// startServer runs a server on a free loopback port until the test ends.
func startServer(t testing.TB, cfg dnsserver.Config, reg dnsserver.Registry) (*dnsserver.Server, *prometheus.Registry) {
	t.Helper()
	pr := prometheus.NewRegistry()
	cfg.Registerer = pr
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	s, err := dnsserver.New(cfg, reg, leases)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s, pr
}

// query is one question for exchange.
type query struct {
	name  string
	qtype uint16
	net   string // "udp" (default) or "tcp"
	edns  uint16 // EDNS0 buffer size; 0: no OPT record
}

func exchange(t testing.TB, addr string, q query) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(q.name, q.qtype)
	if q.edns > 0 {
		m.SetEdns0(q.edns, false)
	}
	c := &dns.Client{Net: q.net, Timeout: 5 * time.Second}
	if q.net == "" {
		c.Net = "udp"
	}
	if q.edns == 0 {
		c.UDPSize = dns.MinMsgSize
	}
	resp, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("exchange %s %s over %s: %v", q.name, dns.TypeToString[q.qtype], c.Net, err)
	}
	return resp
}

// rrStrings canonicalizes records as text, sorted, so that shuffled answers
// compare equal; OPT records are left out.
func rrStrings(rrs []dns.RR) []string {
	out := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		if rr.Header().Rrtype == dns.TypeOPT {
			continue
		}
		out = append(out, canonical(rr.String()))
	}
	sort.Strings(out)
	return out
}

// parseRRs builds records from zone-file lines, like coredns's test helpers.
func parseRRs(t testing.TB, lines ...string) []string {
	t.Helper()
	out := make([]string, 0, len(lines))
	for _, l := range lines {
		rr, err := dns.NewRR(l)
		if err != nil {
			t.Fatalf("bad record %q: %v", l, err)
		}
		out = append(out, canonical(rr.String()))
	}
	sort.Strings(out)
	return out
}

// canonical lower-cases owner names: DNS compares them without case.
func canonical(s string) string { return strings.ToLower(s) }

// silentUDP is a recursor that never answers.
func silentUDP(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().String()
}

// closedUDP is a recursor address nothing listens on: the kernel refuses
// datagrams to it at once.
func closedUDP(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

// upstream is a DNS server standing in for a recursor.
type upstream struct {
	addr    string
	mu      sync.Mutex
	queries int
}

func (u *upstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.queries
}

// startUpstream serves example.com A and a TXT too large for 512 bytes, over
// UDP and TCP, with rcode for every other name.
func startUpstream(t testing.TB, rcode int) *upstream {
	t.Helper()
	u := &upstream{}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		u.mu.Lock()
		u.queries++
		u.mu.Unlock()
		m := new(dns.Msg)
		m.SetReply(r)
		m.RecursionAvailable = true
		q := r.Question[0]
		switch {
		case rcode != dns.RcodeSuccess:
			m.Rcode = rcode
		case strings.EqualFold(q.Name, "example.com.") && q.Qtype == dns.TypeA:
			rr, _ := dns.NewRR("example.com. 60 IN A 93.184.216.34")
			m.Answer = append(m.Answer, rr)
		case strings.EqualFold(q.Name, "big.example.com.") && q.Qtype == dns.TypeTXT:
			for i := range 20 {
				m.Answer = append(m.Answer, &dns.TXT{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60},
					Txt: []string{fmt.Sprintf("%02d-%s", i, strings.Repeat("x", 60))},
				})
			}
		default:
			m.Rcode = dns.RcodeNameError
		}
		if r.IsEdns0() != nil {
			m.SetEdns0(4096, false)
		}
		if _, ok := w.RemoteAddr().(*net.UDPAddr); ok {
			size := dns.MinMsgSize
			if o := r.IsEdns0(); o != nil {
				size = int(o.UDPSize())
			}
			m.Truncate(size)
		}
		_ = w.WriteMsg(m)
	})
	// UDP and TCP on one port: a free UDP port may be busy over TCP, so
	// try a few.
	var (
		pc  net.PacketConn
		ln  net.Listener
		err error
	)
	for range 20 {
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	u.addr = pc.LocalAddr().String()
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // runs last: after the shutdowns below
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = srv.ActivateAndServe()
		}()
		<-started
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
	return u
}

// noWatch is the FSM without its Watch method: a Registry and Lister, but
// not a Watcher.
type noWatch struct{ f *fsm.FSM }

func (n noWatch) VisitService(name string, fn func(*fsm.Instance, string)) bool {
	return n.f.VisitService(name, fn)
}
func (n noWatch) Node(name string) (*fsm.Node, bool)      { return n.f.Node(name) }
func (n noWatch) Election(name string) (*fsm.Mutex, bool) { return n.f.Election(name) }
func (n noWatch) Nodes() []*fsm.Node                      { return n.f.Nodes() }
func (n noWatch) Elections() []*fsm.Mutex                 { return n.f.Elections() }
func (n noWatch) TableIndex(t fsm.Table) uint64           { return n.f.TableIndex(t) }

// bare is the FSM as nothing but a Registry.
type bare struct{ f *fsm.FSM }

func (b bare) VisitService(name string, fn func(*fsm.Instance, string)) bool {
	return b.f.VisitService(name, fn)
}
func (b bare) Node(name string) (*fsm.Node, bool)      { return b.f.Node(name) }
func (b bare) Election(name string) (*fsm.Mutex, bool) { return b.f.Election(name) }
