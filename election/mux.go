package election

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
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

	// conns are the connections handed out, closed with the listener:
	// raft's transport would otherwise leave their readers blocked.
	mu    sync.Mutex
	conns map[*trackedConn]struct{}
}

type trackedConn struct {
	net.Conn
	m    *muxListener
	once sync.Once
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

func newMux(ln net.Listener) *muxListener {
	m := &muxListener{ln: ln, done: make(chan struct{}), conns: map[*trackedConn]struct{}{}}
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

func (m *muxListener) route(c net.Conn) {
	// A peer that sends nothing must not hold a goroutine forever.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil {
		c.Close()
		return
	}
	c.SetReadDeadline(time.Time{})
	var to *subListener
	switch b[0] {
	case protoRaft:
		to = m.raft
	case protoRPC:
		to = m.rpc
	default:
		c.Close()
		return
	}
	tc := &trackedConn{Conn: c, m: m}
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
			c.Conn.Close()
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

// dialProto dials addr and announces the protocol.
func dialProto(network, addr string, proto byte, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout(network, addr, timeout)
	if err != nil {
		return nil, err
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
}

func (s *raftStream) Addr() net.Addr {
	if s.advertise != nil {
		return s.advertise
	}
	return s.subListener.Addr()
}

func (s *raftStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return dialProto("tcp", string(addr), protoRaft, timeout)
}

var errNoAdvertise = errors.New("election: raft address 0.0.0.0 needs an advertise address")
