package dnsserver

import (
	"strings"
	"sync"
	"time"

	"github.com/sidecarhq/sidecar/fsm"
)

// Registry is the part of the registry the DNS server reads. *fsm.FSM
// satisfies it. Every method may be called from many goroutines at once.
type Registry interface {
	// VisitService calls fn for each instance of a service, the name
	// matched without regard to case, with its aggregate health status. fn
	// must neither keep the instance nor call back into the Registry. It
	// reports false when the service does not exist.
	VisitService(name string, fn func(in *fsm.Instance, status string)) bool
	// Node returns a node by its exact name; the caller may keep it.
	Node(name string) (*fsm.Node, bool)
	// Election returns an election by its exact name; the caller may keep
	// it.
	Election(name string) (*fsm.Mutex, bool)
}

// Lister is an optional capability of a Registry, found by type assertion:
// with it, node and election names are matched without regard to case even
// when they were registered with capitals and queried otherwise (resolvers
// that randomise the case of queries do that). Without it only the name as
// queried and its lower-case form are tried. *fsm.FSM satisfies it.
type Lister interface {
	Nodes() []*fsm.Node
	Elections() []*fsm.Mutex
	// TableIndex changes whenever the nodes or elections change, so that
	// the list is read again only then.
	TableIndex(t fsm.Table) uint64
}

// Leases tells how long a lease is surely still live: the time left until
// the lease may expire, as the node that tracks its keepalives knows it.
// false means unknown, and leader answers then get TTL 0. It may be called
// from many goroutines at once and must not block.
type Leases interface {
	LeaseRemaining(leaseID string) (time.Duration, bool)
}

// LeasesFunc adapts a function to Leases.
type LeasesFunc func(leaseID string) (time.Duration, bool)

// LeaseRemaining calls f.
func (f LeasesFunc) LeaseRemaining(leaseID string) (time.Duration, bool) { return f(leaseID) }

// foldIndex maps the lower-case form of names that have capitals to the
// names themselves, rebuilt from a Lister when its table index moved. It is
// only consulted after a miss, so its cost is paid by odd queries alone.
type foldIndex struct {
	table fsm.Table
	list  func(Lister) []string

	mu    sync.Mutex
	index uint64
	built bool
	names map[string]string
}

func newFoldIndex(t fsm.Table, list func(Lister) []string) *foldIndex {
	return &foldIndex{table: t, list: list}
}

// lookup returns the registered name whose lower-case form is lower.
func (f *foldIndex) lookup(l Lister, lower string) (string, bool) {
	idx := l.TableIndex(f.table)
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.built || idx != f.index {
		f.names = map[string]string{}
		for _, name := range f.list(l) {
			if low := strings.ToLower(name); low != name {
				f.names[low] = name
			}
		}
		f.index, f.built = idx, true
	}
	name, ok := f.names[lower]
	return name, ok
}

func nodeNames(l Lister) []string {
	nodes := l.Nodes()
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.Name
	}
	return out
}

func electionNames(l Lister) []string {
	els := l.Elections()
	out := make([]string, len(els))
	for i, m := range els {
		out[i] = m.Name
	}
	return out
}

// node finds a node by a label as queried (orig) and lower-cased (lower).
func (s *Server) node(orig, lower string) (*fsm.Node, bool) {
	if n, ok := s.reg.Node(orig); ok {
		return n, true
	}
	if lower != orig {
		if n, ok := s.reg.Node(lower); ok {
			return n, true
		}
	}
	if s.lister != nil {
		if name, ok := s.foldNodes.lookup(s.lister, lower); ok {
			return s.reg.Node(name)
		}
	}
	return nil, false
}

// election finds an election like node finds a node.
func (s *Server) election(orig, lower string) (*fsm.Mutex, bool) {
	if m, ok := s.reg.Election(orig); ok {
		return m, true
	}
	if lower != orig {
		if m, ok := s.reg.Election(lower); ok {
			return m, true
		}
	}
	if s.lister != nil {
		if name, ok := s.foldElections.lookup(s.lister, lower); ok {
			return s.reg.Election(name)
		}
	}
	return nil, false
}
