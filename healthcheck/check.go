package healthcheck

import (
	"context"
	"log/slog"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecarhq/sidecar/fsm"
)

// prober runs an http, tcp or exec check once.
type prober interface {
	// probe runs the check within ctx and returns out with the run's output
	// appended, at most limit bytes in all, and the run's result. It is
	// called from the check's goroutine only, one run at a time.
	probe(ctx context.Context, out []byte, limit int) ([]byte, string)
}

// check is one running check: a goroutine that wakes for its next run, TTL
// deadline, notification retry or deregistration, whichever comes first.
type check struct {
	r       *Runner
	spec    *spec
	log     *slog.Logger
	observe prometheus.Observer
	ctx     context.Context
	cancel  context.CancelFunc
	// kick wakes the goroutine after a change made from outside it (a TTL
	// update, a registry status from Sync).
	kick chan struct{}
	// prev is closed when the previous check of the same id has ended.
	prev <-chan struct{}
	done chan struct{}

	// Owned by the goroutine.
	th      thresholds
	scratch []byte    // the next run's output; swapped with out
	nextRun time.Time // zero for TTL checks
	since   time.Time // criticalSince as deregister last saw it
	deregAt time.Time // when to deregister; zero: not due

	mu       sync.Mutex
	stopped  bool
	status   string // after thresholds
	reported string // what the registry holds, as far as we know
	out      []byte
	// criticalSince is when the current critical spell began; zero when
	// not critical.
	criticalSince time.Time
	// retryAt is when to retry a failed notification; zero when none
	// failed since the status last changed.
	retryAt     time.Time
	ttlDeadline time.Time
	ttlExpired  bool
}

func newCheck(r *Runner, s *spec, prev <-chan struct{}) *check {
	status := s.def.Status
	if !fsm.ValidStatus(status) {
		status = fsm.StatusCritical
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &check{
		r:        r,
		spec:     s,
		log:      r.log.With("check", s.def.ID, "instance", s.instance, "type", s.def.Type),
		observe:  r.metrics.byType[s.def.Type],
		ctx:      ctx,
		cancel:   cancel,
		kick:     make(chan struct{}, 1),
		prev:     prev,
		done:     make(chan struct{}),
		th:       newThresholds(s.def.SuccessBeforePassing, s.def.FailuresBeforeCritical),
		status:   status,
		reported: status,
		out:      truncate([]byte(s.def.Output), r.cfg.OutputLimit),
	}
	now := time.Now()
	if status == fsm.StatusCritical {
		c.criticalSince = now
	}
	if s.def.Type == typeTTL {
		c.ttlDeadline = now.Add(s.ttl)
	}
	r.metrics.byStatus[status].Inc()
	return c
}

// stop makes the check stop changing and reporting, and its goroutine end.
func (c *check) stop() {
	c.mu.Lock()
	if !c.stopped {
		c.stopped = true
		c.r.metrics.byStatus[c.status].Dec()
	}
	c.mu.Unlock()
	c.cancel()
}

func (c *check) poke() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

func (c *check) loop() {
	defer c.r.wg.Done()
	defer c.r.ended(c)
	defer close(c.done)
	if c.prev != nil {
		// The previous check of this id was stopped: it ends promptly.
		<-c.prev
	}
	if c.spec.prober != nil {
		d := min(max(c.r.cfg.InitialDelay(c.spec.interval), 0), c.spec.interval)
		c.nextRun = c.spec.align(time.Now().Add(d))
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		if wake := c.work(time.Now()); wake.IsZero() {
			timer.Stop()
		} else {
			timer.Reset(time.Until(wake))
		}
		select {
		case <-c.ctx.Done():
			return
		case <-timer.C:
		case <-c.kick:
		}
	}
}

// work does what is due at now and returns when to wake next (zero: only
// when kicked).
func (c *check) work(now time.Time) time.Time {
	if c.spec.prober != nil && !now.Before(c.nextRun) {
		c.run(now)
		// Every interval from the schedule, not from when the timer
		// fired, so that lateness does not accumulate; a run that
		// overran its interval is followed by the next at once.
		now = time.Now()
		c.nextRun = c.spec.align(c.nextRun.Add(c.spec.interval))
		if c.nextRun.Before(now) {
			c.nextRun = c.spec.align(now)
		}
	}
	if c.spec.def.Type == typeTTL {
		c.expire(now)
	}
	c.notify(now)
	c.deregister(now)

	var wake time.Time
	consider := func(t time.Time) {
		if !t.IsZero() && (wake.IsZero() || t.Before(wake)) {
			wake = t
		}
	}
	consider(c.nextRun)
	consider(c.deregAt)
	c.mu.Lock()
	if c.spec.def.Type == typeTTL && !c.ttlExpired {
		consider(c.ttlDeadline)
	}
	if c.status != c.reported {
		consider(c.retryAt)
	}
	c.mu.Unlock()
	return wake
}

// run probes the target once and applies the result.
func (c *check) run(start time.Time) {
	limit := c.r.cfg.OutputLimit
	ctx, cancel := context.WithTimeout(c.ctx, c.spec.timeout)
	out, result := c.spec.prober.probe(ctx, c.scratch[:0], limit)
	cancel()
	if c.ctx.Err() != nil {
		// Stopped during the run: the result says nothing about the
		// target.
		return
	}
	c.observe.Observe(time.Since(start).Seconds())
	out = truncate(out, limit)
	c.mu.Lock()
	if !c.stopped {
		c.scratch, c.out = c.out, out
		c.setStatusLocked(c.th.observe(c.status, result), time.Now())
	}
	c.mu.Unlock()
}

// expire turns a TTL check critical once its deadline has passed without
// an update.
func (c *check) expire(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped || c.ttlExpired || now.Before(c.ttlDeadline) {
		return
	}
	c.ttlExpired = true
	const msg = "TTL expired (last output before timeout follows): "
	buf := append(append(c.scratch[:0], msg...), c.out...)
	c.scratch, c.out = c.out, truncate(buf, c.r.cfg.OutputLimit)
	c.setStatusLocked(fsm.StatusCritical, now)
}

// ttlUpdate applies a TTL update; false when the check was stopped.
func (c *check) ttlUpdate(now time.Time, status, output string) bool {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return false
	}
	c.ttlDeadline = now.Add(c.spec.ttl)
	c.ttlExpired = false
	limit := c.r.cfg.OutputLimit
	// Copy at most a rune more than the limit, so that truncate sees a
	// rune cut at the limit and drops it.
	c.out = truncate(append(c.out[:0], output[:min(len(output), limit+utf8.UTFMax)]...), limit)
	c.setStatusLocked(status, now)
	c.mu.Unlock()
	c.poke()
	return true
}

// registryStatus tells the check which status the registry holds, so that
// it reports its own again when they differ.
func (c *check) registryStatus(status string) {
	if !fsm.ValidStatus(status) {
		return
	}
	c.mu.Lock()
	changed := !c.stopped && status != c.reported
	if changed {
		c.reported = status
		c.retryAt = time.Time{}
	}
	c.mu.Unlock()
	if changed {
		c.poke()
	}
}

func (c *check) setStatusLocked(status string, now time.Time) {
	if status == c.status {
		return
	}
	c.log.Info("check status changed", "from", c.status, "to", status)
	c.r.metrics.byStatus[c.status].Dec()
	c.r.metrics.byStatus[status].Inc()
	c.status = status
	c.criticalSince = time.Time{}
	if status == fsm.StatusCritical {
		c.criticalSince = now
	}
	c.retryAt = time.Time{}
}

// notify reports the status if it differs from the one the registry holds
// and no failed attempt waits for its retry.
func (c *check) notify(now time.Time) {
	c.mu.Lock()
	if c.stopped || c.status == c.reported || now.Before(c.retryAt) {
		c.mu.Unlock()
		return
	}
	status, output := c.status, string(c.out)
	c.mu.Unlock()

	err := c.r.notifier.UpdateCheck(c.ctx, c.spec.def.ID, status, output)

	c.mu.Lock()
	if err == nil {
		c.reported = status
		c.retryAt = time.Time{}
	} else {
		c.retryAt = time.Now().Add(c.spec.interval)
	}
	c.mu.Unlock()
	if err != nil && c.ctx.Err() == nil {
		c.log.Warn("reporting check status failed; retrying", "status", status, "retry_in", c.spec.interval, "err", err)
	}
}

// deregister asks for the instance's deregistration once the check has been
// critical for deregister_critical_after.
func (c *check) deregister(now time.Time) {
	if c.r.deregisterer == nil || c.spec.deregAfter <= 0 {
		return
	}
	c.mu.Lock()
	since := c.criticalSince
	c.mu.Unlock()
	if !since.Equal(c.since) {
		c.since, c.deregAt = since, time.Time{}
		if !since.IsZero() {
			c.deregAt = since.Add(c.spec.deregAfter)
		}
	}
	if c.deregAt.IsZero() || now.Before(c.deregAt) {
		return
	}
	err := c.r.deregisterer.DeregisterCritical(c.ctx, c.spec.instance)
	if err != nil {
		c.deregAt = time.Now().Add(c.spec.interval)
		if c.ctx.Err() == nil {
			c.log.Warn("deregistering critical instance failed; retrying", "retry_in", c.spec.interval, "err", err)
		}
		return
	}
	c.deregAt = time.Time{}
	c.log.Info("deregistered instance critical too long", "critical_for", now.Sub(since).Round(time.Millisecond))
}

func (c *check) state() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return State{Instance: c.spec.instance, Type: c.spec.def.Type, Status: c.status, Output: string(c.out)}
}
