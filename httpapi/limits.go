package httpapi

import (
	"fmt"
	"net"
	"sync"
)

// Limits bound what one caller can cost the agent: past one, the caller
// gets 429 with Retry-After and everyone else keeps being served.

// clientLimitListener refuses a client address's connections beyond max
// open at once: a process that opens thousands of idle connections would
// otherwise hold as many goroutines and buffers.
type clientLimitListener struct {
	net.Listener
	max int

	mu   sync.Mutex
	open map[string]int
}

func newClientLimitListener(ln net.Listener, max int) net.Listener {
	if max <= 0 {
		return ln
	}
	return &clientLimitListener{Listener: ln, max: max, open: map[string]int{}}
}

func (l *clientLimitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		l.mu.Lock()
		over := l.open[host] >= l.max
		if !over {
			l.open[host]++
		}
		l.mu.Unlock()
		if over {
			// Answer in the background: a refused client must not slow
			// the accept loop down.
			go refuseConn(c, l.max)
			continue
		}
		return &countedConn{Conn: c, l: l, host: host}, nil
	}
}

func refuseConn(c net.Conn, max int) {
	defer c.Close()
	body := fmt.Sprintf(`{"error":"more than %d connections from this address"}`+"\n", max)
	fmt.Fprintf(c, "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
}

type countedConn struct {
	net.Conn
	l    *clientLimitListener
	host string
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		if c.l.open[c.host]--; c.l.open[c.host] <= 0 {
			delete(c.l.open, c.host)
		}
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}
