package fsm

import (
	"sort"
	"strings"
)

// Reads return copies: callers may keep and change them freely.

// ServiceEntry is an instance with its aggregate health.
type ServiceEntry struct {
	Instance *Instance
	Status   string
}

// Node returns a node by name.
func (f *FSM) Node(name string) (*Node, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	n, ok := f.st.nodes[name]
	if !ok {
		return nil, false
	}
	return n.clone(), true
}

// Nodes returns every node, sorted by name.
func (f *FSM) Nodes() []*Node {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*Node, 0, len(f.st.nodes))
	for _, name := range sortedKeys(f.st.nodes) {
		out = append(out, f.st.nodes[name].clone())
	}
	return out
}

// Services maps every service name to the sorted union of its instances'
// tags. It costs the number of services and tags, not of instances.
func (f *FSM) Services() map[string][]string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make(map[string][]string, len(f.st.svcTags))
	for name, st := range f.st.svcTags {
		list := make([]string, 0, len(st.tags))
		for t := range st.tags {
			list = append(list, t)
		}
		sort.Strings(list)
		out[name] = list
	}
	return out
}

// ServiceInstances returns the instances of a service (name matched without
// regard to case), sorted by node then ID.
func (f *FSM) ServiceInstances(name string) []ServiceEntry {
	f.mu.RLock()
	defer f.mu.RUnlock()
	keys := f.st.byService[strings.ToLower(name)]
	out := make([]ServiceEntry, 0, len(keys))
	for key := range keys {
		in := f.st.instances[key]
		out = append(out, ServiceEntry{Instance: in.clone(), Status: InstanceStatus(in, f.st.nodes[in.Node])})
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].Instance, out[j].Instance
		if a.Node != b.Node {
			// equivalent mutant: keys are unique, so no two compare equal (< or <=)
			return a.Node < b.Node
		}
		// equivalent mutant: keys are unique, so no two compare equal (< or <=)
		return a.ID < b.ID
	})
	return out
}

// VisitService calls fn for each instance of a service without copying it,
// under the read lock: fn must not keep the instance nor call into the FSM.
// It serves hot paths such as DNS.
func (f *FSM) VisitService(name string, fn func(in *Instance, status string)) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	keys, ok := f.st.byService[strings.ToLower(name)]
	for key := range keys {
		in := f.st.instances[key]
		fn(in, InstanceStatus(in, f.st.nodes[in.Node]))
	}
	return ok
}

// Instance returns one instance of a node.
func (f *FSM) Instance(node, id string) (*Instance, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	in, ok := f.st.instances[instanceKey{node, id}]
	if !ok {
		return nil, false
	}
	return in.clone(), true
}

// NodeInstances returns the instances a node owns, sorted by ID.
func (f *FSM) NodeInstances(node string) []*Instance {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []*Instance
	for key := range f.st.byNode[node] {
		out = append(out, f.st.instances[key].clone())
	}
	// equivalent mutant: ids are unique, so no two compare equal (< or <=)
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// VisitNode calls fn for each instance a node owns without copying it,
// under the read lock: fn must not keep the instance nor call into the FSM.
// The agent's anti-entropy compares its own instances through it.
func (f *FSM) VisitNode(node string, fn func(in *Instance)) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for key := range f.st.byNode[node] {
		fn(f.st.instances[key])
	}
}

// NodeIndex is the index of the last entry that changed a node's instances
// or their checks (0 when unknown); it moves only for that node.
func (f *FSM) NodeIndex(node string) uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.nodeIndex[node]
}

// CheckOwner returns the instance that owns a check of a node.
func (f *FSM) CheckOwner(node, checkID string) (*Instance, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	key, ok := f.st.checks[instanceKey{node, checkID}]
	if !ok {
		return nil, false
	}
	return f.st.instances[key].clone(), true
}

// Lease returns a lease by ID.
func (f *FSM) Lease(id string) (*Lease, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	l, ok := f.st.leases[id]
	if !ok {
		return nil, false
	}
	c := *l
	return &c, true
}

// Leases returns every lease, sorted by ID.
func (f *FSM) Leases() []*Lease {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*Lease, 0, len(f.st.leases))
	for _, id := range sortedKeys(f.st.leases) {
		c := *f.st.leases[id]
		out = append(out, &c)
	}
	return out
}

// Lock returns a lock's state; a vacant lock is still known, so that its
// last token is kept.
func (f *FSM) Lock(name string) (*Mutex, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	m, ok := f.st.locks[name]
	if !ok {
		return nil, false
	}
	return m.clone(), true
}

// Election returns an election's state.
func (f *FSM) Election(name string) (*Mutex, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	m, ok := f.st.elections[name]
	if !ok {
		return nil, false
	}
	return m.clone(), true
}

// Locks returns every lock, sorted by name.
func (f *FSM) Locks() []*Mutex {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return cloneMutexes(f.st.locks)
}

// Elections returns every election, sorted by name.
func (f *FSM) Elections() []*Mutex {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return cloneMutexes(f.st.elections)
}

func cloneMutexes(m map[string]*Mutex) []*Mutex {
	out := make([]*Mutex, 0, len(m))
	for _, name := range sortedKeys(m) {
		out = append(out, m[name].clone())
	}
	return out
}

// Size is how many records the registry holds (nodes, instances, leases,
// locks, elections, tokens): what a snapshot of it encodes.
func (f *FSM) Size() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	st := f.st
	return len(st.nodes) + len(st.instances) + len(st.leases) + len(st.locks) + len(st.elections) + len(st.tokens)
}
