package localstate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
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
	// Index is the index of the last entry applied.
	Index() uint64
	// TrackNode starts the journal NodeChanges reads: which of the node's
	// instances changed after an index (ok false when it cannot tell).
	TrackNode(node string)
	NodeChanges(node string, since uint64) (ids []string, upTo uint64, ok bool)
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
	// UnknownGrace is how long an instance whose last write had an unknown
	// outcome is left alone (see Unknown); default 30s.
	UnknownGrace time.Duration
	Logger       *slog.Logger
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
	// synced: the registry agreed with the local state at this index, as
	// far as anti-entropy knows; later changes are looked at one by one,
	// with the pending ones that writes of unknown outcome left.
	synced    uint64
	pending   map[string]struct{}
	unknownAt map[string]time.Time

	syncs        prometheus.Counter
	changesSyncs prometheus.Counter
	writes       *prometheus.CounterVec
}

// NewAntiEntropy returns the anti-entropy of store against reg.
func NewAntiEntropy(cfg Config, store *Store, reg Registry, w Writer) *AntiEntropy {
	if cfg.Interval <= 0 {
		cfg.Interval = 30 * time.Second
	}
	if cfg.MinInterval <= 0 {
		cfg.MinInterval = time.Second
	}
	if cfg.UnknownGrace <= 0 {
		// Above the agents' 5 s forwarding timeout and any Raft entry's
		// wait for a new leader's first commit.
		cfg.UnknownGrace = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ae := &AntiEntropy{
		cfg: cfg, store: store, reg: reg, w: w,
		log:       cfg.Logger.With("component", "anti-entropy"),
		kick:      make(chan struct{}, 1),
		pending:   map[string]struct{}{},
		unknownAt: map[string]time.Time{},
		syncs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidecar_anti_entropy_syncs_total",
			Help: "Full comparisons of the registry's view of this node with the agent's local state.",
		}),
		changesSyncs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidecar_anti_entropy_change_passes_total",
			Help: "Passes over the instances of this node that changed, checked against the agent's local state.",
		}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecar_anti_entropy_writes_total",
			Help: "Writes anti-entropy made to put the registry right, by kind (node, register, deregister).",
		}, []string{"kind"}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(ae.syncs, ae.changesSyncs, ae.writes,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "sidecar_local_state_log_records",
				Help: "Records of the local state in its write-ahead log (local.wal) not yet checkpointed into local.db.",
			}, func() float64 { return float64(store.LogRecords()) }))
	}
	return ae
}

// Unknown records a local write of id whose outcome is unknown (the leader
// was lost, the request timed out). Its Raft entry may still be on its way
// and commit later; writing the local state's version now could apply the
// app's one request twice, around a later write of the same id. So the
// instance is left alone for UnknownGrace, long enough for any entry in
// flight to commit or be dropped, and then looked at. A later write of the
// same id that succeeds does not end the grace: the earlier entry could
// still land after it.
func (ae *AntiEntropy) Unknown(id string) {
	ae.mu.Lock()
	ae.unknownAt[id] = time.Now()
	ae.mu.Unlock()
	time.AfterFunc(ae.cfg.UnknownGrace, func() {
		ae.mu.Lock()
		ae.pending[id] = struct{}{}
		ae.mu.Unlock()
		select {
		case ae.kick <- struct{}{}:
		default:
		}
	})
}

// precondition is the instance as anti-entropy read it.
func precondition(in *fsm.Instance, registered bool) *fsm.Precondition {
	if !registered {
		return &fsm.Precondition{}
	}
	return &fsm.Precondition{ModifyIndex: in.ModifyIndex}
}

// doubt marks id in doubt after a failed write of anti-entropy's own,
// unless the registry refused it (then nothing is on its way).
func (ae *AntiEntropy) doubt(id string, err error) {
	if !fsm.Refused(err) {
		ae.Unknown(id)
	}
}

// inDoubt reports whether id had a write of unknown outcome less than
// UnknownGrace ago.
func (ae *AntiEntropy) inDoubt(id string) bool {
	ae.mu.Lock()
	defer ae.mu.Unlock()
	at, ok := ae.unknownAt[id]
	if !ok {
		return false
	}
	// equivalent mutant: the grace's exact end is a timing edge no test may assert
	if time.Since(at) < ae.cfg.UnknownGrace {
		return true
	}
	delete(ae.unknownAt, id)
	return false
}

// Run puts the registry right whenever its view of the node moves (its
// instances, its checks, its node entry), when kicked, and every Interval,
// until ctx ends, at most every MinInterval. A move of the node's
// instances is followed by looking at the instances that changed (the
// registry journals them), a move of the node entry, a kick, the backstop
// or a journal that cannot tell (a restore) by a full comparison.
func (ae *AntiEntropy) Run(ctx context.Context) {
	var seenIndex, seenNode uint64
	seenPresent := true
	backstop := time.NewTimer(ae.jitter())
	defer backstop.Stop()
	changed, full := false, false
	var wait <-chan time.Time
	for {
		watch := ae.reg.Watch()
		idx := ae.reg.NodeIndex(ae.cfg.Node)
		n, present := ae.reg.Node(ae.cfg.Node)
		var nodeIdx uint64
		if present {
			nodeIdx = n.ModifyIndex
		}
		if idx != seenIndex {
			seenIndex, changed = idx, true
		}
		if nodeIdx != seenNode || present != seenPresent {
			seenNode, seenPresent, full = nodeIdx, present, true
		}
		if (changed || full) && wait == nil {
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
			changed = true
		case <-backstop.C:
			backstop.Reset(ae.jitter())
			full = true
		case <-wait:
			var err error
			if full {
				err = ae.Sync(ctx)
			} else {
				err = ae.syncChanges(ctx)
			}
			wait, changed, full = nil, false, false
			if err != nil && ctx.Err() == nil {
				ae.log.Warn("anti-entropy left differences; retrying", "err", err)
				full = true
			}
		}
	}
}

// syncChanges looks at the instances that changed since the last pass, or
// compares in full when the registry cannot tell which.
func (ae *AntiEntropy) syncChanges(ctx context.Context) error {
	ae.mu.Lock()
	since := ae.synced
	ae.lastSync = time.Now()
	pending := ae.pending
	ae.pending = map[string]struct{}{}
	ae.mu.Unlock()
	ids, upTo, ok := ae.reg.NodeChanges(ae.cfg.Node, since)
	for id := range pending {
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	if _, present := ae.reg.Node(ae.cfg.Node); !ok || !present {
		return ae.Sync(ctx)
	}
	ae.changesSyncs.Inc()
	var errs []error
	for _, id := range ids {
		if err := ae.check(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	// equivalent mutant: a failed pass is followed by a full comparison (Run), which covers
	// what is left unmarked; marking a clean pass's changes seen only saves work
	if len(errs) == 0 {
		ae.mu.Lock()
		ae.synced = max(ae.synced, upTo)
		ae.mu.Unlock()
	}
	return errors.Join(errs...)
}

// check puts one instance right if the registry and the local state
// differ on it, comparing sums first (no read of the local file).
func (ae *AntiEntropy) check(ctx context.Context, id string) error {
	in, registered := ae.reg.Instance(ae.cfg.Node, id)
	sum, local := ae.store.sum(id)
	switch {
	case !registered && !local:
		return nil
	case registered && local && sum == DefinitionSum(in):
		if ae.cfg.CheckStatus != nil {
			for _, c := range in.Checks {
				ae.cfg.CheckStatus(c.ID, c.Status)
			}
		}
		return nil
	}
	return ae.fix(ctx, id)
}

func (ae *AntiEntropy) jitter() time.Duration {
	// equivalent mutant: the backstop's jitter is a timing constant
	return ae.cfg.Interval + rand.N(ae.cfg.Interval/4+1)
}

// Sync compares once and writes each difference. It returns the writes
// that failed; the next comparison tries them again.
func (ae *AntiEntropy) Sync(ctx context.Context) error {
	ae.mu.Lock()
	ae.lastSync = time.Now()
	ae.mu.Unlock()
	// Changes from here on are looked at by the next pass, whatever this
	// one sees of them.
	start := ae.reg.Index()
	ae.reg.TrackNode(ae.cfg.Node)
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
	if len(errs) == 0 {
		ae.mu.Lock()
		ae.synced = max(ae.synced, start)
		ae.mu.Unlock()
	}
	return errors.Join(errs...)
}

// fix puts one instance right, under its id's lock so that it never races
// a registration of the same id: it looks again at both sides and writes
// only if they still differ.
func (ae *AntiEntropy) fix(ctx context.Context, id string) error {
	unlock := ae.store.LockID(id)
	defer unlock()
	// Looked at under the id's lock: a registration that held it may have
	// just ended with an unknown outcome.
	if ae.inDoubt(id) {
		return nil // looked at again once the grace ends (Unknown)
	}
	svc, local, err := ae.store.Service(id)
	if err != nil {
		// Damaged: nothing is written from what cannot be read (the
		// agent stops, see Store.Damaged).
		return err
	}
	in, registered := ae.reg.Instance(ae.cfg.Node, id)
	switch {
	case local && (!registered || !SameDefinition(in, &svc.Instance)):
		// Conditional on the instance as read: a repair must never land
		// after a newer write of the same instance.
		_, err := ae.w.Apply(ctx, &fsm.RegisterInstance{Instance: svc.Instance, If: precondition(in, registered)})
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
			ae.doubt(id, err)
			return fmt.Errorf("register %s again: %w", id, err)
		}
		ae.writes.WithLabelValues("register").Inc()
		ae.log.Info("registered an instance again", "instance", id, "was_missing", !registered)
	case !local && registered:
		_, err := ae.w.Apply(ctx, &fsm.DeregisterInstance{Node: ae.cfg.Node, ID: id, If: precondition(in, registered)})
		if err != nil && !errors.Is(err, fsm.ErrUnknownInstance) {
			ae.doubt(id, err)
			return fmt.Errorf("deregister %s: %w", id, err)
		}
		ae.writes.WithLabelValues("deregister").Inc()
		ae.log.Info("deregistered an instance this agent does not own", "instance", id)
	}
	return nil
}
