package election

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sidecarhq/sidecar/tlsutil"
)

// One port (--raft-addr) carries Raft and sidecar's internal RPC. Every
// connection starts with one byte naming its protocol, as Consul does, so
// operators open a single port between servers.
const (
	protoRaft byte = 1
	protoRPC  byte = 2
)

// muxListener splits one TCP listener by the first byte of each connection.
type muxListener struct {
	ln   net.Listener
	raft *subListener
	rpc  *subListener
	once sync.Once
	done chan struct{}

	// tls, when set, makes every connection complete a TLS handshake
	// before its first byte is read; tlsCfg is its server configuration.
	tls    TLS
	tlsCfg *tls.Config
	log    *slog.Logger

	// conns are the connections handed out, closed with the listener:
	// raft's transport would otherwise leave their readers blocked.
	mu    sync.Mutex
	conns map[*trackedConn]struct{}
}

type trackedConn struct {
	net.Conn
	m    *muxListener
	once sync.Once
	// raw is the TCP connection under a TLS one: closing it at shutdown
	// does not wait to send TLS's close_notify to a peer that reads nothing.
	raw net.Conn
	// id is the verified peer's identity; nil without TLS.
	id *tlsutil.Identity
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.m.mu.Lock()
		delete(c.m.conns, c)
		c.m.mu.Unlock()
	})
	return c.Conn.Close()
}

type subListener struct {
	parent *muxListener
	conns  chan net.Conn
}

func newMux(ln net.Listener, t TLS, log *slog.Logger) *muxListener {
	m := &muxListener{ln: ln, done: make(chan struct{}), conns: map[*trackedConn]struct{}{}, tls: t, log: log}
	if t != nil {
		m.tlsCfg = t.ServerConfig()
	}
	m.raft = &subListener{parent: m, conns: make(chan net.Conn, 16)}
	m.rpc = &subListener{parent: m, conns: make(chan net.Conn, 16)}
	go m.serve()
	return m
}

func (m *muxListener) serve() {
	for {
		c, err := m.ln.Accept()
		if err != nil {
			m.Close()
			return
		}
		go m.route(c)
	}
}

func (m *muxListener) route(raw net.Conn) {
	// A peer that sends nothing must not hold a goroutine forever.
	raw.SetDeadline(time.Now().Add(handshakeTimeout))
	c := raw
	var id *tlsutil.Identity
	if m.tls != nil {
		// Nothing is parsed before the handshake: a peer without a
		// certificate of the cluster's CA gets no byte of ours but the
		// handshake's.
		tc, peer, err := serverHandshake(raw, m.tlsCfg, m.tls)
		if err != nil {
			// Debug: anyone who reaches the port can cause this line, and
			// a misconfigured peer sees its own side of the error.
			m.log.Debug("refused a connection without a valid certificate", "remote", raw.RemoteAddr().String(), "err", err)
			raw.Close()
			return
		}
		c, id = tc, &peer
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		raw.Close()
		return
	}
	raw.SetDeadline(time.Time{})
	var to *subListener
	switch b[0] {
	case protoRaft:
		// Raft messages (votes, appends, TimeoutNow) come only from
		// servers: a client certificate must not move the term.
		if id != nil && id.Role != tlsutil.RoleServer {
			m.log.Warn("refused Raft traffic from a client certificate", "remote", raw.RemoteAddr().String(), "peer", id.String())
			raw.Close()
			return
		}
		to = m.raft
	case protoRPC:
		to = m.rpc
	default:
		raw.Close()
		return
	}
	tc := &trackedConn{Conn: c, m: m, raw: raw, id: id}
	m.mu.Lock()
	select {
	case <-m.done:
		m.mu.Unlock()
		c.Close()
		return
	default:
		m.conns[tc] = struct{}{}
	}
	m.mu.Unlock()
	select {
	case to.conns <- tc:
	case <-m.done:
		tc.Close()
	}
}

func (m *muxListener) Close() error {
	var err error
	m.once.Do(func() {
		m.mu.Lock()
		close(m.done)
		conns := m.conns
		m.conns = map[*trackedConn]struct{}{}
		m.mu.Unlock()
		err = m.ln.Close()
		for c := range conns {
			c.raw.Close()
		}
	})
	return err
}

func (l *subListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.parent.done:
		return nil, net.ErrClosed
	}
}

// Close of one side closes the shared listener: both sides live and die
// with the server.
func (l *subListener) Close() error   { return l.parent.Close() }
func (l *subListener) Addr() net.Addr { return l.parent.ln.Addr() }

// dialProto dials addr, does the TLS handshake when t is set, and announces
// the protocol.
func dialProto(network, addr string, proto byte, timeout time.Duration, t TLS) (net.Conn, error) {
	start := time.Now()
	c, err := net.DialTimeout(network, addr, timeout)
	if err != nil {
		return nil, err
	}
	if t != nil {
		// equivalent mutant: the handshake's share of the dial timeout, off by the microseconds the dial took
		if c, err = clientHandshake(c, network, addr, t, timeout-time.Since(start)); err != nil {
			return nil, err
		}
	}
	c.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte{proto}); err != nil {
		c.Close()
		return nil, fmt.Errorf("announce protocol to %s: %w", addr, err)
	}
	c.SetWriteDeadline(time.Time{})
	return c, nil
}

// raftStream is raft's StreamLayer over the mux.
type raftStream struct {
	*subListener
	advertise net.Addr
	tls       TLS // nil: plain text
}

// Addr is the address other servers dial: NewServer always sets it (the
// bind address, with the port bound, unless --advertise-addr names another).
func (s *raftStream) Addr() net.Addr { return s.advertise }

func (s *raftStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return dialProto("tcp", string(addr), protoRaft, timeout, s.tls)
}

var errNoAdvertise = errors.New("election: raft address 0.0.0.0 needs an advertise address")
