package dnsserver

import (
	"encoding/hex"
	"net/netip"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// Name kinds: the label right below the domain.
const (
	kindService = "service"
	kindNode    = "node"
	kindLeader  = "leader"
	kindAddr    = "addr"
)

// maxLabels is the most labels a 255-byte name can have.
const maxLabels = 128

// labels splits a relative name (no final dot) into its labels, as offsets
// into the name, without allocating. It reports false for names with escapes
// (no registered name has them) or empty labels.
func splitLabels(rel string, out *[maxLabels][2]int) (int, bool) {
	if strings.IndexByte(rel, '\\') >= 0 {
		return 0, false
	}
	n, start := 0, 0
	for i := 0; i <= len(rel); i++ {
		if i < len(rel) && rel[i] != '.' {
			continue
		}
		if i == start || n == maxLabels {
			return 0, false
		}
		out[n] = [2]int{start, i}
		n++
		start = i + 1
	}
	return n, true
}

// lowerASCII lower-cases s, allocating only when s has capitals. DNS names
// as miekg/dns presents them are ASCII (other bytes are \DDD escapes), so
// offsets into s are offsets into the result.
func lowerASCII(s string) string {
	i := 0
	for ; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			break
		}
	}
	if i == len(s) {
		return s
	}
	b := []byte(s)
	for ; i < len(b); i++ {
		if c := b[i]; c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// addrName encodes an address as the label of a .addr name: 8 hex digits for
// IPv4, 32 for IPv6 (the scheme Consul uses).
func addrName(ip netip.Addr, domain string) string {
	var b []byte
	if ip.Is4() {
		a := ip.As4()
		// equivalent mutant: a capacity hint; 8-6 leaves it positive and append grows b.
		b = make([]byte, 0, 8+6+len(domain))
		b = hex.AppendEncode(b, a[:])
	} else {
		a := ip.As16()
		// equivalent mutant: a capacity hint; 32-6 leaves it positive and append grows b.
		b = make([]byte, 0, 32+6+len(domain))
		b = hex.AppendEncode(b, a[:])
	}
	b = append(b, ".addr."...)
	b = append(b, domain...)
	return string(b)
}

// parseAddrLabel decodes the label of a .addr name.
func parseAddrLabel(label string) (netip.Addr, bool) {
	var buf [16]byte
	switch len(label) {
	case 8, 32:
	default:
		return netip.Addr{}, false
	}
	n, err := hex.Decode(buf[:], []byte(label))
	if err != nil {
		return netip.Addr{}, false
	}
	if n == 4 {
		return netip.AddrFrom4([4]byte(buf[:4])), true
	}
	ip := netip.AddrFrom16(buf)
	if ip.Is4In6() {
		// An IPv4 address has one name only: its 8-digit form.
		return netip.Addr{}, false
	}
	return ip, true
}

// target is how an SRV record points at an address.
type target struct {
	name string     // the SRV target, fully qualified; "" when unusable
	wire string     // name in wire format, as packService writes it
	ip   netip.Addr // its address; invalid when name is an outside host name
}

// newTarget returns the target of a name, unusable when the name cannot be
// packed.
func newTarget(name string, ip netip.Addr) target {
	wire, ok := appendName(nil, name)
	if name == "" || !ok {
		return target{}
	}
	return target{name: name, wire: string(wire), ip: ip}
}

// hostTarget returns a host name as a fully-qualified SRV target, or "" when
// it is not a name DNS can carry.
func hostTarget(host string) string {
	name := fqdn(host)
	if _, ok := dns.IsDomainName(name); !ok || name == "." || strings.ContainsAny(name, "\\ ") {
		return ""
	}
	return name
}

// targetCache remembers the SRV target of each instance address and node
// name, so that the hot path neither parses nor formats names. It holds at
// most maxTargets entries of each kind and starts over when full.
type targetCache struct {
	domain string

	mu    sync.RWMutex
	addrs map[string]target // instance address (as registered) → target
	nodes map[string]target // node name → <node>.node.<domain>, no ip
}

// maxTargets bounds each map of the target cache: enough for the distinct
// addresses of a large cluster, small enough (~1 MB) not to matter.
const maxTargets = 8192

func newTargetCache(domain string) *targetCache {
	return &targetCache{domain: domain, addrs: map[string]target{}, nodes: map[string]target{}}
}

// addrTarget returns the target of an instance address, which must not be
// empty: <hex>.addr.<domain> for an IP, the name itself for a host name.
func (c *targetCache) addrTarget(addr string) target {
	c.mu.RLock()
	t, ok := c.addrs[addr]
	c.mu.RUnlock()
	if ok {
		return t
	}
	if ip, err := netip.ParseAddr(addr); err == nil && ip.Zone() == "" {
		ip = ip.Unmap()
		t = newTarget(addrName(ip, c.domain), ip)
	} else {
		t = newTarget(hostTarget(addr), netip.Addr{})
	}
	c.mu.Lock()
	// equivalent mutant: when the cache starts over changes memory use only; the target returned is the one just made.
	if len(c.addrs) >= maxTargets {
		clear(c.addrs)
	}
	c.addrs[addr] = t
	c.mu.Unlock()
	return t
}

// nodeTarget returns <node>.node.<domain>, without its address.
func (c *targetCache) nodeTarget(node string) target {
	c.mu.RLock()
	n, ok := c.nodes[node]
	c.mu.RUnlock()
	if ok {
		return n
	}
	n = newTarget(node+"."+kindNode+"."+c.domain, netip.Addr{})
	c.mu.Lock()
	// equivalent mutant: when the cache starts over changes memory use only; the target returned is the one just made.
	if len(c.nodes) >= maxTargets {
		clear(c.nodes)
	}
	c.nodes[node] = n
	c.mu.Unlock()
	return n
}

func fqdn(s string) string {
	if strings.HasSuffix(s, ".") {
		return s
	}
	return s + "."
}

// parseIP parses an address as registered; ok is false for host names and
// for addresses with a zone, which DNS cannot carry.
func parseIP(s string) (netip.Addr, bool) {
	ip, err := netip.ParseAddr(s)
	if err != nil || ip.Zone() != "" {
		return netip.Addr{}, false
	}
	return ip.Unmap(), true
}
