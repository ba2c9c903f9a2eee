package election

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecarhq/sidecar/acl"
	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/fsm"
)

// Backend writes to the registry through the Raft leader. On a server it is
// the server itself; on a client, a forwarder to the leader.
type Backend interface {
	Apply(ctx context.Context, cmd fsm.Command) (*fsm.Result, error)
	KeepAlive(ctx context.Context, leaseID string) (time.Duration, error)
}

// LocalConfig configures the holds of one sidecar.
type LocalConfig struct {
	// Node is this sidecar's node name, recorded with its holds.
	Node string
	// SessionTTL is the TTL of the node session (locks taken without a
	// lease hang on it) and the default of connection-bound holds.
	SessionTTL time.Duration
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Now is the clock; tests may replace it.
	Now func() time.Time
}

// Errors of the holds.
var (
	// ErrClosed: the sidecar is shutting down.
	ErrClosed = errors.New("election: sidecar closing")
	// ErrServiceNotPassing: a connection-bound candidacy names a service
	// instance that does not pass its checks, so it cannot lead now.
	ErrServiceNotPassing = errors.New("election: tied service instance is not passing")
)

// Local is what this sidecar holds on behalf of its apps: its sessions,
// candidacies and locks. It reports leadership only while a session is
// surely live (self-demotion) and gives everything up on Close.
type Local struct {
	cfg     LocalConfig
	backend Backend
	reg     *fsm.FSM
	log     *slog.Logger

	mu         sync.Mutex
	closed     bool
	node       *Session
	sessions   map[string]*Session
	tracked    map[string]*Session // leases apps keep alive through us
	candidates map[candidateKey]*candidacy
	locks      map[lockKey]bool
	// demoted are candidates with a transfer on its way: never reported
	// as leader (see Transfer); demoteWake is closed at each change.
	demoted    map[candidateKey]demotion
	demoteWake chan struct{}

	healthOnce sync.Once
	healthStop context.CancelFunc
	healthDone chan struct{}

	renewStop context.CancelFunc // the node session's renewal loop
	renewDone chan struct{}

	lockAcquisitions prometheus.Counter
	collectors       []prometheus.Collector
}

type candidateKey struct{ election, candidate string }

// candidacy is a candidate this sidecar keeps in an election. One tied to a
// service instance is parked (out of the election) while the instance is
// not passing.
type candidacy struct {
	lease, value, service string
	parked                bool
	// caller is who campaigned (nil: the sidecar itself), kept in memory
	// only: the sidecar campaigns again for it, with its token, when the
	// candidacy moves (a new node session, its service passing again), so
	// that the candidate stays that token's.
	caller *acl.Caller
	// reported: a connection-bound hold of it has told its client it
	// leads, and not since that it does not (l.mu).
	reported bool
}

// ctx is parent acting for the candidacy's caller.
func (c *candidacy) ctx(parent context.Context) context.Context {
	return acl.NewContext(parent, c.caller)
}

type lockKey struct{ name, lease string }

// NewLocal returns the holds of a sidecar writing through backend and
// reading reg, its copy of the registry.
func NewLocal(cfg LocalConfig, backend Backend, reg *fsm.FSM) *Local {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 10 * time.Second
	}
	l := &Local{
		cfg:        cfg,
		backend:    backend,
		reg:        reg,
		log:        cfg.Logger.With("component", "election"),
		sessions:   map[string]*Session{},
		tracked:    map[string]*Session{},
		candidates: map[candidateKey]*candidacy{},
		locks:      map[lockKey]bool{},
		demoted:    map[candidateKey]demotion{},
		demoteWake: make(chan struct{}),
		lockAcquisitions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sidecar_lock_acquisitions_total",
			Help: "Locks acquired through this sidecar.",
		}),
	}
	l.collectors = []prometheus.Collector{l.lockAcquisitions, &electionCollector{l}}
	if cfg.Registerer != nil {
		for _, c := range l.collectors {
			cfg.Registerer.MustRegister(c)
		}
	}
	return l
}

func (l *Local) now() time.Time { return l.cfg.Now() }

// Start opens the node session, retrying while no leader is known, until
// ctx ends. From then on a node session whose lease the servers expired
// (this node was cut off or paused longer than its TTL) is replaced by a
// new one, and the candidacies it carried campaign again on it.
func (l *Local) Start(ctx context.Context) error {
	s, err := l.openNodeSession(ctx, func(err error) bool {
		return errors.Is(err, ErrNotLeader) || errors.Is(err, ErrUnknownOutcome)
	})
	if err != nil {
		return err
	}
	rctx, cancel := context.WithCancel(context.Background())
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		cancel()
		return ErrClosed
	}
	l.node = s
	l.renewStop, l.renewDone = cancel, make(chan struct{})
	l.mu.Unlock()
	l.log.Info("node session opened", "lease", s.ID(), "ttl", s.TTL())
	go func() {
		defer close(l.renewDone)
		l.renewNodeSession(rctx)
	}()
	return nil
}

// openNodeSession grants the node session, retrying errors that retry
// accepts every 50 ms, up to 1 s apart, until ctx ends.
func (l *Local) openNodeSession(ctx context.Context, retry func(error) bool) (*Session, error) {
	backoff := 50 * time.Millisecond
	// The node session is no token's: it is the node's own (SPEC: Security).
	ctx = acl.NewContext(ctx, nil)
	for {
		s, err := l.newSession(ctx, l.cfg.SessionTTL, true)
		if err == nil {
			return s, nil
		}
		if !retry(err) {
			return nil, fmt.Errorf("open node session: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("open node session: %w", ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// renewNodeSession waits for the node session to be lost, opens a new one
// and moves the candidacies of the lost one to it, until ctx ends. Locks on
// the lost session are gone (the servers released them when it expired);
// an app takes them again, on the new session by default.
func (l *Local) renewNodeSession(ctx context.Context) {
	for {
		old := l.NodeSession()
		select {
		case <-ctx.Done():
			return
		case <-old.Done():
		}
		if !errors.Is(old.Err(), ErrSessionLost) {
			return // closed by this sidecar
		}
		old.cancel() // its keepalives may still be retrying through a cut
		<-old.loopDone
		l.forgetSession(old)
		l.log.Warn("node session lost: opening a new one", "lease", old.ID())
		s, err := l.openNodeSession(ctx, func(err error) bool { return !errors.Is(err, ErrClosed) })
		if err != nil {
			return
		}
		l.mu.Lock()
		l.node = s
		var again []candidateKey
		for k, c := range l.candidates {
			if c.lease == old.ID() {
				c.lease = s.ID()
				if !c.parked {
					again = append(again, k)
				}
			}
		}
		for k := range l.locks {
			if k.lease == old.ID() {
				delete(l.locks, k)
			}
		}
		l.mu.Unlock()
		l.log.Info("node session opened", "lease", s.ID(), "ttl", s.TTL(), "candidacies", len(again))
		for _, k := range again {
			l.mu.Lock()
			c := l.candidates[k]
			var cc candidacy
			if c != nil {
				cc = *c
			}
			l.mu.Unlock()
			if c == nil || cc.parked || cc.lease != s.ID() {
				continue // resigned, parked or moved meanwhile
			}
			// equivalent mutant: log output only
			if err := l.enter(ctx, k.election, k.candidate, &cc); err != nil && ctx.Err() == nil {
				l.log.Warn("campaign again on the new node session failed", "election", k.election, "candidate", k.candidate, "err", err)
			}
		}
	}
}

// NodeSession is the session of this sidecar's node (nil before Start).
func (l *Local) NodeSession() *Session {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.node
}

func (l *Local) newSessionValue(id string, ttl time.Duration) *Session {
	return &Session{id: id, ttl: ttl, l: l, changed: make(chan struct{}), done: make(chan struct{}), loopDone: make(chan struct{})}
}

// NewSession grants a lease of ttl and keeps it alive until Close. The
// lease belongs to the caller in ctx (acl.FromContext), whose token the
// session keeps (in memory) for its keepalives and its revoke.
func (l *Local) NewSession(ctx context.Context, ttl time.Duration) (*Session, error) {
	return l.newSession(ctx, ttl, false)
}

// newSession grants a session; node marks the node session.
func (l *Local) newSession(ctx context.Context, ttl time.Duration, node bool) (*Session, error) {
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	sent := l.now()
	grant := &fsm.GrantLease{TTL: int64(ttl), Node: l.cfg.Node, Session: node}
	caller := acl.FromContext(ctx)
	if !node {
		grant.Owner = caller.By()
	} else {
		caller = nil
	}
	res, err := l.apply(ctx, grant)
	if err != nil {
		return nil, err
	}
	s := l.newSessionValue(res.LeaseID, ttl)
	s.caller, s.onNode = caller, node
	s.acked(sent)
	kctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.keepAlive(kctx)
	l.mu.Lock()
	l.sessions[s.id] = s
	l.mu.Unlock()
	return s, nil
}

func (l *Local) forgetSession(s *Session) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.sessions, s.id)
}

// GrantLease grants a lease for an app, which keeps it alive itself through
// KeepAlive; this sidecar tracks the keepalives it forwards so that holds
// on the lease demote themselves in time.
func (l *Local) GrantLease(ctx context.Context, ttl time.Duration) (string, error) {
	sent := l.now()
	res, err := l.apply(ctx, &fsm.GrantLease{TTL: int64(ttl), Node: l.cfg.Node, Owner: acl.FromContext(ctx).By()})
	if err != nil {
		return "", err
	}
	s := l.newSessionValue(res.LeaseID, ttl)
	s.acked(sent)
	l.mu.Lock()
	l.tracked[s.id] = s
	l.mu.Unlock()
	return s.id, nil
}

// KeepAlive forwards an app's keepalive and records its send time.
func (l *Local) KeepAlive(ctx context.Context, id string) (time.Duration, error) {
	if l.isNodeSession(id) {
		// This sidecar keeps its node session alive anyway: an app's
		// keepalive of it adds no power, and goes as the node's own.
		ctx = acl.NewContext(ctx, nil)
	}
	sent := l.now()
	ttl, err := l.backend.KeepAlive(ctx, id)
	l.mu.Lock()
	s := l.tracked[id]
	if s == nil && err == nil {
		s = l.newSessionValue(id, ttl)
		l.tracked[id] = s
	}
	l.mu.Unlock()
	switch {
	case err == nil:
		s.acked(sent)
	case errors.Is(err, fsm.ErrUnknownLease) && s != nil:
		s.end(ErrSessionLost)
	}
	return ttl, err
}

// RevokeLease revokes a lease: its locks and candidacies pass to the next
// in line in the same entry.
func (l *Local) RevokeLease(ctx context.Context, id string) error {
	l.mu.Lock()
	s := l.sessions[id]
	node := l.node
	l.mu.Unlock()
	if s != nil && s == node {
		// Revoking the node session through the API ends it as a loss
		// would: the renewal loop opens a new one, so lease-less locks and
		// campaigns keep working.
		err := l.revoke(ctx, id)
		if err == nil || errors.Is(err, fsm.ErrUnknownLease) {
			s.end(ErrSessionLost)
		}
		return err
	}
	if s != nil {
		// A connection-bound hold's session: revoked as the request's
		// caller (it must own the lease), then stopped here.
		err := l.revoke(ctx, id)
		if err == nil || errors.Is(err, fsm.ErrUnknownLease) {
			s.shut(nil)
		}
		return err
	}
	return l.revoke(ctx, id)
}

func (l *Local) revoke(ctx context.Context, id string) error {
	_, err := l.apply(ctx, &fsm.RevokeLease{ID: id, Node: l.cfg.Node, Now: l.now().UnixNano(), Auth: l.authFor(ctx, id)})
	if err != nil && !errors.Is(err, fsm.ErrUnknownLease) {
		// Refused (another token's lease) or not known to have happened:
		// the holds on it stand.
		return err
	}
	l.mu.Lock()
	if t := l.tracked[id]; t != nil {
		t.end(ErrSessionLost)
		delete(l.tracked, id)
	}
	l.mu.Unlock()
	return err
}

// leaseSession returns what this sidecar knows of a lease's liveness.
func (l *Local) leaseSession(id string) *Session {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s := l.sessions[id]; s != nil {
		return s
	}
	return l.tracked[id]
}

// LeaseRemaining tells how long this sidecar is sure a lease stays live.
func (l *Local) LeaseRemaining(id string) (time.Duration, bool) {
	s := l.leaseSession(id)
	if s == nil {
		return 0, false
	}
	d := s.ValidUntil().Sub(l.now())
	// equivalent mutant: at d == 0 both answer 0
	if d < 0 {
		d = 0
	}
	return d, true
}

func (l *Local) defaultLease(lease string) (string, error) {
	if lease != "" {
		return lease, nil
	}
	s := l.NodeSession()
	if s == nil {
		return "", fmt.Errorf("%w: node session not open yet", ErrNotLeader)
	}
	select {
	case <-s.Done():
		// Lost, and a new one not open yet (the servers are unreachable):
		// as unavailable as before the first one.
		return "", fmt.Errorf("%w: node session lost, opening a new one", ErrNotLeader)
	default:
	}
	return s.ID(), nil
}

// isNodeSession reports whether lease is this node's session: a hold on it
// acts on the node session (fsm.Auth.OnSession), whoever asked, since the
// sidecar holds what the node session holds anyway.
func (l *Local) isNodeSession(lease string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.onNodeSessionLocked(lease) {
		return true
	}
	s := l.sessions[lease]
	return s != nil && s.onNode
}

// authFor is whom a command on lease acts for: the caller in ctx (nil:
// the sidecar's own work), on the node session when lease is it.
func (l *Local) authFor(ctx context.Context, lease string) fsm.Auth {
	return fsm.Auth{By: acl.FromContext(ctx).By(), OnSession: l.isNodeSession(lease)}
}

// nodeSessionErr turns the servers' "unknown lease" for the node session
// into the end of that session (its renewal starts at once, without waiting
// for a keepalive to learn it) and an unavailable error for the app.
func (l *Local) nodeSessionErr(lease string, err error) error {
	if !errors.Is(err, fsm.ErrUnknownLease) {
		return err
	}
	s := l.NodeSession()
	if s == nil || s.ID() != lease {
		return err
	}
	s.end(ErrSessionLost)
	return fmt.Errorf("%w: node session lost, opening a new one", ErrNotLeader)
}

// apply writes through the backend, then waits until this sidecar's copy of
// the registry holds the write, so that what it reads next includes it. A
// refused write changed nothing to wait for, and its entry wakes no watcher
// of the copy: waiting for it could last until the next change.
func (l *Local) apply(ctx context.Context, cmd fsm.Command) (*fsm.Result, error) {
	res, err := l.backend.Apply(ctx, cmd)
	if res != nil && err == nil {
		l.waitIndex(ctx, res.Index)
	}
	return res, err
}

// waitIndex waits until the local registry applied index, or ctx ends.
func (l *Local) waitIndex(ctx context.Context, index uint64) {
	for {
		ch := l.reg.Watch()
		if l.reg.Index() >= index {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
	}
}

// Holder converts a registry holder to its API form.
func Holder(h *fsm.Holder, election bool) *api.Holder {
	if h == nil {
		return nil
	}
	out := &api.Holder{Node: h.Node, Lease: h.Lease, Value: h.Value, Token: h.Token, Since: time.Unix(0, h.Since).UTC()}
	if election {
		out.Candidate = h.ID
	}
	return out
}

// electionCollector exports sidecar_election_leader{election} for the
// elections a candidate of this sidecar takes part in.
type electionCollector struct{ l *Local }

var electionLeaderDesc = prometheus.NewDesc("sidecar_election_leader",
	"1 while a candidate of this sidecar leads the election and its lease is surely live.", []string{"election"}, nil)

func (c *electionCollector) Describe(ch chan<- *prometheus.Desc) { ch <- electionLeaderDesc }

func (c *electionCollector) Collect(ch chan<- prometheus.Metric) {
	c.l.mu.Lock()
	names := map[string]bool{}
	for k := range c.l.candidates {
		names[k.election] = true
	}
	c.l.mu.Unlock()
	for name := range names {
		v := 0.0
		if c.l.Self(name).Leader {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(electionLeaderDesc, prometheus.GaugeValue, v, name)
	}
}

// Abandon stops every keepalive and background loop without releasing
// anything, as a crash would: the holds end by their leases' TTL.
func (l *Local) Abandon() {
	l.mu.Lock()
	l.closed = true
	stopHealth, healthDone := l.healthStop, l.healthDone
	stopRenew, renewDone := l.renewStop, l.renewDone
	l.mu.Unlock()
	if stopRenew != nil {
		stopRenew()
		<-renewDone
	}
	if stopHealth != nil {
		stopHealth()
		<-healthDone
	}
	l.mu.Lock()
	sessions := make([]*Session, 0, len(l.sessions))
	for _, s := range l.sessions {
		sessions = append(sessions, s)
	}
	l.mu.Unlock()
	for _, s := range sessions {
		s.cancel()
		<-s.loopDone
	}
	if l.cfg.Registerer != nil {
		for _, c := range l.collectors {
			l.cfg.Registerer.Unregister(c)
		}
	}
}

// Close resigns the candidacies and releases the locks this sidecar holds
// on its own sessions, then revokes those sessions. The agent calls it on
// SIGTERM, before leaving the cluster.
func (l *Local) Close(ctx context.Context) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	stopHealth, healthDone := l.healthStop, l.healthDone
	stopRenew, renewDone := l.renewStop, l.renewDone
	l.mu.Unlock()
	if stopRenew != nil {
		stopRenew()
		<-renewDone
	}
	if stopHealth != nil {
		stopHealth()
		<-healthDone
	}
	type cand struct {
		key    candidateKey
		lease  string
		caller *acl.Caller
	}
	l.mu.Lock()
	// Only holds on this sidecar's own sessions (the node session and
	// connection-bound holds) end with it. A lock or candidacy on a lease
	// the app created lives on with that lease: the app keeps it alive, and
	// still holds what it took, while its sidecar restarts.
	// Those on the node session go as the node's own (OnSession); those
	// on a connection-bound hold's session as the caller that made it.
	cands := make([]cand, 0, len(l.candidates))
	for k, c := range l.candidates {
		if s := l.sessions[c.lease]; !c.parked && s != nil {
			cands = append(cands, cand{k, c.lease, s.caller})
		}
	}
	locks := make([]lockKey, 0, len(l.locks))
	lockCallers := make([]*acl.Caller, 0, len(l.locks))
	for k := range l.locks {
		if s := l.sessions[k.lease]; s != nil {
			locks = append(locks, k)
			lockCallers = append(lockCallers, s.caller)
		}
	}
	sessions := make([]*Session, 0, len(l.sessions))
	for _, s := range l.sessions {
		sessions = append(sessions, s)
	}
	l.mu.Unlock()

	var errs []error
	now := l.now().UnixNano()
	for _, c := range cands {
		k := c.key
		cctx := acl.NewContext(ctx, c.caller)
		if _, err := l.backend.Apply(cctx, &fsm.Resign{Election: k.election, Candidate: k.candidate, Node: l.cfg.Node, Now: now, Auth: l.authFor(cctx, c.lease)}); err != nil &&
			!errors.Is(err, fsm.ErrNotCandidate) && !errors.Is(err, fsm.ErrUnknownElection) {
			errs = append(errs, fmt.Errorf("resign %s/%s: %w", k.election, k.candidate, err))
		}
	}
	for i, k := range locks {
		lctx := acl.NewContext(ctx, lockCallers[i])
		if _, err := l.backend.Apply(lctx, &fsm.ReleaseLock{Name: k.name, Lease: k.lease, Node: l.cfg.Node, Now: now, Auth: l.authFor(lctx, k.lease)}); err != nil &&
			!errors.Is(err, fsm.ErrNotHolder) && !errors.Is(err, fsm.ErrUnknownLock) {
			errs = append(errs, fmt.Errorf("release %s: %w", k.name, err))
		}
	}
	for _, s := range sessions {
		if err := s.Close(ctx); err != nil && !errors.Is(err, fsm.ErrUnknownLease) {
			errs = append(errs, fmt.Errorf("revoke session %s: %w", s.ID(), err))
		}
	}
	if l.cfg.Registerer != nil {
		for _, c := range l.collectors {
			l.cfg.Registerer.Unregister(c)
		}
	}
	return errors.Join(errs...)
}
