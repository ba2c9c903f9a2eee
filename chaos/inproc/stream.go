package inproc

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
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

// ioTimeout bounds each read and write of a Raft connection that waits on
// its peer in the middle of an exchange (see deadlineConn): the
// NetworkTransport's Timeout (cluster.go), the bound of a whole request.
const ioTimeout = 10 * time.Second

// streamLayer is raft's StreamLayer on a loopback listener, with mutual TLS
// when tls is set: a dial wants a server certificate of the run's CA
// (tlsutil's ClientConfig checks the role), an accepted connection must
// present one, and nothing of a connection is read before its handshake.
// Close also closes the accepted connections, so that the transport's
// readers of a crashed server end. Every connection has deadlines
// (deadlineConn), so that no read or write waits on a peer for ever.
type streamLayer struct {
	ln   net.Listener
	name string
	tls  election.TLS // nil: plain TCP
	cfg  *tls.Config
	// timeout is each connection's ioTimeout (tests shorten it).
	timeout time.Duration

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func newStreamLayer(name string, t election.TLS) (*streamLayer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", name, err)
	}
	s := &streamLayer{ln: ln, name: name, tls: t, timeout: ioTimeout, conns: map[net.Conn]struct{}{}}
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
	var c net.Conn = newDeadlineConn(raw, true, s.timeout)
	if s.tls != nil {
		c = &serverConn{Conn: tls.Server(c, s.cfg), tls: s.tls}
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
	raw, err := net.DialTimeout("tcp", string(addr), timeout)
	if err != nil {
		return nil, err
	}
	c := newDeadlineConn(raw, false, s.timeout)
	if s.tls == nil {
		return c, nil
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

// deadlineConn gives every read and write of a Raft connection a deadline
// of timeout (ioTimeout) from its start, except the wait of an accepted
// connection for its next request (idle), which lasts as long as no leader
// sends to this server: a request's first bytes open an exchange, the
// write of its answer closes it. NetworkTransport bounds each request it
// sends (Timeout), but not the side that answers: without these, a server
// reading a request whose sender stopped half-way, or writing an answer
// its peer no longer reads, would wait as long as the connection lives,
// and its Raft with it (Shutdown waits for its goroutines). A deadline
// that fires fails the exchange and closes the connection, as a lost
// message would; the network's faults never hold a connection (they
// refuse whole messages above it).
//
// With TLS it sits under the TLS connection, so the handshake's reads and
// writes are bounded too. A deadline set by the caller (Raft's, for a whole
// request) still holds when it comes first.
type deadlineConn struct {
	net.Conn
	timeout time.Duration
	accept  bool
	// idle: an accepted connection between exchanges. Atomic, like the
	// caller's deadlines: a close's alert may write while the reader waits.
	idle       atomic.Bool
	rset, wset atomic.Int64 // caller's deadlines, UnixNano (0: none)
}

func newDeadlineConn(c net.Conn, accepted bool, timeout time.Duration) *deadlineConn {
	d := &deadlineConn{Conn: c, accept: accepted, timeout: timeout}
	d.idle.Store(accepted)
	return d
}

// bound is the earlier of the caller's deadline and timeout from now; when
// open, the caller's alone.
func (c *deadlineConn) bound(set *atomic.Int64, open bool) time.Time {
	var t time.Time
	if v := set.Load(); v != 0 {
		t = time.Unix(0, v)
	}
	if open {
		return t
	}
	if own := time.Now().Add(c.timeout); t.IsZero() || own.Before(t) {
		return own
	}
	return t
}

func (c *deadlineConn) Read(b []byte) (int, error) {
	c.Conn.SetReadDeadline(c.bound(&c.rset, c.idle.Load()))
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.idle.Store(false)
	}
	return n, err
}

func (c *deadlineConn) Write(b []byte) (int, error) {
	c.Conn.SetWriteDeadline(c.bound(&c.wset, false))
	n, err := c.Conn.Write(b)
	if c.accept {
		c.idle.Store(true)
	}
	return n, err
}

func (c *deadlineConn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.rset.Store(unixNano(t))
	return c.Conn.SetReadDeadline(t)
}

func (c *deadlineConn) SetWriteDeadline(t time.Time) error {
	c.wset.Store(unixNano(t))
	return c.Conn.SetWriteDeadline(t)
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
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
