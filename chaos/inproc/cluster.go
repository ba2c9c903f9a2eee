package inproc

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/fsm"
	"github.com/sidecarhq/sidecar/internal/logadapt"
	"github.com/sidecarhq/sidecar/tlsutil"
)

// Timings of the servers of one run, drawn from its seed.
type Timings struct {
	Heartbeat, LeaderLease, Commit time.Duration
	SnapshotThreshold              uint64
	TrailingLogs                   uint64
	SnapshotInterval               time.Duration
}

// Cluster is the servers of a run on one network. Servers crash and restart
// on their data dirs; a crashed server's slot is nil.
type Cluster struct {
	net       *Network
	dir       string
	timings   Timings
	logger    *slog.Logger
	names     []string
	transport string
	// tls holds each server's loader (TransportTLS); addrs where each
	// server's stream layer listens (TransportTLS, TransportTCP).
	tls   map[string]*tlsutil.Loader
	addrs *addrBook

	mu      sync.RWMutex
	servers []*election.Server
	inners  []*raft.InmemTransport // TransportInmem
	gens    []int
}

// NewCluster starts n servers bootstrapped together, each on a data dir
// under dir, talking Raft over transport (TransportTLS, TransportTCP or
// TransportInmem). With TLS, the CA and the servers' certificates are made
// in dir/tls.
func NewCluster(n int, dir string, net *Network, tm Timings, logger *slog.Logger, transport string) (*Cluster, error) {
	if !ValidTransport(transport) {
		return nil, fmt.Errorf("chaos: unknown transport %q", transport)
	}
	c := &Cluster{net: net, dir: dir, timings: tm, logger: logger, transport: transport,
		addrs:   &addrBook{addrs: map[raft.ServerID]raft.ServerAddress{}},
		servers: make([]*election.Server, n), inners: make([]*raft.InmemTransport, n), gens: make([]int, n)}
	for i := 0; i < n; i++ {
		c.names = append(c.names, fmt.Sprintf("s%d", i))
	}
	if transport == TransportTLS {
		l, err := newPKI(filepath.Join(dir, "tls"), c.names)
		if err != nil {
			return nil, fmt.Errorf("chaos: TLS files: %w", err)
		}
		c.tls = l
	}
	for i := 0; i < n; i++ {
		if err := c.Start(i); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// Size is the number of servers.
func (c *Cluster) Size() int { return len(c.names) }

// Name is server i's node name, also its Raft address.
func (c *Cluster) Name(i int) string { return c.names[i] }

// Index finds a server by name; -1 if unknown.
func (c *Cluster) Index(name string) int {
	for i, n := range c.names {
		if n == name {
			return i
		}
	}
	return -1
}

// Server returns server i and its generation (restarts so far); nil while
// it is down.
func (c *Cluster) Server(i int) (*election.Server, int) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.servers[i], c.gens[i]
}

// Start starts server i on its data dir (first start or restart).
func (c *Cluster) Start(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.servers[i] != nil {
		return nil
	}
	name := c.names[i]
	inner, err := c.innerTransport(i)
	if err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	var boot []raft.Server
	for _, n := range c.names {
		boot = append(boot, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(n), Address: raft.ServerAddress(n)})
	}
	cfg := election.TestServerConfig()
	cfg.Node = name
	cfg.DataDir = filepath.Join(c.dir, name)
	cfg.Transport = &transport{net: c.net, self: name, inner: inner}
	cfg.Bootstrap = i == 0
	cfg.BootstrapServers = boot
	cfg.HeartbeatTimeout = c.timings.Heartbeat
	cfg.ElectionTimeout = c.timings.Heartbeat
	cfg.LeaderLeaseTimeout = c.timings.LeaderLease
	cfg.CommitTimeout = c.timings.Commit
	cfg.SnapshotThreshold = c.timings.SnapshotThreshold
	cfg.TrailingLogs = c.timings.TrailingLogs
	cfg.SnapshotInterval = c.timings.SnapshotInterval
	cfg.ApplyTimeout = time.Second
	cfg.Logger = c.logger.With("node", name)
	if l := c.tls[name]; l != nil {
		// As an agent's server has it; the chaos transport above carries
		// Raft, so this secures only the (unused) RPC dials.
		cfg.TLS = l
	}
	s, err := election.NewServer(cfg)
	if err != nil {
		// raft closes a transport only once it ran: an unused one is ours.
		inner.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	c.servers[i] = s
	if in, ok := inner.(*raft.InmemTransport); ok {
		c.inners[i] = in
	}
	c.gens[i]++
	c.net.SetDown(name, false)
	return nil
}

// innerTransport makes server i's transport under the network's
// decisions: connected in-memory pipes, or a NetworkTransport on a new
// loopback listener (plain or TLS) that c.addrs points its peers to.
func (c *Cluster) innerTransport(i int) (innerTransport, error) {
	name := c.names[i]
	if c.transport == TransportInmem {
		_, inner := raft.NewInmemTransport(raft.ServerAddress(name))
		for j, o := range c.inners {
			if j != i && o != nil {
				o.Connect(raft.ServerAddress(name), inner)
				inner.Connect(raft.ServerAddress(c.names[j]), o)
			}
		}
		return inner, nil
	}
	var t election.TLS
	if l := c.tls[name]; l != nil {
		t = l
	}
	stream, err := newStreamLayer(name, t)
	if err != nil {
		return nil, err
	}
	c.addrs.set(name, stream.listenAddr())
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		ServerAddressProvider: c.addrs,
		Stream:                stream,
		// As election's own transport: a few pooled connections per peer,
		// and a bound on a stuck read or write (the network's cuts never
		// hold a connection; they refuse the message above it).
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  logadapt.Hclog(c.logger.With("node", name), "raft-net"),
	}), nil
}

// Crash stops server i at once (no leadership transfer); its data dir
// stays for a restart.
func (c *Cluster) Crash(i int) {
	c.mu.Lock()
	s := c.servers[i]
	c.servers[i] = nil
	c.net.SetDown(c.names[i], true)
	c.mu.Unlock()
	if s != nil {
		s.Close()
	}
}

// Leader returns the index of a server that is up and leads, or -1.
func (c *Cluster) Leader() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for i, s := range c.servers {
		if s != nil && s.IsLeader() {
			return i
		}
	}
	return -1
}

// Up lists the servers that are up.
func (c *Cluster) Up() []int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []int
	for i, s := range c.servers {
		if s != nil {
			out = append(out, i)
		}
	}
	return out
}

// Converged reports whether every server is up and holds the same registry
// (same applied index and digest), and returns the digests it saw.
func (c *Cluster) Converged() (bool, []string) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var digests []string
	var idx uint64
	ok := true
	for i, s := range c.servers {
		if s == nil {
			return false, nil
		}
		d := s.FSM().Digest()
		digests = append(digests, d)
		if i > 0 && (d != digests[0] || s.FSM().Index() != idx) {
			ok = false
		}
		idx = s.FSM().Index()
	}
	return ok, digests
}

// DeadHolds lists locks and elections of server i's registry held by a
// lease the registry does not know.
func (c *Cluster) DeadHolds(i int) []string {
	s, _ := c.Server(i)
	if s == nil {
		return nil
	}
	reg := s.FSM()
	var out []string
	check := func(kind string, ms []*fsm.Mutex) {
		for _, m := range ms {
			if m.Holder == nil {
				continue
			}
			if _, ok := reg.Lease(m.Holder.Lease); !ok {
				out = append(out, fmt.Sprintf("%s %q held by lease %s, which does not exist", kind, m.Name, m.Holder.Lease))
			}
		}
	}
	check("lock", reg.Locks())
	check("election", reg.Elections())
	return out
}

// Close stops every server and removes the data dirs.
func (c *Cluster) Close() {
	for i := range c.names {
		c.Crash(i)
	}
	os.RemoveAll(c.dir)
}
