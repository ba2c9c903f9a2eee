package fsm

import (
	"encoding/json"
	"errors"
	"fmt"
)

// CommandType is the first byte of every Raft log entry the registry applies.
type CommandType byte

// Command types. Values are persisted in Raft logs and snapshots: never
// renumber, only append.
const (
	CmdRegisterNode       CommandType = 1
	CmdDeregisterNode     CommandType = 2
	CmdSetNodeStatus      CommandType = 3
	CmdRegisterInstance   CommandType = 4
	CmdDeregisterInstance CommandType = 5
	CmdUpdateCheck        CommandType = 6
	CmdGrantLease         CommandType = 7
	CmdRevokeLease        CommandType = 8
	CmdExpireLease        CommandType = 9
	CmdAcquireLock        CommandType = 10
	CmdReleaseLock        CommandType = 11
	CmdCampaign           CommandType = 12
	CmdResign             CommandType = 13
	CmdACLBootstrap       CommandType = 14
	CmdACLSetToken        CommandType = 15
	CmdACLDeleteToken     CommandType = 16
	CmdTransfer           CommandType = 17
)

func (t CommandType) String() string {
	switch t {
	case CmdRegisterNode:
		return "register_node"
	case CmdDeregisterNode:
		return "deregister_node"
	case CmdSetNodeStatus:
		return "set_node_status"
	case CmdRegisterInstance:
		return "register_instance"
	case CmdDeregisterInstance:
		return "deregister_instance"
	case CmdUpdateCheck:
		return "update_check"
	case CmdGrantLease:
		return "grant_lease"
	case CmdRevokeLease:
		return "revoke_lease"
	case CmdExpireLease:
		return "expire_lease"
	case CmdAcquireLock:
		return "acquire_lock"
	case CmdReleaseLock:
		return "release_lock"
	case CmdCampaign:
		return "campaign"
	case CmdResign:
		return "resign"
	case CmdACLBootstrap:
		return "acl_bootstrap"
	case CmdACLSetToken:
		return "acl_set_token"
	case CmdACLDeleteToken:
		return "acl_delete_token"
	case CmdTransfer:
		return "transfer"
	}
	return fmt.Sprintf("unknown(%d)", byte(t))
}

// Command is one change to the registry. Every command that needs the time
// carries it (Now, unix nanoseconds stamped by the node that proposes it), so
// that Apply never reads a clock.
type Command interface {
	Type() CommandType
}

// RegisterNode adds or updates a node.
type RegisterNode struct {
	Name    string            `json:"name"`
	Address string            `json:"address"`
	Meta    map[string]string `json:"meta,omitempty"`
}

// DeregisterNode removes a node and every instance it owns.
type DeregisterNode struct {
	Name string `json:"name"`
}

// SetNodeStatus records what gossip says of a node (alive, failed, left).
type SetNodeStatus struct {
	Name   string `json:"name"`
	Status string `json:"status"`
}

// RegisterInstance adds or replaces a service instance. Checks keep their
// current status when re-registered with the same ID; new checks start with
// the status given (critical when empty).
type RegisterInstance struct {
	Instance Instance `json:"instance"`
	// If, when set, applies the command only if the instance is as the
	// writer last saw it (see Precondition).
	If *Precondition `json:"if,omitempty"`
}

// DeregisterInstance removes an instance of a node.
type DeregisterInstance struct {
	Node string        `json:"node"`
	ID   string        `json:"id"`
	If   *Precondition `json:"if,omitempty"`
}

// Precondition makes a write conditional on the instance's ModifyIndex:
// 0 means the instance must not exist. A repair computed from one view of
// the registry then never lands after a newer write of the same instance.
type Precondition struct {
	ModifyIndex uint64 `json:"modify_index"`
}

// UpdateCheck sets a check's status.
type UpdateCheck struct {
	Node    string `json:"node"`
	CheckID string `json:"check_id"`
	Status  string `json:"status"`
	Output  string `json:"output,omitempty"`
}

// GrantLease creates a lease. An empty ID is replaced by one derived from the
// log index, which keeps Apply deterministic.
type GrantLease struct {
	ID   string `json:"id,omitempty"`
	TTL  int64  `json:"ttl"`
	Node string `json:"node,omitempty"`
	// Owner is the ID of the ACL token that asked for the lease ("" for a
	// request without one); only it, or a management token, may use it.
	Owner string `json:"owner,omitempty"`
	// Session marks the node session of Node: no token owns it, and only
	// that node's sidecar uses it, on its own behalf (Auth.OnSession).
	Session bool `json:"session,omitempty"`
}

// Auth says on whose behalf a command that uses a lease or a candidacy acts,
// for the ownership rules Apply keeps (SPEC: Security). The Raft leader
// checks By against the token the write arrived with before it proposes
// the entry; a command without By acts for no token.
type Auth struct {
	// By is the ID of the ACL token the request carried.
	By string `json:"by,omitempty"`
	// OnSession: the sidecar of the command's node acts on its own node
	// session (a lock or campaign without a lease, a hold it releases).
	OnSession bool `json:"on_session,omitempty"`
}

// RevokeLease deletes a lease on request: every lock it holds is released,
// every candidacy resigned and every instance attached deregistered.
type RevokeLease struct {
	ID   string `json:"id"`
	Node string `json:"node,omitempty"`
	Now  int64  `json:"now"`
	Auth
}

// ExpireLease is committed by the Raft leader when a lease's deadline passed.
// Its effect is a revoke, except that locks with a lock delay stay vacant for
// that delay.
type ExpireLease struct {
	ID  string `json:"id"`
	Now int64  `json:"now"`
}

// AcquireLock tries to take a lock for a lease. With Queue set a lease that
// cannot take it now waits in line and is handed the lock in the entry that
// releases it.
type AcquireLock struct {
	Name      string `json:"name"`
	Lease     string `json:"lease"`
	Node      string `json:"node,omitempty"`
	Value     string `json:"value,omitempty"`
	Queue     bool   `json:"queue,omitempty"`
	LockDelay int64  `json:"lock_delay,omitempty"`
	Now       int64  `json:"now"`
	Auth
}

// ReleaseLock gives a lock up, or leaves its queue. With OnlyWaiting set a
// holder keeps the lock (a waiter whose wait ended uses it, so that it never
// drops a lock it was just handed). With Token set it releases only the
// acquisition that got that fencing token (token-guarded release): a late,
// retried release never ends a newer hold on the same lease, and is
// refused with ErrStaleToken instead.
type ReleaseLock struct {
	Name        string `json:"name"`
	Lease       string `json:"lease"`
	OnlyWaiting bool   `json:"only_waiting,omitempty"`
	Node        string `json:"node,omitempty"`
	Token       uint64 `json:"token,omitempty"`
	Now         int64  `json:"now"`
	Auth
}

// Campaign enters a candidate in an election; the first in line leads.
// Campaigning again with the same candidate updates its value.
type Campaign struct {
	Election  string `json:"election"`
	Candidate string `json:"candidate"`
	Lease     string `json:"lease"`
	Node      string `json:"node,omitempty"`
	Value     string `json:"value,omitempty"`
	Service   string `json:"service,omitempty"`
	Now       int64  `json:"now"`
	Auth
}

// Resign withdraws a candidate; when it led, the next in line leads.
type Resign struct {
	Election    string `json:"election"`
	Candidate   string `json:"candidate"`
	OnlyWaiting bool   `json:"only_waiting,omitempty"`
	Node        string `json:"node,omitempty"`
	Now         int64  `json:"now"`
	Auth
}

// Transfer hands an election from its leader From to the waiting candidate
// To in one entry: To leads with a greater token, and From leaves the
// election (a resign with a chosen successor; its app may campaign again).
// Node is the sidecar that sends it, which must be the one From campaigns
// through: that sidecar reports From as no longer leading before it sends
// the entry, so no observer sees two leaders.
type Transfer struct {
	Election string `json:"election"`
	From     string `json:"from"`
	To       string `json:"to"`
	Node     string `json:"node,omitempty"`
	Now      int64  `json:"now"`
	Auth
}

func (RegisterNode) Type() CommandType       { return CmdRegisterNode }
func (DeregisterNode) Type() CommandType     { return CmdDeregisterNode }
func (SetNodeStatus) Type() CommandType      { return CmdSetNodeStatus }
func (RegisterInstance) Type() CommandType   { return CmdRegisterInstance }
func (DeregisterInstance) Type() CommandType { return CmdDeregisterInstance }
func (UpdateCheck) Type() CommandType        { return CmdUpdateCheck }
func (GrantLease) Type() CommandType         { return CmdGrantLease }
func (RevokeLease) Type() CommandType        { return CmdRevokeLease }
func (ExpireLease) Type() CommandType        { return CmdExpireLease }
func (AcquireLock) Type() CommandType        { return CmdAcquireLock }
func (ReleaseLock) Type() CommandType        { return CmdReleaseLock }
func (Campaign) Type() CommandType           { return CmdCampaign }
func (Resign) Type() CommandType             { return CmdResign }
func (Transfer) Type() CommandType           { return CmdTransfer }

// ErrDecode wraps every failure to decode a command.
var ErrDecode = errors.New("fsm: decode command")

// Encode serialises a command as its type byte followed by JSON.
func Encode(c Command) ([]byte, error) {
	body, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", c.Type(), err)
	}
	// equivalent mutant: a capacity only saves a copy
	out := make([]byte, 0, len(body)+1)
	out = append(out, byte(c.Type()))
	return append(out, body...), nil
}

// Decode parses what Encode produced. It never panics on any input.
func Decode(b []byte) (Command, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty entry", ErrDecode)
	}
	var c Command
	switch CommandType(b[0]) {
	case CmdRegisterNode:
		c = &RegisterNode{}
	case CmdDeregisterNode:
		c = &DeregisterNode{}
	case CmdSetNodeStatus:
		c = &SetNodeStatus{}
	case CmdRegisterInstance:
		c = &RegisterInstance{}
	case CmdDeregisterInstance:
		c = &DeregisterInstance{}
	case CmdUpdateCheck:
		c = &UpdateCheck{}
	case CmdGrantLease:
		c = &GrantLease{}
	case CmdRevokeLease:
		c = &RevokeLease{}
	case CmdExpireLease:
		c = &ExpireLease{}
	case CmdAcquireLock:
		c = &AcquireLock{}
	case CmdReleaseLock:
		c = &ReleaseLock{}
	case CmdCampaign:
		c = &Campaign{}
	case CmdResign:
		c = &Resign{}
	case CmdACLBootstrap:
		c = &ACLBootstrap{}
	case CmdACLSetToken:
		c = &ACLSetToken{}
	case CmdACLDeleteToken:
		c = &ACLDeleteToken{}
	case CmdTransfer:
		c = &Transfer{}
	default:
		return nil, fmt.Errorf("%w: unknown type %d", ErrDecode, b[0])
	}
	if err := json.Unmarshal(b[1:], c); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrDecode, CommandType(b[0]), err)
	}
	return c, nil
}
