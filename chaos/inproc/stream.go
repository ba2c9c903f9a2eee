package inproc

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/tlsutil"
)

// Transports a run's servers can talk Raft over. Whatever the choice, the
// fault-injecting transport (network.go) sits on top and decides each
// request and each answer; below it, the bytes of a delivered message really
// cross what is chosen here.
const (
	// TransportTLS: raft's NetworkTransport over loopback TCP with mutual
	// TLS 1.3, each server holding a server certificate of the run's CA
	// (tlsutil loaders, the election.TLS the agent gives its servers).
	TransportTLS = "tls"
	// TransportTCP: the same NetworkTransport over plain loopback TCP.
	TransportTCP = "tcp"
	// TransportInmem: raft's InmemTransport, the layer as it was before
	// TLS (the plain runs the TLS figures are compared with).
	TransportInmem = "inmem"
)

// ValidTransport reports whether t names a transport above.
func ValidTransport(t string) bool {
	return t == TransportTLS || t == TransportTCP || t == TransportInmem
}

// newPKI makes a CA in dir and a server certificate for each name, and
// returns a loader of each server's files.
func newPKI(dir string, names []string) (map[string]*tlsutil.Loader, error) {
	ca, err := tlsutil.NewCA(1, time.Now())
	if err != nil {
		return nil, err
	}
	caFile, _, err := tlsutil.WriteCA(dir, ca)
	if err != nil {
		return nil, err
	}
	out := map[string]*tlsutil.Loader{}
	for _, n := range names {
		certPEM, keyPEM, err := ca.Issue(tlsutil.CertRequest{Role: tlsutil.RoleServer, Node: n})
		if err != nil {
			return nil, fmt.Errorf("certificate of %s: %w", n, err)
		}
		cert, key, err := tlsutil.WriteCert(dir, n, certPEM, keyPEM)
		if err != nil {
			return nil, err
		}
		// The files never change during a run: no stat on handshakes.
		l, err := tlsutil.New(tlsutil.Options{CAFile: caFile, CertFile: cert, KeyFile: key, CheckInterval: -1})
		if err != nil {
			return nil, fmt.Errorf("TLS of %s: %w", n, err)
		}
		out[n] = l
	}
	return out, nil
}

// addrBook maps each server's ID to the loopback address its current
// listener has (a restarted server listens on a new port); it is the
// NetworkTransport's ServerAddressProvider, so that Raft's configuration
// keeps naming servers by name, as the network's decisions do.
type addrBook struct {
	mu    sync.RWMutex
	addrs map[raft.ServerID]raft.ServerAddress
}

func (b *addrBook) set(id string, addr string) {
	b.mu.Lock()
	b.addrs[raft.ServerID(id)] = raft.ServerAddress(addr)
	b.mu.Unlock()
}

func (b *addrBook) ServerAddr(id raft.ServerID) (raft.ServerAddress, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	a, ok := b.addrs[id]
	if !ok {
		return "", fmt.Errorf("chaos: no address for %s", id)
	}
	return a, nil
}

// nameAddr is a server's Raft address: its name.
type nameAddr string

func (a nameAddr) Network() string { return "chaos" }
func (a nameAddr) String() string  { return string(a) }

// streamLayer is raft's StreamLayer on a loopback listener, with mutual TLS
// when tls is set: a dial wants a server certificate of the run's CA
// (tlsutil's ClientConfig checks the role), an accepted connection must
// present one, and nothing of a connection is read before its handshake.
// Close also closes the accepted connections, so that the transport's
// readers of a crashed server end.
type streamLayer struct {
	ln   net.Listener
	name string
	tls  election.TLS // nil: plain TCP
	cfg  *tls.Config

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func newStreamLayer(name string, t election.TLS) (*streamLayer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", name, err)
	}
	s := &streamLayer{ln: ln, name: name, tls: t, conns: map[net.Conn]struct{}{}}
	if t != nil {
		s.cfg = t.ServerConfig()
	}
	return s, nil
}

// listenAddr is the loopback address peers dial.
func (s *streamLayer) listenAddr() string { return s.ln.Addr().String() }

func (s *streamLayer) Accept() (net.Conn, error) {
	raw, err := s.ln.Accept()
	if err != nil {
		return nil, err
	}
	var c net.Conn = raw
	if s.tls != nil {
		c = &serverConn{Conn: tls.Server(raw, s.cfg), tls: s.tls}
	}
	tc := &trackedConn{Conn: c, raw: raw, s: s}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		raw.Close()
		return nil, net.ErrClosed
	}
	s.conns[tc] = struct{}{}
	return tc, nil
}

func (s *streamLayer) Close() error {
	s.mu.Lock()
	s.closed = true
	conns := s.conns
	s.conns = map[net.Conn]struct{}{}
	s.mu.Unlock()
	err := s.ln.Close()
	for c := range conns {
		// The raw connection: no close_notify to a peer that may not read.
		c.(*trackedConn).raw.Close()
	}
	return err
}

func (s *streamLayer) Addr() net.Addr { return nameAddr(s.name) }

func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	start := time.Now()
	c, err := net.DialTimeout("tcp", string(addr), timeout)
	if err != nil || s.tls == nil {
		return c, err
	}
	tc := tls.Client(c, s.tls.ClientConfig(tlsutil.RoleServer))
	ctx, cancel := context.WithTimeout(context.Background(), timeout-time.Since(start))
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
	}
	return tc, nil
}

// trackedConn is an accepted connection the stream layer closes with it.
type trackedConn struct {
	net.Conn
	raw  net.Conn
	s    *streamLayer
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
	})
	return c.Conn.Close()
}

// serverConn completes the handshake and checks that the peer holds a
// server certificate before the first byte is read or written: Raft
// traffic comes from servers only.
type serverConn struct {
	*tls.Conn
	tls  election.TLS
	once sync.Once
	err  error
}

func (c *serverConn) verify() error {
	c.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.Conn.HandshakeContext(ctx); err != nil {
			c.err = err
			return
		}
		id, err := c.tls.PeerIdentity(c.Conn.ConnectionState())
		if err == nil && id.Role != tlsutil.RoleServer {
			err = fmt.Errorf("chaos: Raft traffic from %s refused", id)
		}
		c.err = err
	})
	return c.err
}

func (c *serverConn) Read(b []byte) (int, error) {
	if err := c.verify(); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

func (c *serverConn) Write(b []byte) (int, error) {
	if err := c.verify(); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}
