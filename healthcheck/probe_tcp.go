package healthcheck

import (
	"context"
	"net"
	"time"

	"github.com/sidecarhq/sidecar/fsm"
)

// tcpProber connects to host:port and closes the connection at once.
type tcpProber struct {
	dialer  net.Dialer
	addr    string
	timeout time.Duration
}

func newTCPProber(addr string, timeout time.Duration) (*tcpProber, error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, err
	}
	return &tcpProber{addr: addr, timeout: timeout}, nil
}

func (p *tcpProber) probe(ctx context.Context, out []byte, _ int) ([]byte, string) {
	out = append(out, "TCP connect "...)
	out = append(out, p.addr...)
	out = append(out, ": "...)
	conn, err := p.dialer.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return appendErr(ctx, out, err, p.timeout), fsm.StatusCritical
	}
	conn.Close()
	return append(out, "Success"...), fsm.StatusPassing
}
