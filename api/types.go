// Package api holds the JSON wire types of sidecar's HTTP API and a small Go
// client for it. The CLI, the tests and applications use it; the server
// handlers in package httpapi encode the same types.
package api

import (
	"encoding/json"
	"time"
)

// Header names.
const (
	// HeaderIndex carries the registry index an answer reflects; pass it back
	// as ?index= for a blocking query.
	HeaderIndex = "X-Sidecar-Index"
)

// Health statuses of checks and instances.
const (
	StatusPassing  = "passing"
	StatusWarning  = "warning"
	StatusCritical = "critical"
)

// HoldConnection is the value of LockRequest.Hold / CampaignRequest.Hold that
// ties a hold to the lifetime of the HTTP connection.
const HoldConnection = "connection"

// Error is the body of every error answer.
type Error struct {
	Error string `json:"error"`
}

// Status is GET /v1/status.
type Status struct {
	Node         string   `json:"node"`
	Role         string   `json:"role"`
	Leader       string   `json:"leader"`
	Term         uint64   `json:"term"`
	CommitIndex  uint64   `json:"commit_index"`
	AppliedIndex uint64   `json:"applied_index"`
	Peers        []string `json:"peers"`
	// RegistryIndex and Digest describe this agent's own copy of the
	// registry: equal digests mean equal registries, so a caller can tell
	// when every node has converged (the fault-injection suite does).
	RegistryIndex uint64 `json:"registry_index"`
	Digest        string `json:"digest"`
	// StreamServer is, on a client agent, the server whose change stream
	// feeds its copy (the leader once the client knows it); empty on
	// servers and while no stream is connected.
	StreamServer string `json:"stream_server,omitempty"`
}

// Member is one entry of GET /v1/members.
type Member struct {
	Name   string `json:"name"`
	Addr   string `json:"addr"`
	Port   int    `json:"port"`
	Role   string `json:"role"`
	Status string `json:"status"`
}

// CheckDefinition is a health check in a registration or config file.
// Durations are Go duration strings.
type CheckDefinition struct {
	ID                      string   `json:"id,omitempty" yaml:"id"`
	Name                    string   `json:"name,omitempty" yaml:"name"`
	Type                    string   `json:"type" yaml:"type"`
	HTTP                    string   `json:"http,omitempty" yaml:"http"`
	TCP                     string   `json:"tcp,omitempty" yaml:"tcp"`
	Exec                    []string `json:"exec,omitempty" yaml:"exec"`
	TTL                     string   `json:"ttl,omitempty" yaml:"ttl"`
	Interval                string   `json:"interval,omitempty" yaml:"interval"`
	Timeout                 string   `json:"timeout,omitempty" yaml:"timeout"`
	SuccessBeforePassing    int      `json:"success_before_passing,omitempty" yaml:"success_before_passing"`
	FailuresBeforeCritical  int      `json:"failures_before_critical,omitempty" yaml:"failures_before_critical"`
	DeregisterCriticalAfter string   `json:"deregister_critical_after,omitempty" yaml:"deregister_critical_after"`
}

// ServiceRegistration is the body of PUT /v1/services.
type ServiceRegistration struct {
	ID      string            `json:"id" yaml:"id"`
	Name    string            `json:"name" yaml:"name"`
	Address string            `json:"address,omitempty" yaml:"address"`
	Port    int               `json:"port" yaml:"port"`
	Tags    []string          `json:"tags,omitempty" yaml:"tags"`
	Meta    map[string]string `json:"meta,omitempty" yaml:"meta"`
	Checks  []CheckDefinition `json:"checks,omitempty" yaml:"checks"`
	// Weight (1-65535) is the instance's share of the load: its SRV
	// weight, and how often DNS lists its address first. 0 (omitted)
	// means 1.
	Weight int `json:"weight,omitempty" yaml:"weight"`
	// Lease optionally attaches the instance to a lease: revoking or expiring
	// the lease deregisters the instance.
	Lease string `json:"lease,omitempty" yaml:"lease"`
}

// RegisterResponse answers PUT /v1/services.
type RegisterResponse struct {
	ID    string `json:"id"`
	Index uint64 `json:"index"`
}

// Instance is one entry of GET /v1/services/{name}.
type Instance struct {
	ID      string            `json:"id"`
	Name    string            `json:"name"`
	Node    string            `json:"node"`
	Address string            `json:"address"`
	Port    int               `json:"port"`
	Tags    []string          `json:"tags"`
	Meta    map[string]string `json:"meta"`
	Status  string            `json:"status"`
	Checks  []CheckStatus     `json:"checks,omitempty"`
	// Weight is the instance's weight (1-65535); 0 from an agent that
	// does not report weights, which serves 1.
	Weight int `json:"weight,omitempty"`
}

// CheckStatus is a check's current state as reported with an instance.
type CheckStatus struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Type   string `json:"type"`
	Status string `json:"status"`
	Output string `json:"output,omitempty"`
}

// LeaseRequest is the body of POST /v1/leases.
type LeaseRequest struct {
	TTL string `json:"ttl"`
}

// Lease answers POST /v1/leases and PUT /v1/leases/{id}/keepalive.
type Lease struct {
	ID  string `json:"id"`
	TTL string `json:"ttl"`
}

// LockRequest is the body of PUT and DELETE /v1/locks/{name}.
type LockRequest struct {
	Lease string `json:"lease,omitempty"`
	Wait  string `json:"wait,omitempty"`
	Value string `json:"value,omitempty"`
	// Hold "connection" streams JSON lines and holds the lock exactly as long
	// as the HTTP connection.
	Hold string `json:"hold,omitempty"`
	// TTL of the dedicated lease of a connection-bound hold (default: the
	// agent's session TTL).
	TTL string `json:"ttl,omitempty"`
	// LockDelay keeps a lock released by lease expiry unavailable this long.
	LockDelay string `json:"lock_delay,omitempty"`
	// Token, on a release (DELETE), releases only the acquisition that got
	// this fencing token: a late, retried unlock never ends a newer hold.
	Token uint64 `json:"token,omitempty"`
}

// FenceResult answers GET /v1/locks/{name}/fence and
// /v1/elections/{name}/fence: Current when the token asked about is the
// live holder's (checked with a quorum), and the current token (0 when
// vacant).
type FenceResult struct {
	Current bool   `json:"current"`
	Token   uint64 `json:"token"`
}

// TransferRequest is the body of PUT /v1/elections/{name}/transfer.
type TransferRequest struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// TransferResult answers a transfer: the new leader and its token.
type TransferResult struct {
	Leader string `json:"leader"`
	Token  uint64 `json:"token"`
}

// LockResult answers PUT /v1/locks/{name} and is each line of a
// connection-bound lock stream.
type LockResult struct {
	Held   bool    `json:"held"`
	Token  uint64  `json:"token,omitempty"`
	Lease  string  `json:"lease,omitempty"`
	Holder *Holder `json:"holder,omitempty"`
}

// Holder describes who holds a lock or leads an election.
type Holder struct {
	Candidate string    `json:"candidate,omitempty"`
	Node      string    `json:"node"`
	Lease     string    `json:"lease"`
	Value     string    `json:"value"`
	Token     uint64    `json:"token"`
	Since     time.Time `json:"since"`
}

// LockInfo answers GET /v1/locks/{name}.
type LockInfo struct {
	Holder string    `json:"holder"`
	Lease  string    `json:"lease"`
	Value  string    `json:"value"`
	Token  uint64    `json:"token"`
	Since  time.Time `json:"since"`
}

// CampaignRequest is the body of PUT /v1/elections/{name}/campaign.
type CampaignRequest struct {
	Candidate string `json:"candidate"`
	Value     string `json:"value"`
	Service   string `json:"service,omitempty"`
	Wait      string `json:"wait,omitempty"`
	Lease     string `json:"lease,omitempty"`
	Hold      string `json:"hold,omitempty"`
	TTL       string `json:"ttl,omitempty"`
}

// CampaignResult answers a campaign and is each line of a connection-bound
// campaign stream.
type CampaignResult struct {
	Leader    bool    `json:"leader"`
	Token     uint64  `json:"token,omitempty"`
	ExpiresIn string  `json:"expires_in,omitempty"`
	Current   *Holder `json:"current,omitempty"`
}

// ElectionInfo answers GET /v1/elections/{name}.
type ElectionInfo struct {
	Leader *Holder `json:"leader"`
}

// MutexInfo is one lock or election in the listings GET /v1/locks and
// GET /v1/elections: a vacant one has a nil Holder and keeps LastToken.
type MutexInfo struct {
	Name   string  `json:"name"`
	Holder *Holder `json:"holder"`
	// LeaseTTL is the TTL of the holder's lease (Go duration), known to
	// every agent from the registry.
	LeaseTTL string `json:"lease_ttl,omitempty"`
	// ExpiresIn is how long the holder's lease stays live without another
	// keepalive (Go duration), given only by an agent that knows it: the
	// Raft leader, which tracks every deadline, or the agent holding the
	// lease. Other agents leave it out (deadlines are not replicated).
	ExpiresIn string `json:"expires_in,omitempty"`
	// LastToken is the greatest fencing token handed out for the name.
	LastToken uint64   `json:"last_token"`
	Waiters   []Waiter `json:"waiters"`
}

// Waiter is one in line for a lock or election, first in line first.
type Waiter struct {
	Candidate string `json:"candidate,omitempty"`
	Node      string `json:"node"`
	Lease     string `json:"lease"`
	Value     string `json:"value"`
}

// SelfStatus answers GET /v1/elections/{name}/self.
type SelfStatus struct {
	Leader    bool   `json:"leader"`
	Token     uint64 `json:"token,omitempty"`
	ExpiresIn string `json:"expires_in,omitempty"`
	Candidate string `json:"candidate,omitempty"`
}

// HeaderToken carries the secret of a request's ACL token.
const HeaderToken = "X-Sidecar-Token"

// ACLToken is an ACL token as the API shows it: its ID, description, rules
// and indexes. Secret is set only in the answer that creates a token (and
// then alone with ID): the agent keeps no secret, only its hash.
type ACLToken struct {
	ID          string          `json:"id"`
	Secret      string          `json:"secret,omitempty"`
	Description string          `json:"description,omitempty"`
	Rules       json.RawMessage `json:"rules,omitempty"`
	Management  bool            `json:"management,omitempty"`
	CreateIndex uint64          `json:"create_index,omitempty"`
	ModifyIndex uint64          `json:"modify_index,omitempty"`
}

// ACLTokenRequest is the body of PUT /v1/acl/tokens. Without ID it creates
// a token; with the ID of an existing token ("anonymous": the rules of
// requests without a token) it replaces that token's description and
// rules, and its management flag when Management is set.
type ACLTokenRequest struct {
	ID          string          `json:"id,omitempty"`
	Description string          `json:"description,omitempty"`
	Rules       json.RawMessage `json:"rules,omitempty"`
	Management  *bool           `json:"management,omitempty"`
	// Secret, on creation only, is a secret the caller chose (at least 16
	// characters, no spaces), for a token that must be known before it
	// exists (--acl-dns-token); by default the agent makes a random one.
	Secret string `json:"secret,omitempty"`
}
