package dnsserver

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// ErrConfig wraps every reason New rejects a Config.
var ErrConfig = errors.New("dnsserver: invalid config")

// Config configures a Server. Start from DefaultConfig and override fields.
type Config struct {
	// Addr is the ip:port served over UDP and TCP. Port 0 picks a free port
	// (the same one for both); Server.Addr tells which.
	Addr string
	// Domain is the zone answered from the registry, e.g. "sidecar.". It is
	// matched without regard to case; a missing final dot is added.
	Domain string
	// Recursors are upstream DNS servers (ip or ip:port, port 53 by default)
	// asked in order for names outside Domain. Empty: such names get
	// REFUSED.
	Recursors []string
	// RecursorTimeout bounds one exchange with one recursor (dial, write and
	// read); the next recursor is tried after it.
	RecursorTimeout time.Duration
	// ServiceTTL is the TTL of service answers (A, AAAA, SRV), of the
	// address records of SRV targets, of .addr names, and of the SOA, whose
	// minimum field also bounds how long resolvers cache a negative answer.
	ServiceTTL time.Duration
	// NodeTTL is the TTL of <node>.node answers.
	NodeTTL time.Duration
	// LeaderTTL is the TTL of <election>.leader answers. It is lowered to
	// the time the leader's lease is surely still live, and is 0 when that
	// time is unknown.
	LeaderTTL time.Duration
	// MaxRecords caps the records of one answer section. A service with more
	// passing instances answers a random subset of that size.
	MaxRecords int
	// MaxUDPSize caps the payload of a UDP answer to an EDNS0 query (a query
	// without EDNS0 always gets at most 512 bytes). Larger answers are
	// truncated with TC set, and the client retries over TCP. It is also
	// the size the server advertises in its OPT record.
	MaxUDPSize int
	// NodeName names the agent the server runs in. It seeds the choice of
	// the records a truncated answer keeps (different agents keep
	// different subsets), and, when Addr is a wildcard and NSAddr is
	// empty, ns.<domain> resolves to this node's address in the registry.
	// Empty: the host name and Addr stand in for it.
	NodeName string
	// NSAddr is the address ns.<domain>, the apex's NS, resolves to.
	// Empty: the address of Addr, or when that is a wildcard the address
	// of node NodeName, else loopback.
	NSAddr string
	// ACL returns what the DNS token (--acl-dns-token) may read, asked
	// once per query in the domain, so a token created or changed after
	// the server started counts from the next query: it must be cheap
	// and must not block. A service name needs service:read, a node
	// node:read, an election election:read; a name the token may not
	// read answers NXDOMAIN, as if absent. A nil func lets every name be
	// read; a func returning nil lets none.
	ACL func() Authorizer
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the server's metrics; nil keeps them private.
	Registerer prometheus.Registerer
}

// DefaultConfig returns the configuration of SPEC.md's defaults.
func DefaultConfig() Config {
	return Config{
		// Port 7053 rather than 53: sidecar runs unprivileged, and the
		// local resolver (systemd-resolved, dnsmasq) forwards the domain
		// to it. Loopback only: DNS is for the applications of this host.
		Addr:   "127.0.0.1:7053",
		Domain: "sidecar.",
		// No recursors: the agent is not an open resolver unless asked to.
		Recursors: nil,
		// 2s per recursor: a healthy resolver answers in milliseconds even
		// on a cache miss with a few upstream hops, and the usual stub
		// resolver timeout is 5s, so two recursors can still be tried
		// before the client gives up.
		RecursorTimeout: 2 * time.Second,
		// 5s TTLs keep failover fast: a resolver forgets an instance that
		// turned critical, or a node that moved, within 5 seconds, while
		// a busy client still resolves at most once per 5 seconds.
		ServiceTTL: 5 * time.Second,
		NodeTTL:    5 * time.Second,
		// Same for leaders, and never past the lease: once a leader's
		// lease may have run out, a cached answer must be gone.
		LeaderTTL: 5 * time.Second,
		// 64 records: far more than a client uses (it connects to one
		// target and keeps a few for failover), enough to list every
		// instance of a typical service so that load spreads over all of
		// them, and small enough that the worst answer (64 SRV records
		// with 64 address records of long names, ~12 KB) stays far below
		// the 64 KB of a TCP message and the work of a query bounded.
		MaxRecords: 64,
		// 1232 bytes: the EDNS0 buffer size of DNS Flag Day 2020, the
		// largest that fits the IPv6 minimum MTU without fragmentation.
		// Loopback-only setups may raise it to 4096 to spare TCP retries.
		MaxUDPSize: 1232,
	}
}

// TestConfig is DefaultConfig on a free loopback port with a short
// recursor timeout, for tests.
func TestConfig() Config {
	c := DefaultConfig()
	c.Addr = "127.0.0.1:0"
	// 250ms: long enough for a loopback recursor, short enough that a
	// test with a dead one stays fast.
	c.RecursorTimeout = 250 * time.Millisecond
	return c
}

// normalize checks a Config and returns it with defaults filled in: a
// lower-case fully-qualified domain and recursors with a port.
func (c Config) normalize() (Config, error) {
	if c.Addr == "" {
		return c, fmt.Errorf("%w: empty addr", ErrConfig)
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return c, fmt.Errorf("%w: addr %q: %v", ErrConfig, c.Addr, err)
	}
	d := strings.ToLower(dns.Fqdn(strings.TrimSpace(c.Domain)))
	if d == "." {
		return c, fmt.Errorf("%w: domain must not be empty or the root", ErrConfig)
	}
	if _, ok := dns.IsDomainName(d); !ok || strings.ContainsRune(d, '\\') {
		return c, fmt.Errorf("%w: domain %q is not a plain domain name", ErrConfig, c.Domain)
	}
	c.Domain = d
	recs := make([]string, 0, len(c.Recursors))
	for _, r := range c.Recursors {
		r = strings.TrimSpace(r)
		if r == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(r); err != nil {
			r = net.JoinHostPort(strings.Trim(r, "[]"), "53")
		}
		if _, _, err := net.SplitHostPort(r); err != nil {
			return c, fmt.Errorf("%w: recursor %q: %v", ErrConfig, r, err)
		}
		recs = append(recs, r)
	}
	c.Recursors = recs
	if len(c.Recursors) > 0 && c.RecursorTimeout <= 0 {
		return c, fmt.Errorf("%w: recursor timeout must be positive", ErrConfig)
	}
	for _, t := range []struct {
		name string
		d    time.Duration
	}{{"service ttl", c.ServiceTTL}, {"node ttl", c.NodeTTL}, {"leader ttl", c.LeaderTTL}} {
		if t.d < 0 || t.d > maxTTL {
			return c, fmt.Errorf("%w: %s %v must be between 0 and %v", ErrConfig, t.name, t.d, maxTTL)
		}
	}
	// 1000 records bound the work of one query and keep any answer within
	// a 64 KB TCP message.
	if c.MaxRecords < 1 || c.MaxRecords > 1000 {
		return c, fmt.Errorf("%w: max records %d must be between 1 and 1000", ErrConfig, c.MaxRecords)
	}
	if c.MaxUDPSize < dns.MinMsgSize || c.MaxUDPSize > dns.MaxMsgSize {
		return c, fmt.Errorf("%w: max udp size %d must be between %d and %d", ErrConfig, c.MaxUDPSize, dns.MinMsgSize, dns.MaxMsgSize)
	}
	if c.NSAddr != "" {
		if _, ok := parseIP(c.NSAddr); !ok {
			return c, fmt.Errorf("%w: ns addr %q is not an IP address", ErrConfig, c.NSAddr)
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	return c, nil
}

// maxTTL bounds the configurable TTLs to a week, BIND's default
// max-cache-ttl: resolvers cap what they cache at about that anyway, and
// registry answers are meant to be short-lived.
const maxTTL = 7 * 24 * time.Hour

// ttlSeconds converts a duration to a TTL, rounding down so that a record is
// never cached longer than d.
func ttlSeconds(d time.Duration) uint32 {
	// equivalent mutant: d == 0 gives 0 seconds either way (< for <=).
	if d <= 0 {
		return 0
	}
	return uint32(d / time.Second)
}
