package election

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sidecarhq/sidecar/fsm"
)

// leaseTracker holds lease deadlines on the Raft leader. Deadlines live only
// in the leader's memory: a keepalive is a map write, not a log entry. A new
// leader starts every lease's full TTL afresh, so a lease may outlive its TTL
// across a leader change but never expires early.
type leaseTracker struct {
	s *Server

	mu        sync.Mutex
	leading   bool
	ready     chan struct{} // closed once this term's deadlines are loaded
	deadlines map[string]time.Time
	ttls      map[string]time.Duration
	// expiring holds leases whose expiry entry is in flight: a keepalive
	// that came now would be acknowledged for a lease about to go.
	expiring  map[string]bool
	seenIndex uint64 // lease table index last reconciled
	wake      chan struct{}

	// Keepalives are acknowledged only after a quorum confirmed, once they
	// had arrived, that this server still leads (see confirmLeader).
	vmu      sync.Mutex
	vnext    *leaderCheck // the round keepalives arriving now wait for
	vrunning bool
	vidle    chan struct{} // closed when the running rounds end
	vclosed  bool          // the server is closing: no new rounds
}

// leaderCheck is one round of confirming leadership with a quorum.
type leaderCheck struct {
	done chan struct{}
	err  error
}

func newLeaseTracker(s *Server) *leaseTracker {
	return &leaseTracker{s: s, ready: make(chan struct{}), wake: make(chan struct{}, 1)}
}

func (t *leaseTracker) now() time.Time { return t.s.cfg.Now() }

// lead runs while this server leads: it loads every lease with a full TTL,
// then commits an expiry for each lease whose deadline passes.
func (t *leaseTracker) lead(ctx context.Context) {
	// The barrier makes the registry hold every committed lease before the
	// deadlines are loaded from it.
	for {
		err := t.s.raft.Barrier(t.s.cfg.ApplyTimeout).Error()
		if err == nil {
			// This barrier committed what earlier terms left in the
			// log; a barrier asks for no nudge of its own, and without
			// one the followers' copies would learn of those entries
			// only at the commit timeout (nudge.go).
			t.s.nudgeNow()
			break
		}
		t.s.log.Warn("lease tracker barrier failed", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(t.s.cfg.HeartbeatTimeout / 2):
		}
	}
	t.mu.Lock()
	// equivalent mutant: with the bug switch off (every build but the chaos suite's) the first operand decides
	if !bugLeaseLocalClock || t.deadlines == nil {
		t.deadlines = map[string]time.Time{}
		t.ttls = map[string]time.Duration{}
	}
	t.expiring = map[string]bool{}
	t.seenIndex = 0
	t.reconcileLocked()
	t.leading = true
	close(t.ready)
	loaded := len(t.deadlines)
	t.mu.Unlock()
	t.s.log.Info("lease tracker leading", "leases", loaded)

	defer func() {
		t.mu.Lock()
		t.leading = false
		if !bugLeaseLocalClock {
			t.deadlines, t.ttls = nil, nil
		}
		t.expiring = nil
		t.ready = make(chan struct{})
		t.mu.Unlock()
	}()

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		watch := t.s.fsm.Watch()
		due, next := t.collect()
		retry := false
		for _, id := range due {
			leading, failed := t.expire(ctx, id)
			if !leading {
				return
			}
			retry = retry || failed
		}
		if retry {
			// A failed expiry is tried again soon, not in a tight loop.
			select {
			case <-ctx.Done():
				return
			case <-time.After(t.s.cfg.HeartbeatTimeout / 2):
			}
		}
		if len(due) > 0 {
			continue
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = next.Sub(t.now())
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-watch:
		case <-t.wake:
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// collect reconciles with the registry and returns the leases due now,
// marked as expiring, and the earliest deadline still ahead.
func (t *leaseTracker) collect() (due []string, next time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.reconcileLocked()
	now := t.now()
	for id, dl := range t.deadlines {
		if t.expiring[id] {
			continue
		}
		if !dl.After(now) {
			t.expiring[id] = true
			due = append(due, id)
			continue
		}
		if next.IsZero() || dl.Before(next) {
			next = dl
		}
	}
	return due, next
}

// expire commits a lease's expiry. It reports leading false when this
// server no longer leads (the term's work ends), and failed when the entry
// was refused: the lease is then unmarked and tried again on a later round.
// An entry whose outcome is unknown while this server still leads (a slow
// or lost commit) is retried at once with the lease still marked, so no
// keepalive is acknowledged for a lease whose expiry may yet commit; the
// tracker must not stop then either, or no lease would expire until the
// next election.
func (t *leaseTracker) expire(term context.Context, id string) (leading, failed bool) {
	l, _ := t.s.fsm.Lease(id)
	session := l != nil && l.Session
	for {
		ctx, cancel := context.WithTimeout(term, t.s.cfg.ApplyTimeout)
		_, err := t.s.Apply(ctx, &fsm.ExpireLease{ID: id, Now: t.now().UnixNano()})
		cancel()
		switch {
		case err == nil, errors.Is(err, fsm.ErrUnknownLease):
			t.s.m.leaseExpirations.Inc()
			if session {
				t.s.m.sessionExpirations.Inc()
				t.s.log.Info("node session expired", "lease", id, "node", l.Node)
			} else {
				t.s.log.Debug("lease expired", "lease", id)
			}
			return true, false
		case term.Err() != nil, errors.Is(err, ErrNotLeader), errors.Is(err, ErrShutdown), !t.s.IsLeader():
			return false, false
		case errors.Is(err, ErrUnknownOutcome), errors.Is(err, context.DeadlineExceeded):
			t.s.log.Warn("lease expiry outcome unknown, retrying", "lease", id, "err", err)
			select {
			case <-term.Done():
				return false, false
			case <-time.After(t.s.cfg.HeartbeatTimeout / 2):
			}
		default:
			t.s.log.Warn("lease expiry failed", "lease", id, "err", err)
			t.mu.Lock()
			delete(t.expiring, id)
			t.mu.Unlock()
			return true, true
		}
	}
}

// reconcileLocked adds leases the registry gained (with a full TTL from now)
// and drops those it lost. Callers hold t.mu.
func (t *leaseTracker) reconcileLocked() {
	idx := t.s.fsm.TableIndex(fsm.TableLeases)
	// equivalent mutant: skipping an unchanged table only saves work
	if idx == t.seenIndex && t.seenIndex != 0 {
		return
	}
	t.seenIndex = idx
	now := t.now()
	live := map[string]bool{}
	for _, l := range t.s.fsm.Leases() {
		live[l.ID] = true
		if _, ok := t.deadlines[l.ID]; !ok {
			ttl := time.Duration(l.TTL)
			t.deadlines[l.ID] = now.Add(ttl)
			t.ttls[l.ID] = ttl
		}
	}
	for id := range t.deadlines {
		if !live[id] {
			delete(t.deadlines, id)
			delete(t.ttls, id)
			delete(t.expiring, id)
		}
	}
}

func (t *leaseTracker) waitReady(ctx context.Context) error {
	for {
		t.mu.Lock()
		leading, ready := t.leading, t.ready
		t.mu.Unlock()
		if leading {
			return nil
		}
		if !t.s.IsLeader() {
			return ErrNotLeader
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return fmt.Errorf("%w: lease tracker not ready: %v", ErrNotLeader, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (t *leaseTracker) keepAlive(ctx context.Context, id string) (time.Duration, error) {
	if err := t.waitReady(ctx); err != nil {
		return 0, err
	}
	ttl, err := t.extend(id)
	if err != nil && !errors.Is(err, fsm.ErrUnknownLease) {
		return 0, err
	}
	// "Unknown lease" is as definite an answer as an acknowledgement: a
	// deposed leader that has not noticed yet may be expiring a lease its
	// successor keeps alive, or not know one granted since. Both wait for
	// the confirmation.
	if cerr := t.confirmLeader(ctx); cerr != nil {
		return 0, cerr
	}
	return ttl, err
}

// extend restarts a lease's TTL from now.
func (t *leaseTracker) extend(id string) (time.Duration, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.leading {
		return 0, ErrNotLeader
	}
	if t.expiring[id] {
		return 0, fmt.Errorf("%w: %q expired", fsm.ErrUnknownLease, id)
	}
	if _, ok := t.deadlines[id]; !ok {
		// Granted since the last reconcile.
		t.reconcileLocked()
	}
	if _, ok := t.deadlines[id]; !ok {
		return 0, fmt.Errorf("%w: %q", fsm.ErrUnknownLease, id)
	}
	ttl := t.ttls[id]
	t.deadlines[id] = t.now().Add(ttl)
	return ttl, nil
}

// confirmLeader returns once a quorum has confirmed that this server leads,
// in a round that began after the call (consistent reads use it too): an
// acknowledged keepalive then
// arrived before any successor could be elected, and a successor restarts
// every lease's full TTL, so the holder's deadline (send time + TTL) stays a
// lower bound of the expiry. Without it, a leader paused past its
// successor's election (SIGSTOP, a long GC, a frozen VM) would, on waking,
// acknowledge keepalives queued meanwhile, while the successor expires the
// lease on its own clock. Concurrent keepalives share one round.
func (t *leaseTracker) confirmLeader(ctx context.Context) error {
	t.vmu.Lock()
	if t.vclosed {
		t.vmu.Unlock()
		return ErrShutdown
	}
	if t.vnext == nil {
		t.vnext = &leaderCheck{done: make(chan struct{})}
	}
	round := t.vnext
	if !t.vrunning {
		t.vrunning = true
		t.vidle = make(chan struct{})
		go t.runLeaderChecks(t.vidle)
	}
	t.vmu.Unlock()
	select {
	case <-round.done:
		return round.err
	case <-ctx.Done():
		return fmt.Errorf("%w: leadership not confirmed: %v", ErrUnknownOutcome, ctx.Err())
	}
}

// runLeaderChecks runs rounds while keepalives wait for one; each round
// starts after every keepalive waiting for it has arrived.
func (t *leaseTracker) runLeaderChecks(idle chan struct{}) {
	defer close(idle)
	for {
		t.vmu.Lock()
		round := t.vnext
		t.vnext = nil
		if round == nil || t.vclosed {
			t.vrunning = false
			t.vmu.Unlock()
			if round != nil {
				round.err = ErrShutdown
				close(round.done)
			}
			return
		}
		t.vmu.Unlock()
		if err := t.s.raft.VerifyLeader().Error(); err != nil {
			round.err = fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
		close(round.done)
	}
}

// stopLeaderChecks starts no more rounds and waits, up to wait, for the
// running one. hashicorp/raft never answers a VerifyLeader queued as it
// shuts down, so the round must end before Raft does; a round ends within
// the leader lease (confirmed, or the leader steps down and answers it).
func (t *leaseTracker) stopLeaderChecks(wait time.Duration) {
	t.vmu.Lock()
	t.vclosed = true
	idle := t.vidle
	running := t.vrunning
	t.vmu.Unlock()
	if !running {
		return
	}
	select {
	case <-idle:
	case <-time.After(wait):
	}
}

func (t *leaseTracker) remaining(id string) (time.Duration, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	dl, ok := t.deadlines[id]
	if !t.leading || !ok {
		return 0, false
	}
	return dl.Sub(t.now()), true
}

// resetAll restarts every lease's full TTL (after a snapshot restore).
func (t *leaseTracker) resetAll() {
	t.mu.Lock()
	if t.leading {
		t.deadlines, t.ttls, t.expiring = map[string]time.Time{}, map[string]time.Duration{}, map[string]bool{}
		t.seenIndex = 0
		t.reconcileLocked()
	}
	t.mu.Unlock()
	select {
	case t.wake <- struct{}{}:
	default:
	}
}
