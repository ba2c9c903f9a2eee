package dnsserver_test

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sidecarhq/sidecar/acl"
	"github.com/sidecarhq/sidecar/dnsserver"
)

// TestServer_startUDPPortBusy: with a fixed port free over TCP but taken
// over UDP, Start fails at once and says the address is in use.
func TestServer_startUDPPortBusy(t *testing.T) {
	fx := newFixture(t)
	var pc net.PacketConn
	var port int
	for range 20 {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		port = pc.LocalAddr().(*net.UDPAddr).Port
		// The same port must be free over TCP, so that only UDP fails.
		if ln, err := net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			ln.Close()
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil {
		t.Skip("no port free over TCP whose UDP twin could be taken")
	}
	defer pc.Close()
	cfg := dnsserver.TestConfig()
	cfg.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	s, err := dnsserver.New(cfg, fx.reg.f, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	err = s.Start()
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), cfg.Addr) {
		t.Fatalf("Start with UDP port %d taken: %v, want address in use", port, err)
	}
	if s.Addr() != "" {
		t.Errorf("Addr() = %q after a failed Start", s.Addr())
	}
}

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestServer_lifecycleLogs: a server that served logs when it starts and
// when it stops; one closed without starting logs neither.
func TestServer_lifecycleLogs(t *testing.T) {
	fx := newFixture(t)
	newServer := func() (*dnsserver.Server, *syncBuffer) {
		var logs syncBuffer
		cfg := dnsserver.TestConfig()
		cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		s, err := dnsserver.New(cfg, fx.reg.f, nil)
		if err != nil {
			t.Fatal(err)
		}
		return s, &logs
	}

	s, logs := newServer()
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	addr := s.Addr()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`msg="dns server listening" component=dns addr=` + addr, `msg="dns server stopped" component=dns addr=` + addr} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}

	s, logs = newServer()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if logs.String() != "" {
		t.Errorf("a server never started logged:\n%s", logs)
	}
}

// blockingAuthz holds every query in the domain until released, standing
// in for a query that takes long to answer.
type blockingAuthz struct {
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func (b *blockingAuthz) Allowed(acl.Resource, string, acl.Access) bool { return true }

// TestServer_closeWaitsForQueries: Close lets a query in flight finish and
// answer, here one that takes a second, well past the recursor timeout
// (Close grants it that timeout and 5 seconds more).
func TestServer_closeWaitsForQueries(t *testing.T) {
	fx := newFixture(t)
	b := &blockingAuthz{entered: make(chan struct{}), release: make(chan struct{})}
	cfg := dnsserver.TestConfig()
	cfg.ACL = func() dnsserver.Authorizer {
		b.once.Do(func() { close(b.entered) })
		<-b.release
		return b
	}
	s, err := dnsserver.New(cfg, fx.reg.f, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	answered := make(chan *dns.Msg, 1)
	go func() {
		m := new(dns.Msg)
		m.SetQuestion("node1.node.sidecar.", dns.TypeA)
		resp, _, err := (&dns.Client{Timeout: 10 * time.Second}).Exchange(m, s.Addr())
		if err != nil {
			t.Errorf("query in flight: %v", err)
		}
		answered <- resp
	}()
	select {
	case <-b.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the query never reached the server")
	}
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	time.AfterFunc(time.Second, func() { close(b.release) })
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close with a query in flight for 1s: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	if resp := <-answered; resp == nil || len(resp.Answer) != 1 {
		t.Errorf("the query in flight was answered %v", resp)
	}
}

// TestServer_unpackableQuery: a query handed to ServeDNS whose name cannot
// be packed (an empty label; no datagram can carry it) gets no answer
// rather than a malformed one, a warning that names it, and counts as
// SERVFAIL; the server answers the next query as usual.
func TestServer_unpackableQuery(t *testing.T) {
	fx := newFixture(t)
	var logs syncBuffer
	cfg := dnsserver.TestConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	pr := prometheus.NewRegistry()
	cfg.Registerer = pr
	s, err := dnsserver.New(cfg, fx.reg.f, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a..sidecar.", "a..example.com."} {
		for _, edns := range []uint16{0, 1232} {
			m := new(dns.Msg)
			m.SetQuestion(name, dns.TypeA)
			if edns > 0 {
				m.SetEdns0(edns, false)
			}
			rec := &recorder{}
			s.ServeDNS(rec, m)
			if len(rec.writes) != 0 {
				t.Errorf("%s EDNS %d: %d bytes written, want no answer", name, edns, len(rec.writes[0]))
			}
			if want := `msg="cannot pack answer" component=dns name=` + name; !strings.Contains(logs.String(), want) {
				t.Errorf("%s: logs lack %q:\n%s", name, want, logs.String())
			}
		}
	}
	if got := testutil.ToFloat64(counterOf(t, pr, "sidecar_dns_queries_total", "rcode", "SERVFAIL")); got != 4 {
		t.Errorf("sidecar_dns_queries_total{rcode=\"SERVFAIL\"} = %v, want 4", got)
	}
	if resp := ask(t, s, "node1.node.sidecar.", dns.TypeA); len(resp.Answer) != 1 {
		t.Errorf("next query: %v", resp)
	}
}
