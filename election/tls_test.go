package election_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/election/electiontest"
	"github.com/sidecarhq/sidecar/fsm"
	"github.com/sidecarhq/sidecar/tlsutil"
)

// pki is a cluster CA whose certificates tests hand out.
type pki struct {
	dir string
	ca  *tlsutil.CA
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	ca, err := tlsutil.NewCA(30, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, _, err := tlsutil.WriteCA(dir, ca); err != nil {
		t.Fatal(err)
	}
	return &pki{dir: dir, ca: ca}
}

// files issues a certificate into a directory of its own.
func (p *pki) files(t testing.TB, role tlsutil.Role, node string) (cert, key string) {
	t.Helper()
	c, k, err := p.ca.Issue(tlsutil.CertRequest{Role: role, Node: node})
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err = tlsutil.WriteCert(t.TempDir(), node, c, k)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// loader issues a certificate and loads it as an agent would.
func (p *pki) loader(t testing.TB, role tlsutil.Role, node string) *tlsutil.Loader {
	t.Helper()
	cert, key := p.files(t, role, node)
	return p.load(t, cert, key)
}

func (p *pki) load(t testing.TB, cert, key string) *tlsutil.Loader {
	t.Helper()
	l, err := tlsutil.New(tlsutil.Options{CAFile: p.dir + "/" + tlsutil.CACertFile, CertFile: cert, KeyFile: key})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// startTCPServer starts an in-memory server on a real loopback port; sec
// nil is plain text.
func startTCPServer(t *testing.T, node string, sec election.TLS, bootstrap bool) *election.Server {
	t.Helper()
	cfg := election.TestServerConfig()
	cfg.Node, cfg.InMemory, cfg.RaftAddr, cfg.Bootstrap = node, true, "127.0.0.1:0", bootstrap
	cfg.TLS = sec
	cfg.Logger = electiontest.Logger(t, node)
	s, err := election.NewServer(cfg)
	if err != nil {
		t.Fatalf("start %s: %v", node, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestServer_TLS_clusterFormsForwardsAndChecksRoles(t *testing.T) {
	p := newPKI(t)
	s1 := startTCPServer(t, "s1", p.loader(t, tlsutil.RoleServer, "s1"), true)
	waitFor(t, 10*time.Second, "s1 to lead", s1.IsLeader)
	s2 := startTCPServer(t, "s2", p.loader(t, tlsutil.RoleServer, "s2"), false)
	if err := s1.Raft().AddVoter("s2", s2.Addr(), 0, 5*time.Second).Error(); err != nil {
		t.Fatalf("add s2 over TLS: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Raft replicates over TLS, and the follower forwards over TLS.
	fwd := election.NewRemote(s2, nil)
	defer fwd.Close()
	res, err := fwd.Apply(ctx, &fsm.GrantLease{TTL: int64(5 * time.Second)})
	if err != nil {
		t.Fatalf("write forwarded by a follower over TLS: %v", err)
	}
	waitFor(t, 10*time.Second, "s2 to apply the write", func() bool { return s2.FSM().Index() >= res.Index })

	// A client agent's Remote writes through any server over TLS.
	servers := func() []string { return []string{string(s2.Addr())} }
	client := election.NewRemote(nil, servers)
	client.UseTLS(p.loader(t, tlsutil.RoleClient, "c1"))
	defer client.Close()
	if _, err := client.Apply(ctx, &fsm.GrantLease{TTL: int64(5 * time.Second)}); err != nil {
		t.Fatalf("write from a client certificate: %v", err)
	}

	// The handlers see the certificate: a restore needs a server's. (On a
	// server of its own: a restore in a two-server cluster with test
	// timings can lose leadership on a loaded machine.)
	s3 := startTCPServer(t, "s3", p.loader(t, tlsutil.RoleServer, "s3"), true)
	waitFor(t, 10*time.Second, "s3 to lead", s3.IsLeader)
	var snap bytes.Buffer
	if err := s1.SaveSnapshot(&snap); err != nil {
		t.Fatal(err)
	}
	at3 := func() []string { return []string{string(s3.Addr())} }
	client3 := election.NewRemote(nil, at3)
	client3.UseTLS(p.loader(t, tlsutil.RoleClient, "c1"))
	defer client3.Close()
	if err := client3.Restore(ctx, snap.Bytes()); !errors.Is(err, election.ErrPermissionDenied) {
		t.Fatalf("restore from a client certificate: err = %v, want permission denied", err)
	}
	if _, ok := s3.FSM().Lease(res.LeaseID); ok {
		t.Fatal("a refused restore changed the registry")
	}
	admin := election.NewRemote(nil, at3)
	admin.UseTLS(p.loader(t, tlsutil.RoleServer, "s9"))
	defer admin.Close()
	if err := admin.Restore(ctx, snap.Bytes()); err != nil {
		t.Fatalf("restore from a server certificate: %v", err)
	}
	if _, ok := s3.FSM().Lease(res.LeaseID); !ok {
		t.Fatal("the restore from a server certificate did not land")
	}
}

func TestServer_TLS_plaintextAndCertificateLessGetNothing(t *testing.T) {
	p, other := newPKI(t), newPKI(t)
	s1 := startTCPServer(t, "s1", p.loader(t, tlsutil.RoleServer, "s1"), true)
	waitFor(t, 10*time.Second, "s1 to lead", s1.IsLeader)
	index, term := s1.FSM().Index(), s1.Status().Term
	addr := string(s1.Addr())

	trusting := func() *tls.Config { // trusts the server, has no certificate
		return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: rootsOf(t, p), ServerName: "server.sidecar"}
	}
	foreign := other.loader(t, tlsutil.RoleServer, "s1").ClientConfig(tlsutil.RoleServer)
	foreign.RootCAs = rootsOf(t, p)

	requests := []string{
		"\x02GET /rpc/v1/stream?index=0 HTTP/1.1\r\nHost: x\r\n\r\n",
		"\x02GET /rpc/v1/status HTTP/1.1\r\nHost: x\r\n\r\n",
		"\x02POST /rpc/v1/apply HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
	}
	for _, how := range []struct {
		name string
		dial func() (net.Conn, error)
	}{
		{"plain text", func() (net.Conn, error) { return net.DialTimeout("tcp", addr, 5*time.Second) }},
		{"TLS without certificate", func() (net.Conn, error) {
			return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, trusting())
		}},
		{"TLS with another CA's certificate", func() (net.Conn, error) {
			return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, foreign)
		}},
	} {
		for _, req := range requests {
			c, err := how.dial()
			if err != nil {
				continue // refused at the handshake: nothing to read either
			}
			c.SetDeadline(time.Now().Add(15 * time.Second))
			io.WriteString(c, req)
			got, _ := io.ReadAll(c)
			c.Close()
			if strings.Contains(string(got), "HTTP/") || strings.Contains(string(got), "{") {
				t.Errorf("%s, %q: got an answer %q", how.name, strings.Fields(req)[1], got)
			}
		}
	}
	if i, tm := s1.FSM().Index(), s1.Status().Term; i != index || tm != term {
		t.Fatalf("index %d→%d, term %d→%d: refused connections changed the server", index, i, term, tm)
	}
}

func rootsOf(t *testing.T, p *pki) *x509.CertPool {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(p.ca.Cert)
	return pool
}

// attackerStream dials the Raft port the way raft's NetworkTransport does
// through the mux: an optional TLS handshake, then the Raft protocol byte.
type attackerStream struct {
	net.Listener
	tls *tls.Config // nil: plain text
}

func (s *attackerStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", string(addr), timeout)
	if err != nil {
		return nil, err
	}
	if s.tls != nil {
		tc := tls.Client(c, s.tls)
		if err := tc.Handshake(); err != nil {
			c.Close()
			return nil, err
		}
		c = tc
	}
	if _, err := c.Write([]byte{1}); err != nil { // protoRaft
		c.Close()
		return nil, err
	}
	return c, nil
}

// timeoutNow sends a hand-made TimeoutNow to s: on a server that accepts
// it, the leader starts an election at once, which raises the term.
func timeoutNow(t *testing.T, s *election.Server, cfg *tls.Config) error {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: &attackerStream{Listener: ln, tls: cfg}, MaxPool: 1, Timeout: 5 * time.Second,
	})
	defer trans.Close()
	req := &raft.TimeoutNowRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("evil"), Addr: []byte(ln.Addr().String())}}
	return trans.TimeoutNow("s1", s.Addr(), req, &raft.TimeoutNowResponse{})
}

func TestServer_TLS_handMadeRaftMessageDoesNotChangeTerm(t *testing.T) {
	// Control: without TLS, one hand-made message moves the term.
	plain := startTCPServer(t, "s1", nil, true)
	waitFor(t, 10*time.Second, "plain s1 to lead", plain.IsLeader)
	before := plain.Status().Term
	if err := timeoutNow(t, plain, nil); err != nil {
		t.Fatalf("TimeoutNow to a plain server: %v", err)
	}
	waitFor(t, 10*time.Second, "the plain server's term to rise", func() bool { return plain.Status().Term > before })

	p, other := newPKI(t), newPKI(t)
	s1 := startTCPServer(t, "s1", p.loader(t, tlsutil.RoleServer, "s1"), true)
	waitFor(t, 10*time.Second, "s1 to lead", s1.IsLeader)
	term := s1.Status().Term

	clientCert := p.loader(t, tlsutil.RoleClient, "c1").ClientConfig(tlsutil.RoleServer)
	foreign := other.loader(t, tlsutil.RoleServer, "s2").ClientConfig(tlsutil.RoleServer)
	foreign.RootCAs = rootsOf(t, p)
	noCert := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: rootsOf(t, p), ServerName: "server.sidecar"}
	for name, cfg := range map[string]*tls.Config{
		"plain text":               nil,
		"TLS without certificate":  noCert,
		"another CA's certificate": foreign,
		"a client certificate":     clientCert,
	} {
		if err := timeoutNow(t, s1, cfg); err == nil {
			t.Errorf("%s: TimeoutNow answered", name)
		}
		// The connection never reached Raft, so nothing can happen later.
		if got := s1.Status().Term; got != term || !s1.IsLeader() {
			t.Fatalf("%s: term %d→%d, leader %v", name, term, got, s1.IsLeader())
		}
	}
	// A server certificate of the cluster is a peer: the control case.
	if err := timeoutNow(t, s1, p.loader(t, tlsutil.RoleServer, "s2").ClientConfig(tlsutil.RoleServer)); err != nil {
		t.Fatalf("TimeoutNow with a server certificate: %v", err)
	}
	waitFor(t, 10*time.Second, "the term to rise", func() bool { return s1.Status().Term > term })
}

func TestReplica_TLS_streamsOnlyFromServerCertificates(t *testing.T) {
	p := newPKI(t)
	s1 := startTCPServer(t, "s1", p.loader(t, tlsutil.RoleServer, "s1"), true)
	// A client agent's certificate listening where a server should be: it
	// serves a registry of its own making.
	impostor := startTCPServer(t, "c9", p.loader(t, tlsutil.RoleClient, "c9"), true)
	waitFor(t, 10*time.Second, "both to lead", func() bool { return s1.IsLeader() && impostor.IsLeader() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fake, err := impostor.Apply(ctx, &fsm.GrantLease{TTL: int64(5 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}

	follow := func(addr raft.ServerAddress) (*fsm.FSM, func()) {
		reg := fsm.New()
		r := election.NewReplica(reg, func() []string { return []string{string(addr)} }, electiontest.Logger(t, "client"))
		r.UseTLS(p.loader(t, tlsutil.RoleClient, "c1"))
		rctx, rcancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); r.Run(rctx) }()
		return reg, func() { rcancel(); <-done }
	}

	good, stop := follow(s1.Addr())
	defer stop()
	res, err := s1.Apply(ctx, &fsm.GrantLease{TTL: int64(5 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the copy to follow s1 over TLS", func() bool { return good.Index() >= res.Index })

	bad, stopBad := follow(impostor.Addr())
	defer stopBad()
	// Give the replica time for several attempts (it retries every 50 ms);
	// none may fill the copy.
	time.Sleep(500 * time.Millisecond)
	if bad.Index() != 0 || fake.Index == 0 {
		t.Fatalf("copy took the registry of a client certificate: index %d", bad.Index())
	}
}

func TestServer_VerifyServer(t *testing.T) {
	p, other := newPKI(t), newPKI(t)
	s1 := startTCPServer(t, "s1", p.loader(t, tlsutil.RoleServer, "s1"), true)
	s2 := startTCPServer(t, "s2", p.loader(t, tlsutil.RoleServer, "s2"), false)
	asClient := startTCPServer(t, "c1", p.loader(t, tlsutil.RoleClient, "c1"), false)
	foreign := startTCPServer(t, "s3", other.loader(t, tlsutil.RoleServer, "s3"), false)
	plain := startTCPServer(t, "s4", nil, false)
	ctx := context.Background()

	if err := s1.VerifyServer(ctx, "s2", string(s2.Addr())); err != nil {
		t.Fatalf("a server with its own certificate: %v", err)
	}
	for name, tc := range map[string]struct{ node, addr string }{
		"another server's name":  {"s9", string(s2.Addr())},
		"a client certificate":   {"c1", string(asClient.Addr())},
		"another CA":             {"s3", string(foreign.Addr())},
		"no TLS":                 {"s4", string(plain.Addr())},
		"nobody at that address": {"s5", "127.0.0.1:1"},
	} {
		if err := s1.VerifyServer(ctx, tc.node, tc.addr); !errors.Is(err, election.ErrPermissionDenied) {
			t.Errorf("%s: err = %v, want permission denied", name, err)
		}
	}
	// Without TLS there is nothing to check.
	if err := plain.VerifyServer(ctx, "anyone", "127.0.0.1:1"); err != nil {
		t.Fatalf("VerifyServer without TLS: %v", err)
	}
}

// BenchmarkRemote_Register_TLS compares writes sent over the RPC port in
// plain text and over TLS, by 16 concurrent writers, with the Raft store in
// memory (the transport is all that differs) and on raft-boltdb (an fsync
// per batch, as in production).
func BenchmarkRemote_Register_TLS(b *testing.B) {
	for _, c := range []struct {
		name           string
		onDisk, secure bool
	}{{"inmem/plain", false, false}, {"inmem/tls", false, true}, {"bolt/plain", true, false}, {"bolt/tls", true, true}} {
		secure := c.secure
		b.Run(c.name, func(b *testing.B) {
			cfg := election.DefaultServerConfig()
			cfg.Node, cfg.Bootstrap, cfg.RaftAddr = "bench", true, "127.0.0.1:0"
			if c.onDisk {
				cfg.DataDir = b.TempDir()
			} else {
				cfg.InMemory = true
			}
			cfg.Logger = slog.New(slog.DiscardHandler)
			var client election.TLS
			if secure {
				p := newPKI(b)
				cfg.TLS = p.loader(b, tlsutil.RoleServer, "bench")
				client = p.loader(b, tlsutil.RoleClient, "c1")
			}
			s, err := election.NewServer(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			for !s.IsLeader() {
				time.Sleep(5 * time.Millisecond)
			}
			ctx := context.Background()
			if _, err := s.Apply(ctx, &fsm.RegisterNode{Name: "bench", Address: "127.0.0.1"}); err != nil {
				b.Fatal(err)
			}
			r := election.NewRemote(nil, func() []string { return []string{string(s.Addr())} })
			if client != nil {
				r.UseTLS(client)
			}
			defer r.Close()
			var n atomic.Int64
			b.SetParallelism(8) // 16 writers on 2 cores
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := n.Add(1)
					in := fsm.Instance{ID: fmt.Sprintf("web-%d", i%1000), Name: "web", Node: "bench", Address: "10.0.0.1", Port: 8080}
					if _, err := r.Apply(ctx, &fsm.RegisterInstance{Instance: in}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
		})
	}
}

func TestServer_TLS_rotationKeepsServing(t *testing.T) {
	p := newPKI(t)
	s1 := startTCPServer(t, "s1", p.loader(t, tlsutil.RoleServer, "s1"), true)
	waitFor(t, 10*time.Second, "s1 to lead", s1.IsLeader)
	cert2, key2 := p.files(t, tlsutil.RoleServer, "s2")
	l2 := p.load(t, cert2, key2)
	s2 := startTCPServer(t, "s2", l2, false)
	if err := s1.Raft().AddVoter("s2", s2.Addr(), 0, 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	serialAt := func(addr raft.ServerAddress) string {
		t.Helper()
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", string(addr), p.loader(t, tlsutil.RoleClient, "c1").ClientConfig(tlsutil.RoleServer))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	old := serialAt(s2.Addr())

	// Replace s2's files by rename and reload (what SIGHUP does).
	newCert, newKey := p.files(t, tlsutil.RoleServer, "s2")
	want := p.load(t, newCert, newKey).Certificate().SerialNumber.String()
	for from, to := range map[string]string{newKey: key2, newCert: cert2} {
		if err := os.Rename(from, to); err != nil {
			t.Fatal(err)
		}
	}
	if err := l2.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := serialAt(s2.Addr()); got != want || got == old {
		t.Fatalf("new connection to s2 sees serial %s, want the new %s (old %s)", got, want, old)
	}
	// The cluster keeps replicating to s2 throughout. On a loaded machine
	// the test timings may move leadership meanwhile: write through
	// whichever server leads.
	var res *fsm.Result
	waitFor(t, 10*time.Second, "a write after the rotation", func() bool {
		for _, s := range []*election.Server{s1, s2} {
			if !s.IsLeader() {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			r, err := s.Apply(ctx, &fsm.GrantLease{TTL: int64(5 * time.Second)})
			cancel()
			if err == nil {
				res = r
				return true
			}
		}
		return false
	})
	waitFor(t, 10*time.Second, "both to apply after the rotation", func() bool {
		return s1.FSM().Index() >= res.Index && s2.FSM().Index() >= res.Index
	})
}

// An agent without TLS may hand its nil loader straight through.
func TestServer_TLS_nilLoaderIsPlainText(t *testing.T) {
	var none *tlsutil.Loader
	s := startTCPServer(t, "s1", none, true)
	waitFor(t, 10*time.Second, "s1 to lead", s.IsLeader)
	r := election.NewRemote(nil, func() []string { return []string{string(s.Addr())} })
	r.UseTLS(none)
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := r.Apply(ctx, &fsm.GrantLease{TTL: int64(5 * time.Second)}); err != nil {
		t.Fatalf("plain-text write with a nil loader: %v", err)
	}
}

// A client certificate writes for its own node only: it cannot register an
// instance (say, with an exec check) on another node, nor make the entries
// only the leader makes. A server certificate may forward anything.
func TestServer_TLS_clientCertificateWritesForItsOwnNodeOnly(t *testing.T) {
	p := newPKI(t)
	s1 := startTCPServer(t, "s1", p.loader(t, tlsutil.RoleServer, "s1"), true)
	waitFor(t, 10*time.Second, "s1 to lead", s1.IsLeader)
	at := func() []string { return []string{string(s1.Addr())} }
	remote := func(role tlsutil.Role, node string) *election.Remote {
		r := election.NewRemote(nil, at)
		r.UseTLS(p.loader(t, role, node))
		t.Cleanup(r.Close)
		return r
	}
	c1, s9 := remote(tlsutil.RoleClient, "c1"), remote(tlsutil.RoleServer, "s9")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, cmd := range []fsm.Command{
		&fsm.RegisterNode{Name: "c1", Address: "10.0.0.1"},
		&fsm.RegisterInstance{Instance: fsm.Instance{ID: "web-1", Name: "web", Node: "c1", Address: "10.0.0.1", Port: 80}},
		&fsm.GrantLease{TTL: int64(time.Hour)},
		&fsm.GrantLease{TTL: int64(time.Hour), Node: "c1"},
	} {
		if _, err := c1.Apply(ctx, cmd); err != nil {
			t.Fatalf("client c1 writing %T for itself: %v", cmd, err)
		}
	}
	if _, err := s9.Apply(ctx, &fsm.RegisterNode{Name: "c2", Address: "10.0.0.2"}); err != nil {
		t.Fatalf("a server certificate registering another node: %v", err)
	}
	index := s1.FSM().Index()
	exec := fsm.Check{ID: "pwn", Type: "exec", Exec: []string{"/bin/sh", "-c", "id"}}
	for _, cmd := range []fsm.Command{
		&fsm.RegisterInstance{Instance: fsm.Instance{ID: "pwn", Name: "web", Node: "c2", Address: "10.0.0.2", Port: 80, Checks: []fsm.Check{exec}}},
		&fsm.RegisterInstance{Instance: fsm.Instance{ID: "pwn", Name: "web", Address: "10.0.0.2", Port: 80}},
		&fsm.RegisterNode{Name: "c2", Address: "6.6.6.6"},
		&fsm.DeregisterNode{Name: "c2"},
		&fsm.DeregisterInstance{Node: "c2", ID: "x"},
		&fsm.UpdateCheck{Node: "c2", CheckID: "x", Status: "passing"},
		&fsm.GrantLease{TTL: int64(time.Hour), Node: "c2"},
		&fsm.SetNodeStatus{Name: "s1", Status: "failed"},
		&fsm.ExpireLease{ID: "x"},
	} {
		if _, err := c1.Apply(ctx, cmd); !errors.Is(err, election.ErrPermissionDenied) {
			t.Errorf("client c1 writing %s: err = %v, want permission denied", cmd.Type(), err)
		}
	}
	if got := s1.FSM().Index(); got != index {
		t.Fatalf("refused writes moved the index %d→%d", index, got)
	}
}
