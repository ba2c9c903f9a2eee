package discovery

import (
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// cutTransport drops what its node sends to cut addresses, as a network
// partition would; cutting both sides makes the cut two-way.
type cutTransport struct {
	memberlist.Transport
	mu  sync.Mutex
	cut map[string]bool // gossip "ip:port"
}

func (c *cutTransport) set(addrs ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cut = map[string]bool{}
	for _, a := range addrs {
		c.cut[a] = true
	}
}

func (c *cutTransport) isCut(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cut[addr]
}

func (c *cutTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	if c.isCut(addr) {
		return time.Now(), nil // lost on the way
	}
	return c.Transport.WriteTo(b, addr)
}

func (c *cutTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if c.isCut(addr) {
		return nil, errors.New("network unreachable (cut)")
	}
	return c.Transport.DialTimeout(addr, timeout)
}

// A node cut off long enough to be declared failed is seen alive again
// within seconds of the cut healing: the others reconnect to failed
// members instead of waiting for a push-pull with a random peer (every 30s,
// as in production here) or for some message to gossip to it.
func TestGossip_reconnectsAfterPartitionHeals(t *testing.T) {
	t.Parallel()
	var nodes []*Gossip
	var cuts []*cutTransport
	for i, name := range []string{"a", "b", "c"} {
		ct := &cutTransport{}
		opts := []func(*Config){func(c *Config) {
			c.wrapTransport = func(inner memberlist.Transport) memberlist.Transport {
				ct.Transport = inner
				return ct
			}
			m := *c.Memberlist
			m.PushPullInterval = 30 * time.Second
			m.GossipToTheDeadTime = 30 * time.Second
			c.Memberlist = &m
		}}
		if i > 0 {
			opts = append(opts, joining(nodes[0].Addr()))
		}
		g := newNode(t, name, opts...)
		start(t, g)
		nodes, cuts = append(nodes, g), append(cuts, ct)
	}
	allSee(t, 10*time.Second, nodes, StatusAlive, "a", "b", "c")

	a, b, c := nodes[0], nodes[1], nodes[2]
	cuts[0].set(c.Addr())
	cuts[1].set(c.Addr())
	cuts[2].set(a.Addr(), b.Addr())
	allSee(t, 20*time.Second, []*Gossip{a, b}, StatusFailed, "c")
	allSee(t, 20*time.Second, []*Gossip{c}, StatusFailed, "a", "b")

	for _, ct := range cuts {
		ct.set()
	}
	took := allSee(t, 5*time.Second, nodes, StatusAlive, "a", "b", "c")
	t.Logf("every node alive in every view %v after healing", took)
}
