package healthcheck

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/sidecarhq/sidecar/fsm"
)

// Errors of the Runner. ErrUnknownCheck wraps fsm.ErrUnknownCheck and
// ErrNotTTL and ErrInvalidCheck wrap fsm.ErrInvalid, so that the HTTP API
// maps them like the registry's own (404, 400).
var (
	ErrClosed       = errors.New("healthcheck: runner closed")
	ErrUnknownCheck = fmt.Errorf("healthcheck: %w", fsm.ErrUnknownCheck)
	ErrNotTTL       = fmt.Errorf("healthcheck: %w: not a ttl check", fsm.ErrInvalid)
	ErrInvalidCheck = fmt.Errorf("healthcheck: %w: check", fsm.ErrInvalid)
)

// Check types, as in fsm.Check.Type.
const (
	typeHTTP = "http"
	typeTCP  = "tcp"
	typeExec = "exec"
	typeTTL  = "ttl"
)

// Instance is a service instance whose checks the Runner runs.
type Instance struct {
	ID     string
	Checks []fsm.Check
}

// State is what Runner.Statuses tells about one check.
type State struct {
	Instance string
	Type     string
	// Status is the check's status after thresholds: the one the registry
	// holds or is about to.
	Status string
	// Output is the output of the latest run or TTL update.
	Output string
}

// Runner runs the health checks of this sidecar's own service instances.
// Its methods are safe for concurrent use.
type Runner struct {
	cfg          Config
	log          *slog.Logger
	notifier     Notifier
	deregisterer Deregisterer // nil unless the notifier implements it
	metrics      *metrics
	transport    *http.Transport
	client       *http.Client

	mu     sync.Mutex
	closed bool
	checks map[string]*check // by check id
	// byInstance lists the ids of each instance's running checks, so that
	// SyncInstance touches one instance's checks only.
	byInstance map[string][]string
	// retired holds stopped checks whose goroutine has not ended yet, so
	// that a check started again under the same id waits for it: the
	// notifications of one check id never overlap.
	retired map[string]*check
	wg      sync.WaitGroup
}

// New returns a Runner that reports changes of status to notifier, and
// deregisters instances critical too long through it when it implements
// Deregisterer. It runs no check until Sync.
func New(cfg Config, notifier Notifier) (*Runner, error) {
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	if notifier == nil {
		return nil, fmt.Errorf("%w: nil notifier", ErrConfig)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	r := &Runner{
		cfg:        cfg,
		log:        cfg.Logger.With("component", "healthcheck"),
		notifier:   notifier,
		metrics:    m,
		transport:  newTransport(),
		checks:     map[string]*check{},
		byInstance: map[string][]string{},
		retired:    map[string]*check{},
	}
	r.deregisterer, _ = notifier.(Deregisterer)
	r.client = newHTTPClient(r.transport)
	return r, nil
}

// Sync makes the running checks those of instances: it starts the checks
// that are new, restarts those whose definition changed (or moved to
// another instance), and stops those no longer listed. A check whose
// definition is unchanged keeps running, its thresholds' counters intact;
// if its Status differs from what the check last reported, it reports its
// status again. Check ids are unique within the Runner, as within a node.
//
// Sync does not wait for stopped checks to end. Invalid checks (unknown
// type, bad URL or address, empty command, no TTL, duplicate id, exec
// disabled) are not run; Sync returns them joined, each wrapping
// ErrInvalidCheck, after applying the rest.
func (r *Runner) Sync(instances []Instance) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	var errs []error
	want := map[string]*spec{}
	for _, in := range instances {
		for i := range in.Checks {
			s, err := r.newSpec(in.ID, &in.Checks[i])
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if _, dup := want[s.def.ID]; dup {
				errs = append(errs, fmt.Errorf("%w %q of instance %q: id used twice", ErrInvalidCheck, s.def.ID, in.ID))
				continue
			}
			want[s.def.ID] = s
		}
	}
	r.reconcileLocked(slices.Collect(maps.Keys(r.checks)), want)
	return errors.Join(errs...)
}

// reconcileLocked makes the running checks among ids those of want: an
// unchanged one keeps running (told the registry's status), the others
// stop, and the rest of want starts.
func (r *Runner) reconcileLocked(ids []string, want map[string]*spec) {
	for _, id := range ids {
		c := r.checks[id]
		if c == nil {
			continue
		}
		if s, ok := want[id]; ok && s.sameDefinition(c.spec) {
			c.registryStatus(s.def.Status)
			delete(want, id)
			continue
		}
		r.stopLocked(c)
	}
	for _, s := range want {
		r.startLocked(s)
	}
}

// TTLUpdate sets the status of a TTL check (passing, warning or critical)
// and its output, truncated to the output limit, and restarts its TTL. The
// check reports the change from its own goroutine: TTLUpdate does not wait
// for the registry.
func (r *Runner) TTLUpdate(checkID, status, output string) error {
	if !fsm.ValidStatus(status) {
		return fmt.Errorf("healthcheck: %w: status %q is not passing, warning or critical", fsm.ErrInvalid, status)
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return ErrClosed
	}
	c := r.checks[checkID]
	r.mu.Unlock()
	if c == nil {
		return fmt.Errorf("%w: %q", ErrUnknownCheck, checkID)
	}
	if c.spec.def.Type != typeTTL {
		return fmt.Errorf("%w: %q is a %s check", ErrNotTTL, checkID, c.spec.def.Type)
	}
	if !c.ttlUpdate(time.Now(), status, output) {
		return fmt.Errorf("%w: %q", ErrUnknownCheck, checkID)
	}
	return nil
}

// Statuses returns the state of every running check, by check id.
func (r *Runner) Statuses() map[string]State {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]State, len(r.checks))
	for id, c := range r.checks {
		out[id] = c.state()
	}
	return out
}

// Close stops every check, waits for their goroutines (and exec checks'
// processes) to end, and closes idle HTTP connections. It is safe to call
// more than once; later calls wait too. It must not be called from a
// Notifier or Deregisterer.
func (r *Runner) Close() error {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		for _, c := range r.checks {
			r.stopLocked(c)
		}
	}
	r.mu.Unlock()
	r.wg.Wait()
	r.transport.CloseIdleConnections()
	return nil
}

func (r *Runner) startLocked(s *spec) {
	var prev <-chan struct{}
	if old := r.retired[s.def.ID]; old != nil {
		prev = old.done
	}
	c := newCheck(r, s, prev)
	r.checks[s.def.ID] = c
	r.byInstance[s.instance] = append(r.byInstance[s.instance], s.def.ID)
	r.wg.Add(1)
	go c.loop()
}

func (r *Runner) stopLocked(c *check) {
	c.stop()
	delete(r.checks, c.spec.def.ID)
	ids := slices.DeleteFunc(r.byInstance[c.spec.instance], func(id string) bool { return id == c.spec.def.ID })
	if len(ids) == 0 {
		delete(r.byInstance, c.spec.instance)
	} else {
		r.byInstance[c.spec.instance] = ids
	}
	r.retired[c.spec.def.ID] = c
}

// ended forgets a stopped check whose goroutine has ended.
func (r *Runner) ended(c *check) {
	r.mu.Lock()
	if r.retired[c.spec.def.ID] == c {
		delete(r.retired, c.spec.def.ID)
	}
	r.mu.Unlock()
}

// spec is a validated check definition with its effective durations and,
// unless it is a TTL check, what runs it.
type spec struct {
	instance   string
	prober     prober
	def        fsm.Check
	interval   time.Duration
	timeout    time.Duration
	ttl        time.Duration
	deregAfter time.Duration
}

func (r *Runner) newSpec(instance string, def *fsm.Check) (*spec, error) {
	s := &spec{instance: instance, def: *def}
	s.def.Exec = slices.Clone(def.Exec)
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w %q of instance %q: %s", ErrInvalidCheck, def.ID, instance, fmt.Sprintf(format, args...))
	}
	if def.ID == "" {
		return nil, bad("empty id")
	}
	s.interval = time.Duration(def.Interval)
	if s.interval <= 0 {
		s.interval = r.cfg.Interval
	}
	s.interval = max(s.interval, r.cfg.MinInterval)
	s.timeout = time.Duration(def.Timeout)
	if s.timeout <= 0 {
		s.timeout = min(r.cfg.Timeout, s.interval)
	}
	s.deregAfter = time.Duration(def.DeregisterCriticalAfter)
	switch def.Type {
	case typeHTTP:
		p, err := newHTTPProber(r.client, def.HTTP, s.timeout)
		if err != nil {
			return nil, bad("%v", err)
		}
		s.prober = p
	case typeTCP:
		p, err := newTCPProber(def.TCP, s.timeout)
		if err != nil {
			return nil, bad("tcp address %q: %v", def.TCP, err)
		}
		s.prober = p
	case typeExec:
		if !r.cfg.ExecEnabled {
			return nil, bad("exec checks are disabled")
		}
		p, err := newExecProber(def.Exec, s.timeout)
		if err != nil {
			return nil, bad("%v", err)
		}
		s.prober = p
	case typeTTL:
		if def.TTL <= 0 {
			return nil, bad("ttl check without a ttl")
		}
		s.ttl = max(time.Duration(def.TTL), r.cfg.MinInterval)
	default:
		return nil, bad("type %q is not http, tcp, exec or ttl", def.Type)
	}
	return s, nil
}

// Timer slack: runs of checks with an interval of at least slackMinInterval
// are scheduled on a grid of runSlack, so that checks whose runs fall close
// together wake together. Each wake-up of a mostly idle Go program costs
// more than the HTTP request of a check against a local service (threads
// woken through futexes, schedulers spinning, epoll): with 500 checks a
// second, 25ms slots (about 12 runs each) cut the CPU of the checks by two
// thirds (BenchmarkHTTPChecks500: about 12% of a core without, 4% with).
// A run comes at most 25ms late, 2.5% of its interval, and the checks of a
// service arrive at it in small bursts rather than spread out.
const (
	runSlack         = 25 * time.Millisecond
	slackMinInterval = time.Second
)

// slackEpoch anchors the grid, with a monotonic clock reading.
var slackEpoch = time.Now()

// align returns t rounded up to the slack grid, or t for checks with a
// shorter interval.
func (s *spec) align(t time.Time) time.Time {
	if s.interval < slackMinInterval {
		return t
	}
	d := t.Sub(slackEpoch)
	if r := d % runSlack; r != 0 {
		d += runSlack - r
	}
	return slackEpoch.Add(d)
}

// sameDefinition reports whether two specs run the same check: everything
// but the status, output, name and indexes.
func (s *spec) sameDefinition(o *spec) bool {
	a, b := s.def, o.def
	return s.instance == o.instance && a.Type == b.Type && a.HTTP == b.HTTP && a.TCP == b.TCP &&
		slices.Equal(a.Exec, b.Exec) && a.TTL == b.TTL && a.Interval == b.Interval &&
		a.Timeout == b.Timeout && a.SuccessBeforePassing == b.SuccessBeforePassing &&
		a.FailuresBeforeCritical == b.FailuresBeforeCritical &&
		a.DeregisterCriticalAfter == b.DeregisterCriticalAfter
}

// SyncInstance makes the running checks of one instance those of in, as
// Sync does for all: new checks start, changed ones restart, unchanged ones
// keep running, and checks of the instance no longer listed stop. It costs
// the instance's checks, not every running check, so an agent with tens of
// thousands of instances registers one in constant time. A check id that
// another instance runs is refused with ErrInvalidCheck.
func (r *Runner) SyncInstance(in Instance) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	var errs []error
	want := map[string]*spec{}
	for i := range in.Checks {
		s, err := r.newSpec(in.ID, &in.Checks[i])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if c := r.checks[s.def.ID]; c != nil && c.spec.instance != in.ID {
			errs = append(errs, fmt.Errorf("%w %q of instance %q: id used by instance %q", ErrInvalidCheck, s.def.ID, in.ID, c.spec.instance))
			continue
		}
		if _, dup := want[s.def.ID]; dup {
			errs = append(errs, fmt.Errorf("%w %q of instance %q: id used twice", ErrInvalidCheck, s.def.ID, in.ID))
			continue
		}
		want[s.def.ID] = s
	}
	r.reconcileLocked(slices.Clone(r.byInstance[in.ID]), want)
	return errors.Join(errs...)
}

// RemoveInstance stops the checks of one instance.
func (r *Runner) RemoveInstance(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, cid := range slices.Clone(r.byInstance[id]) {
		if c := r.checks[cid]; c != nil {
			r.stopLocked(c)
		}
	}
}

// RegistryStatus tells a running check what the registry holds for it; a
// check whose last report differs reports its status again (after a
// snapshot restore or a re-registration reset it in the registry).
func (r *Runner) RegistryStatus(checkID, status string) {
	r.mu.Lock()
	c := r.checks[checkID]
	r.mu.Unlock()
	if c != nil {
		c.registryStatus(status)
	}
}
