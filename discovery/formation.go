package discovery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/fsm"
)

// TagBootstrapped is set in a server's meta once it holds Raft state, so
// that servers starting later join the existing cluster instead of
// bootstrapping a second one.
const TagBootstrapped = "bootstrapped"

// Writer applies registry commands through the Raft leader.
type Writer interface {
	Apply(ctx context.Context, cmd fsm.Command) (*fsm.Result, error)
}

// FormationConfig configures how gossip drives the Raft group.
type FormationConfig struct {
	// BootstrapExpect servers bootstrap Raft together once they see each
	// other (0: never bootstrap; join an existing cluster).
	BootstrapExpect int
	// ReapAfter is how long a server stays failed before the leader removes
	// it from Raft, and then only if the remaining voters keep a quorum.
	ReapAfter time.Duration
	// Interval is how often the leader reconciles even without events.
	Interval time.Duration
	Logger   *slog.Logger
}

// DefaultFormationConfig returns production settings.
func DefaultFormationConfig() FormationConfig {
	return FormationConfig{
		// A server that stays failed for 72h is gone for good; one that
		// comes back earlier keeps its vote, as in Consul.
		ReapAfter: 72 * time.Hour,
		// Events trigger reconciliation at once; this only repairs what a
		// failed write or a missed event left behind.
		Interval: time.Second,
	}
}

// Formation turns gossip membership into the Raft group and the node table:
// servers bootstrap once BootstrapExpect of them see each other; the leader
// adds servers that join as voters, removes servers that leave, reaps servers
// failed past ReapAfter while quorum allows, and records every node's health
// (failed nodes' instances turn critical at once, left nodes are
// deregistered).
type Formation struct {
	cfg    FormationConfig
	g      *Gossip
	srv    *election.Server
	reg    *fsm.FSM
	w      Writer
	log    *slog.Logger
	wake   chan struct{}
	tagged bool
	// refused remembers the servers whose certificate did not verify, by
	// name and address, so each is logged once, not at every step.
	refused map[string]string
}

// NewFormation returns the formation of a server.
func NewFormation(cfg FormationConfig, g *Gossip, srv *election.Server, w Writer) *Formation {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.ReapAfter <= 0 {
		cfg.ReapAfter = DefaultFormationConfig().ReapAfter
	}
	return &Formation{cfg: cfg, g: g, srv: srv, reg: srv.FSM(), w: w,
		log: cfg.Logger.With("component", "formation"), wake: make(chan struct{}, 1), refused: map[string]string{}}
}

// Wake asks for a reconciliation now (the agent forwards gossip events).
func (f *Formation) Wake() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// Run reconciles until ctx ends.
func (f *Formation) Run(ctx context.Context) {
	tick := time.NewTicker(f.cfg.Interval)
	defer tick.Stop()
	// Leadership changes matter at once: a new leader reconciles first.
	leaderTick := time.NewTicker(100 * time.Millisecond)
	defer leaderTick.Stop()
	wasLeader := false
	for {
		f.step(ctx)
		select {
		case <-ctx.Done():
			return
		case <-f.wake:
		case <-tick.C:
		case <-leaderTick.C:
			if l := f.srv.IsLeader(); l == wasLeader {
				continue
			} else {
				wasLeader = l
			}
		}
	}
}

func (f *Formation) step(ctx context.Context) {
	if err := f.bootstrap(ctx); err != nil {
		f.log.Warn("bootstrap", "err", err)
	}
	if f.srv.IsLeader() {
		if err := f.reconcileRaft(ctx); err != nil {
			f.log.Warn("reconcile raft membership", "err", err)
		}
		if err := f.reconcileNodes(ctx); err != nil && ctx.Err() == nil {
			f.log.Warn("reconcile nodes", "err", err)
		}
	}
}

func (f *Formation) hasState() bool {
	fut := f.srv.Raft().GetConfiguration()
	return fut.Error() == nil && len(fut.Configuration().Servers) > 0
}

// bootstrap bootstraps Raft once BootstrapExpect servers without state see
// each other. Every one of them computes the same configuration (the alive
// servers sorted by name), which Raft accepts from each.
func (f *Formation) bootstrap(ctx context.Context) error {
	if f.hasState() {
		if !f.tagged {
			meta := f.g.LocalMember().Meta
			if meta.Tags == nil {
				meta.Tags = map[string]string{}
			}
			meta.Tags[TagBootstrapped] = "1"
			if err := f.g.UpdateMeta(ctx, meta); err != nil {
				return fmt.Errorf("advertise raft state: %w", err)
			}
			f.tagged = true
		}
		return nil
	}
	if f.cfg.BootstrapExpect <= 0 {
		return nil
	}
	var servers []Member
	for _, m := range f.g.Members() {
		if m.Status != StatusAlive || !m.Meta.IsServer() {
			continue
		}
		if m.Meta.Tags[TagBootstrapped] != "" {
			// A cluster exists: its leader adds this server.
			return nil
		}
		if m.Meta.BootstrapExpect != 0 && m.Meta.BootstrapExpect != f.cfg.BootstrapExpect {
			return fmt.Errorf("server %s expects %d servers, this one %d: not bootstrapping", m.Name, m.Meta.BootstrapExpect, f.cfg.BootstrapExpect)
		}
		if !f.certified(ctx, m) {
			continue // does not count towards bootstrap-expect either
		}
		servers = append(servers, m)
	}
	if len(servers) < f.cfg.BootstrapExpect {
		return nil
	}
	sort.Slice(servers, func(i, j int) bool { return servers[i].Name < servers[j].Name })
	var conf raft.Configuration
	for _, m := range servers {
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(m.Name), Address: raft.ServerAddress(m.Meta.RaftAddr)})
	}
	f.log.Info("bootstrapping raft", "servers", len(conf.Servers))
	if err := f.srv.Raft().BootstrapCluster(conf).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		return err
	}
	return nil
}

// certified reports whether the member that claims role=server in gossip
// holds a server certificate for its name at its Raft address (always true
// without TLS, where gossip is all there is to go by). A refusal is logged
// once per name and address.
func (f *Formation) certified(ctx context.Context, m Member) bool {
	err := f.srv.VerifyServer(ctx, m.Name, m.Meta.RaftAddr)
	if err == nil {
		delete(f.refused, m.Name)
		return true
	}
	if f.refused[m.Name] != m.Meta.RaftAddr {
		f.refused[m.Name] = m.Meta.RaftAddr
		f.log.Warn("gossip member claims to be a server without its server certificate; not a voter", "server", m.Name, "addr", m.Meta.RaftAddr, "err", err)
	}
	return false
}

// quorumSafe reports whether a voter may be removed: a quorum of the
// current configuration is alive, and a quorum of the configuration after
// the removal will be.
func quorumSafe(voters, alive, aliveAfter int) bool {
	return alive >= voters/2+1 && aliveAfter >= (voters-1)/2+1
}

// reconcileRaft adds joining servers as voters and removes departed ones.
func (f *Formation) reconcileRaft(ctx context.Context) error {
	fut := f.srv.Raft().GetConfiguration()
	if err := fut.Error(); err != nil {
		return err
	}
	conf := fut.Configuration()
	members := map[string]Member{}
	for _, m := range f.g.Members() {
		members[m.Name] = m
	}
	inConf := map[string]raft.Server{}
	voters, alive := 0, 0
	for _, s := range conf.Servers {
		inConf[string(s.ID)] = s
		if s.Suffrage == raft.Voter {
			voters++
			if m, ok := members[string(s.ID)]; ok && m.Status == StatusAlive {
				alive++
			}
		}
	}
	for _, m := range members {
		if m.Status != StatusAlive || !m.Meta.IsServer() || m.Meta.RaftAddr == "" {
			continue
		}
		if s, ok := inConf[m.Name]; ok && string(s.Address) == m.Meta.RaftAddr {
			continue
		}
		if !f.certified(ctx, m) {
			continue
		}
		f.log.Info("adding server as voter", "server", m.Name, "addr", m.Meta.RaftAddr)
		if err := f.srv.Raft().AddVoter(raft.ServerID(m.Name), raft.ServerAddress(m.Meta.RaftAddr), 0, 10*time.Second).Error(); err != nil {
			return fmt.Errorf("add voter %s: %w", m.Name, err)
		}
		return nil // one change at a time; the next step sees the new configuration
	}
	self, _ := f.srv.Leader()
	for id := range inConf {
		if id == self {
			continue
		}
		m, known := members[id]
		var why string
		switch {
		case known && m.Status == StatusLeft:
			why = "left"
		case known && m.Status == StatusFailed && time.Since(m.Since) >= f.cfg.ReapAfter:
			why = "failed too long"
		case !known:
			why = "gone from gossip"
		default:
			continue
		}
		aliveAfter := alive
		if known && m.Status == StatusAlive {
			aliveAfter--
		}
		if why != "left" && !quorumSafe(voters, alive, aliveAfter) {
			f.log.Warn("not removing server: quorum would be lost", "server", id, "why", why, "voters", voters, "alive", alive)
			continue
		}
		f.log.Info("removing server", "server", id, "why", why)
		if err := f.srv.Raft().RemoveServer(raft.ServerID(id), 0, 10*time.Second).Error(); err != nil {
			return fmt.Errorf("remove server %s: %w", id, err)
		}
		return nil
	}
	return nil
}

// reconcileNodes records what gossip says of every node.
func (f *Formation) reconcileNodes(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var errs []error
	for _, m := range f.g.Members() {
		node, known := f.reg.Node(m.Name)
		var cmd fsm.Command
		switch m.Status {
		case StatusAlive:
			if !known || node.Address != m.Addr || node.Meta["role"] != m.Meta.Role {
				cmd = &fsm.RegisterNode{Name: m.Name, Address: m.Addr, Meta: map[string]string{"role": m.Meta.Role}}
			} else if node.Status != fsm.NodeAlive {
				cmd = &fsm.SetNodeStatus{Name: m.Name, Status: fsm.NodeAlive}
			}
		case StatusFailed:
			if known && node.Status != fsm.NodeFailed {
				cmd = &fsm.SetNodeStatus{Name: m.Name, Status: fsm.NodeFailed}
			}
		case StatusLeft:
			if known {
				cmd = &fsm.DeregisterNode{Name: m.Name}
			}
		}
		if cmd == nil {
			continue
		}
		f.log.Info("node health from gossip", "node", m.Name, "status", string(m.Status), "command", cmd.Type().String())
		if _, err := f.w.Apply(ctx, cmd); err != nil && !errors.Is(err, fsm.ErrUnknownNode) {
			errs = append(errs, fmt.Errorf("%s %s: %w", cmd.Type(), m.Name, err))
		}
	}
	return errors.Join(errs...)
}
