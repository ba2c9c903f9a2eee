package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/discovery"
	"github.com/sidecarhq/sidecar/fsm"
)

// What the HTTP API asks of the agent (httpapi.Agent).

// Node implements httpapi.Agent.
func (a *Agent) Node() string { return a.cfg.Name }

// Status implements httpapi.Agent.
func (a *Agent) Status() api.Status {
	if a.server != nil {
		st := a.server.Status()
		st.RegistryIndex, st.Digest = a.reg.Index(), a.reg.Digest()
		return st
	}
	// A client has no Raft of its own: it reports a server's view, with
	// its own name, role and how far its copy has applied.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := a.remote.ServerStatus(ctx)
	if err != nil {
		st = api.Status{}
		for _, m := range a.gossip.Members() {
			if m.Status == discovery.StatusAlive && m.Meta.IsServer() {
				st.Peers = append(st.Peers, m.Name)
			}
		}
	}
	st.Node, st.Role, st.AppliedIndex = a.cfg.Name, "client", a.reg.Index()
	st.RegistryIndex, st.Digest = a.reg.Index(), a.reg.Digest()
	st.StreamServer = a.serverName(a.replica.Server())
	if st.Peers == nil {
		st.Peers = []string{}
	}
	return st
}

// serverName is the gossip name of the server at Raft address addr; the
// address itself when gossip does not know it.
func (a *Agent) serverName(addr string) string {
	if addr == "" {
		return ""
	}
	for _, m := range a.gossip.Members() {
		if m.Meta.IsServer() && m.Meta.RaftAddr == addr {
			return m.Name
		}
	}
	return addr
}

// Members lists the gossip members.
func (a *Agent) Members() []api.Member {
	var out []api.Member
	for _, m := range a.gossip.Members() {
		out = append(out, api.Member{Name: m.Name, Addr: m.Addr, Port: m.Port, Role: m.Meta.Role, Status: string(m.Status)})
	}
	return out
}

// MemberChanges implements httpapi.MemberWatch: /v1/members blocks on
// this agent's own gossip table, which it answers from.
func (a *Agent) MemberChanges() (uint64, <-chan struct{}) { return a.gossip.Changes() }

// Ready implements httpapi.Agent: joined, a leader known (a client: its
// copy of the registry current).
func (a *Agent) Ready() error {
	if a.server != nil {
		if err := a.server.DiskFull(); err != nil {
			return fmt.Errorf("writes refused: %w", err)
		}
		if leader, _ := a.server.Leader(); leader == "" {
			return errors.New("no raft leader known")
		}
	} else if err := a.replica.Current(); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.ready {
		return errors.New("agent still joining")
	}
	return nil
}

// Apply writes through the Raft leader.
func (a *Agent) Apply(ctx context.Context, cmd fsm.Command) (*fsm.Result, error) {
	return a.remote.Apply(ctx, cmd)
}

// ConsistentRead implements httpapi.Agent.
func (a *Agent) ConsistentRead(ctx context.Context) error {
	if a.server != nil && a.server.IsLeader() {
		return a.server.ConsistentRead(ctx)
	}
	return a.remote.ConsistentRead(ctx, a.reg)
}

// SaveSnapshot implements httpapi.Agent: any agent holds a whole copy.
func (a *Agent) SaveSnapshot(w io.Writer) error { return a.reg.WriteSnapshot(w) }

// RestoreSnapshot implements httpapi.Agent: the Raft leader restores,
// wherever the request arrives.
func (a *Agent) RestoreSnapshot(ctx context.Context, r io.Reader) error {
	if rs, ok := r.(io.ReadSeeker); ok {
		// The API spooled the body to a file: it streams on from there.
		return a.remote.RestoreFrom(ctx, rs)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	return a.remote.Restore(ctx, data)
}

// KeepAlive writes nothing: it reaches the leader's lease tracker.
func (a *Agent) KeepAlive(ctx context.Context, id string) (time.Duration, error) {
	return a.remote.KeepAlive(ctx, id)
}

// LeaseRemaining tells how long a lease surely stays live, for DNS TTLs of
// leader records: this sidecar's own knowledge, else the leader's deadline.
func (a *Agent) LeaseRemaining(id string) (time.Duration, bool) {
	if d, ok := a.local.LeaseRemaining(id); ok {
		return d, true
	}
	if a.server != nil {
		return a.server.LeaseRemaining(id)
	}
	return 0, false
}

// LocalServiceName implements httpapi.LocalServices: the service of an
// instance kept in the local state. A damaged record is an error, never
// "not kept": the caller would answer 404 for an instance this agent owns.
func (a *Agent) LocalServiceName(id string) (string, bool, error) {
	svc, ok, err := a.state.Service(id)
	if err != nil || !ok {
		return "", false, err
	}
	return svc.Instance.Name, true, nil
}
