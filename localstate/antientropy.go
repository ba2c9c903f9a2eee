package localstate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecarhq/sidecar/fsm"
)

// Registry is the agent's copy of the registry, as anti-entropy reads it.
type Registry interface {
	Watch() <-chan struct{}
	// NodeIndex moves whenever the node's instances or their checks change.
	NodeIndex(node string) uint64
	Node(name string) (*fsm.Node, bool)
	Instance(node, id string) (*fsm.Instance, bool)
	// VisitNode calls fn for each of the node's instances without copying.
	VisitNode(node string, fn func(in *fsm.Instance))
}

// Writer writes through the Raft leader.
type Writer interface {
	Apply(ctx context.Context, cmd fsm.Command) (*fsm.Result, error)
}

// Config configures anti-entropy.
type Config struct {
	// Node is this agent's node.
	Node string
	// NodeEntry is the node entry to write when the registry has none.
	NodeEntry func() *fsm.RegisterNode
	// Interval is the backstop between full comparisons when nothing
	// changed (jittered by up to a quarter); default 30s.
	Interval time.Duration
	// MinInterval spaces the comparisons that changes trigger, so that a
	// burst of registrations costs one comparison, not one each; default
	// 1s.
	MinInterval time.Duration
	// CheckStatus, when set, is told the registry's status of each check
	// of a local instance, so that the check runner reports again what a
	// restore or a re-registration reset.
	CheckStatus func(checkID, status string)
	// Forgotten, when set, is told of a local instance dropped because the
	// lease it hung on is gone (such an instance ends with its lease).
	Forgotten func(id string)
	Logger    *slog.Logger
	// Registerer, when set, gets the anti-entropy metrics.
	Registerer prometheus.Registerer
}

// AntiEntropy keeps the registry's view of this node equal to the local
// state: what is missing or different is registered again, what the agent
// does not know is removed, and nothing is written when nothing differs.
type AntiEntropy struct {
	cfg   Config
	store *Store
	reg   Registry
	w     Writer
	log   *slog.Logger
	kick  chan struct{}

	mu       sync.Mutex
	lastSync time.Time

	syncs  prometheus.Counter
	writes *prometheus.CounterVec
}

// NewAntiEntropy returns the anti-entropy of store against reg.
func NewAntiEntropy(cfg Config, store *Store, reg Registry, w Writer) *AntiEntropy {
	if cfg.Interval <= 0 {
		cfg.Interval = 30 * time.Second
	}
	if cfg.MinInterval <= 0 {
		cfg.MinInterval = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ae := &AntiEntropy{
		cfg: cfg, store: store, reg: reg, w: w,
		log:  cfg.Logger.With("component", "anti-entropy"),
		kick: make(chan struct{}, 1),
		syncs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidecar_anti_entropy_syncs_total",
			Help: "Comparisons of the registry's view of this node with the agent's local state.",
		}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecar_anti_entropy_writes_total",
			Help: "Writes anti-entropy made to put the registry right, by kind (node, register, deregister).",
		}, []string{"kind"}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(ae.syncs, ae.writes)
	}
	return ae
}

// Kick asks for a comparison soon (a local write whose outcome is unknown).
func (ae *AntiEntropy) Kick() {
	select {
	case ae.kick <- struct{}{}:
	default:
	}
}

// Run compares whenever the registry's view of the node moves (its
// instances, its checks, its node entry), when kicked, and every Interval,
// until ctx ends. Comparisons are at least MinInterval apart.
func (ae *AntiEntropy) Run(ctx context.Context) {
	var seenIndex, seenNode uint64
	seenPresent := true
	backstop := time.NewTimer(ae.jitter())
	defer backstop.Stop()
	due := false
	var wait <-chan time.Time
	for {
		watch := ae.reg.Watch()
		idx := ae.reg.NodeIndex(ae.cfg.Node)
		n, present := ae.reg.Node(ae.cfg.Node)
		var nodeIdx uint64
		if present {
			nodeIdx = n.ModifyIndex
		}
		if idx != seenIndex || nodeIdx != seenNode || present != seenPresent {
			seenIndex, seenNode, seenPresent = idx, nodeIdx, present
			due = true
		}
		if due && wait == nil {
			ae.mu.Lock()
			next := ae.lastSync.Add(ae.cfg.MinInterval)
			ae.mu.Unlock()
			wait = time.After(max(0, time.Until(next)))
		}
		select {
		case <-ctx.Done():
			return
		case <-watch:
		case <-ae.kick:
			due = true
		case <-backstop.C:
			backstop.Reset(ae.jitter())
			due = true
		case <-wait:
			wait, due = nil, false
			if err := ae.Sync(ctx); err != nil && ctx.Err() == nil {
				ae.log.Warn("anti-entropy left differences; retrying", "err", err)
				due = true
			}
		}
	}
}

func (ae *AntiEntropy) jitter() time.Duration {
	return ae.cfg.Interval + rand.N(ae.cfg.Interval/4+1)
}

// Sync compares once and writes each difference. It returns the writes
// that failed; the next comparison tries them again.
func (ae *AntiEntropy) Sync(ctx context.Context) error {
	ae.mu.Lock()
	ae.lastSync = time.Now()
	ae.mu.Unlock()
	ae.syncs.Inc()
	var errs []error
	if _, ok := ae.reg.Node(ae.cfg.Node); !ok && ae.cfg.NodeEntry != nil {
		// Reaped, deregistered or lost in a restore: nothing of this node
		// can be registered before its entry is back.
		if _, err := ae.w.Apply(ctx, ae.cfg.NodeEntry()); err != nil {
			return fmt.Errorf("register node %s: %w", ae.cfg.Node, err)
		}
		ae.writes.WithLabelValues("node").Inc()
		ae.log.Info("registered the node again", "node", ae.cfg.Node)
	}

	// Compare under both read locks, write after: the writes go through
	// Raft and must not hold up the registry or the registrations.
	var register, remove []string
	seen := map[string]struct{}{}
	type status struct{ check, status string }
	var statuses []status
	ae.store.mu.RLock()
	ae.reg.VisitNode(ae.cfg.Node, func(in *fsm.Instance) {
		sum, ok := ae.store.sums[in.ID]
		if !ok {
			remove = append(remove, in.ID)
			return
		}
		seen[in.ID] = struct{}{}
		if sum != DefinitionSum(in) {
			register = append(register, in.ID)
			return
		}
		if ae.cfg.CheckStatus != nil {
			for _, c := range in.Checks {
				statuses = append(statuses, status{c.ID, c.Status})
			}
		}
	})
	for id := range ae.store.sums {
		if _, ok := seen[id]; !ok {
			register = append(register, id)
		}
	}
	ae.store.mu.RUnlock()

	for _, s := range statuses {
		ae.cfg.CheckStatus(s.check, s.status)
	}
	for _, id := range register {
		if err := ae.fix(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	for _, id := range remove {
		if err := ae.fix(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// fix puts one instance right, under its id's lock so that it never races
// a registration of the same id: it looks again at both sides and writes
// only if they still differ.
func (ae *AntiEntropy) fix(ctx context.Context, id string) error {
	unlock := ae.store.LockID(id)
	defer unlock()
	svc, local := ae.store.Service(id)
	in, registered := ae.reg.Instance(ae.cfg.Node, id)
	switch {
	case local && (!registered || !SameDefinition(in, &svc.Instance)):
		_, err := ae.w.Apply(ctx, &fsm.RegisterInstance{Instance: svc.Instance})
		if errors.Is(err, fsm.ErrUnknownLease) {
			// The instance hung on a lease that ended: it ended with it.
			if _, err := ae.store.DeleteService(id); err != nil {
				return err
			}
			ae.log.Info("forgot an instance whose lease is gone", "instance", id, "lease", svc.Instance.Lease)
			if ae.cfg.Forgotten != nil {
				ae.cfg.Forgotten(id)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("register %s again: %w", id, err)
		}
		ae.writes.WithLabelValues("register").Inc()
		ae.log.Info("registered an instance again", "instance", id, "was_missing", !registered)
	case !local && registered:
		_, err := ae.w.Apply(ctx, &fsm.DeregisterInstance{Node: ae.cfg.Node, ID: id})
		if err != nil && !errors.Is(err, fsm.ErrUnknownInstance) {
			return fmt.Errorf("deregister %s: %w", id, err)
		}
		ae.writes.WithLabelValues("deregister").Inc()
		ae.log.Info("deregistered an instance this agent does not own", "instance", id)
	}
	return nil
}
