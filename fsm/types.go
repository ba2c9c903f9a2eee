package fsm

import "sort"

// Health statuses. The worst status of an instance's checks is its status.
const (
	StatusPassing  = "passing"
	StatusWarning  = "warning"
	StatusCritical = "critical"
)

// Node statuses as gossip reports them.
const (
	NodeAlive  = "alive"
	NodeFailed = "failed"
	NodeLeft   = "left"
)

// Node is a member of the cluster as the registry knows it.
type Node struct {
	Name        string            `json:"name"`
	Address     string            `json:"address"`
	Meta        map[string]string `json:"meta,omitempty"`
	Status      string            `json:"status"`
	ModifyIndex uint64            `json:"modify_index"`
}

// Check is a health check of a service instance: its definition travels with
// it so that any node can run it after a restart, its status is what Raft
// agreed on.
type Check struct {
	ID     string `json:"id"`
	Name   string `json:"name,omitempty"`
	Type   string `json:"type"`
	Status string `json:"status"`
	Output string `json:"output,omitempty"`
	// Definition fields; durations in nanoseconds.
	HTTP                    string   `json:"http,omitempty"`
	TCP                     string   `json:"tcp,omitempty"`
	Exec                    []string `json:"exec,omitempty"`
	TTL                     int64    `json:"ttl,omitempty"`
	Interval                int64    `json:"interval,omitempty"`
	Timeout                 int64    `json:"timeout,omitempty"`
	SuccessBeforePassing    int      `json:"success_before_passing,omitempty"`
	FailuresBeforeCritical  int      `json:"failures_before_critical,omitempty"`
	DeregisterCriticalAfter int64    `json:"deregister_critical_after,omitempty"`
	ModifyIndex             uint64   `json:"modify_index"`
}

// Instance is one registered instance of a service, owned by a node. Its ID
// is unique per node.
type Instance struct {
	ID      string            `json:"id"`
	Name    string            `json:"name"`
	Node    string            `json:"node"`
	Address string            `json:"address"`
	Port    int               `json:"port"`
	Tags    []string          `json:"tags,omitempty"`
	Meta    map[string]string `json:"meta,omitempty"`
	Lease   string            `json:"lease,omitempty"`
	Checks  []Check           `json:"checks,omitempty"`
	// Weight (1-65535) is the instance's share of the load: its SRV
	// weight, and how often DNS lists it first. 0, the value of
	// instances stored before weights existed (snapshots, log entries),
	// means DefaultWeight; omitted when 0 so that those encode as
	// before.
	Weight      int    `json:"weight,omitempty"`
	CreateIndex uint64 `json:"create_index"`
	ModifyIndex uint64 `json:"modify_index"`
}

// Lease is a time-to-live that locks, candidacies and instances hang on. The
// registry stores only its TTL: deadlines live in the Raft leader's memory,
// because keepalives do not go through the log.
type Lease struct {
	ID   string `json:"id"`
	TTL  int64  `json:"ttl"` // nanoseconds
	Node string `json:"node,omitempty"`
	// Owner is the ACL token that created the lease ("" none), Session
	// marks Node's node session (see GrantLease).
	Owner       string `json:"owner,omitempty"`
	Session     bool   `json:"session,omitempty"`
	CreateIndex uint64 `json:"create_index"`
}

// Holder is the holder of a mutex (a lock or an election), or one waiting for
// it. For a lock the ID is the lease; for an election it is the candidate.
type Holder struct {
	ID      string `json:"id"`
	Lease   string `json:"lease"`
	Node    string `json:"node,omitempty"`
	Value   string `json:"value,omitempty"`
	Service string `json:"service,omitempty"`
	// Owner is the ACL token that campaigned (elections; "" none): only it
	// may resign the candidate.
	Owner string `json:"owner,omitempty"`
	// LockDelay (ns) is the lock delay a lock's holder asked for (see
	// Mutex.LockDelay); a waiter keeps it until its hold begins.
	LockDelay int64 `json:"lock_delay,omitempty"`
	// Token is the fencing token: the Raft index of the entry that made this
	// holder the owner. Zero while waiting.
	Token uint64 `json:"token,omitempty"`
	Since int64  `json:"since,omitempty"` // leader time, unix nanoseconds
}

// Mutex is the one primitive behind locks and elections: an owner and a FIFO
// queue of waiters. Keeping the queue in the registry lets a release, resign
// or expiry hand the mutex to the next waiter in the same Raft entry.
type Mutex struct {
	Name    string   `json:"name"`
	Holder  *Holder  `json:"holder,omitempty"`
	Waiters []Holder `json:"waiters,omitempty"`
	// LastToken is the greatest token ever handed out for this name; it
	// survives the mutex going vacant so that tokens never go back.
	LastToken uint64 `json:"last_token"`
	// LockDelay (ns), the one its current hold asked for, holds a mutex
	// released by lease expiry vacant until DelayUntil (leader time, unix
	// ns).
	LockDelay   int64  `json:"lock_delay,omitempty"`
	DelayUntil  int64  `json:"delay_until,omitempty"`
	ModifyIndex uint64 `json:"modify_index"`
}

// Instance weights: a registration without one gets DefaultWeight, and
// MaxWeight is the largest an SRV record carries (RFC 2782).
const (
	DefaultWeight = 1
	MaxWeight     = 65535
)

// EffectiveWeight is the weight the instance is served with: Weight, or
// DefaultWeight when it has none.
func (i *Instance) EffectiveWeight() int {
	if i.Weight == 0 {
		return DefaultWeight
	}
	return i.Weight
}

// InstanceStatus is the aggregate health of an instance: critical when its
// node failed or left, else the worst status of its checks, passing when it
// has none.
func InstanceStatus(inst *Instance, node *Node) string {
	if node != nil && node.Status != NodeAlive {
		return StatusCritical
	}
	status := StatusPassing
	for _, c := range inst.Checks {
		switch c.Status {
		case StatusCritical:
			return StatusCritical
		case StatusWarning:
			status = StatusWarning
		case StatusPassing:
		default:
			return StatusCritical
		}
	}
	return status
}

func (n *Node) clone() *Node {
	c := *n
	c.Meta = cloneMap(n.Meta)
	return &c
}

func (i *Instance) clone() *Instance {
	c := *i
	c.Tags = append([]string(nil), i.Tags...)
	c.Meta = cloneMap(i.Meta)
	c.Checks = make([]Check, len(i.Checks))
	for k, ch := range i.Checks {
		ch.Exec = append([]string(nil), ch.Exec...)
		c.Checks[k] = ch
	}
	if len(i.Checks) == 0 {
		c.Checks = nil
	}
	return &c
}

func (m *Mutex) clone() *Mutex {
	c := *m
	if m.Holder != nil {
		h := *m.Holder
		c.Holder = &h
	}
	c.Waiters = append([]Holder(nil), m.Waiters...)
	return &c
}

// cloneMap copies m; an empty map becomes nil, the one form a snapshot
// (which omits empty maps) restores, so a registry and its snapshot agree.
func cloneMap(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
