package election

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sidecarhq/sidecar/acl"
	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/fsm"
)

// Connection-bound holds live exactly as long as ctx: the HTTP handler
// passes the request context, which ends when the client closes its
// connection or dies. The hold has a session of its own, so ending it is one
// revoke: one Raft entry that also hands the lock or leadership to the next
// in line.

// closeHoldSession revokes a hold's session on a fresh context: the
// request's one is already done when the client went away.
func (l *Local) closeHoldSession(s *Session) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// equivalent mutant: log output only
	if err := s.Close(ctx); err != nil && !errors.Is(err, fsm.ErrUnknownLease) {
		l.log.Warn("release of connection-bound hold failed; it ends with its lease TTL", "lease", s.ID(), "err", err)
	}
}

// untilTimer returns a channel that fires at t (nil for the zero time) and
// its stop function.
func untilTimer(now, t time.Time) (<-chan time.Time, func() bool) {
	if t.IsZero() {
		return nil, func() bool { return false }
	}
	tm := time.NewTimer(t.Sub(now))
	return tm.C, tm.Stop
}

// HoldLock takes a lock on a new session of ttl and holds it until ctx
// ends, the session is no longer surely live, or spec.Wait passes before
// the lock is handed over (Wait 0: wait as long as ctx). emit gets one line
// per change: held:false with the holder while waiting, held:true with the
// token, and a last held:false when the hold is lost.
func (l *Local) HoldLock(ctx context.Context, spec LockSpec, ttl time.Duration, emit Emit[api.LockResult]) error {
	s, err := l.NewSession(ctx, ttl)
	if err != nil {
		return err
	}
	defer l.closeHoldSession(s)
	spec.Lease = s.ID()
	first, err := l.acquire(ctx, spec, true)
	if err != nil {
		return err
	}
	var deadline time.Time
	if spec.Wait > 0 {
		deadline = l.now().Add(spec.Wait)
	}
	held := false
	var lastHolder uint64 = ^uint64(0)
	if !first.Held {
		if err := emit(first); err != nil {
			return nil
		}
		if first.Holder != nil {
			lastHolder = first.Holder.Token
		}
	}
	for {
		watch, changed := l.reg.Watch(), s.Changed()
		m, _ := l.reg.Lock(spec.Name)
		mine := m != nil && m.Holder != nil && m.Holder.ID == s.ID()
		var wake time.Time
		switch {
		case held && (!mine || !s.Live()):
			_ = emit(api.LockResult{Holder: holderOf(m)})
			return nil
		case held:
			wake = s.ValidUntil()
		case mine && s.Live():
			held = true
			if err := emit(l.held(spec.Name, m.Holder)); err != nil {
				return nil
			}
			wake = s.ValidUntil()
		case m == nil || (!mine && m.WaiterIndex(s.ID()) < 0):
			_ = emit(api.LockResult{Holder: holderOf(m)})
			return nil
		case !deadline.IsZero() && !l.now().Before(deadline):
			_ = emit(api.LockResult{Holder: holderOf(m)})
			return nil
		default:
			// equivalent mutant: with no delay the deadline is the epoch, long past
			if m.Holder == nil && m.DelayUntil > 0 {
				if until := time.Unix(0, m.DelayUntil); l.now().Before(until) {
					wake = until
				} else if _, err := l.acquire(ctx, spec, true); err != nil && ctx.Err() == nil {
					return err
				}
			}
			if tok := tokenOf(m); tok != lastHolder {
				lastHolder = tok
				if err := emit(api.LockResult{Holder: holderOf(m)}); err != nil {
					return nil
				}
			}
			if !deadline.IsZero() && (wake.IsZero() || deadline.Before(wake)) {
				wake = deadline
			}
		}
		timer, stop := untilTimer(l.now(), wake)
		select {
		case <-ctx.Done():
			stop()
			return nil
		case <-watch:
		case <-changed:
		case <-timer:
		}
		stop()
	}
}

func tokenOf(m *fsm.Mutex) uint64 {
	if m == nil || m.Holder == nil {
		return 0
	}
	return m.Holder.Token
}

// HoldCampaign campaigns on a new session of ttl and stays a candidate
// until ctx ends, leadership is lost, or spec.Wait passes before it leads
// (Wait 0: as long as ctx). emit gets one line per change: leader:false with
// the current leader while waiting, leader:true with the token, and a last
// leader:false when leadership is lost.
func (l *Local) HoldCampaign(ctx context.Context, spec CampaignSpec, ttl time.Duration, emit Emit[api.CampaignResult]) error {
	s, err := l.NewSession(ctx, ttl)
	if err != nil {
		return err
	}
	defer l.closeHoldSession(s)
	c := &candidacy{lease: s.ID(), value: spec.Value, service: spec.Service, caller: acl.FromContext(ctx)}
	if spec.Service != "" && l.serviceStatus(spec.Service) != fsm.StatusPassing {
		// A hold ends when it cannot lead; a tied service that does not
		// pass means it cannot now.
		return fmt.Errorf("%w: %q", ErrServiceNotPassing, spec.Service)
	}
	if err := l.enter(ctx, spec.Election, spec.Candidate, c); err != nil {
		return err
	}
	key := candidateKey{spec.Election, spec.Candidate}
	l.mu.Lock()
	l.candidates[key] = c
	l.mu.Unlock()
	if c.service != "" {
		l.startHealthWatch()
	}
	defer func() {
		l.mu.Lock()
		if l.candidates[key] == c {
			delete(l.candidates, key)
		}
		l.mu.Unlock()
	}()

	var deadline time.Time
	if spec.Wait > 0 {
		deadline = l.now().Add(spec.Wait)
	}
	leading := false
	var lastToken uint64 = ^uint64(0)
	report := func(leads bool) {
		l.mu.Lock()
		c.reported = leads
		l.mu.Unlock()
	}
	defer report(false)
	for {
		watch, changed, demotions := l.reg.Watch(), s.Changed(), l.demotionChanged()
		m, _ := l.reg.Election(spec.Election)
		res := l.candidateStatus(spec.Election, spec.Candidate)
		mine := m != nil && m.Holder != nil && m.Holder.ID == spec.Candidate && m.Holder.Lease == s.ID()
		var wake time.Time
		switch {
		case leading && mine && l.isDemoted(spec.Election, spec.Candidate):
			// A transfer is on its way: the client hears it no longer
			// leads before the entry is sent (Transfer waits for this),
			// and the hold goes on: it ends once the transfer took the
			// candidate out, or leads again if the transfer was refused.
			res.Leader, res.Token, res.ExpiresIn = false, 0, ""
			if err := emit(res); err != nil {
				return nil
			}
			leading = false
			report(false)
		case leading && (!mine || !res.Leader):
			res.Leader, res.Token, res.ExpiresIn = false, 0, ""
			_ = emit(res)
			return nil
		case leading:
			wake = s.ValidUntil()
		case mine && res.Leader:
			leading = true
			report(true)
			if err := emit(res); err != nil {
				return nil
			}
			wake = s.ValidUntil()
		case m == nil || (!mine && m.WaiterIndex(spec.Candidate) < 0):
			_ = emit(res)
			return nil
		case !deadline.IsZero() && !l.now().Before(deadline):
			_ = emit(res)
			return nil
		default:
			if tok := tokenOf(m); tok != lastToken {
				lastToken = tok
				if err := emit(res); err != nil {
					return nil
				}
			}
			wake = deadline
		}
		timer, stop := untilTimer(l.now(), wake)
		select {
		case <-ctx.Done():
			stop()
			return nil
		case <-watch:
		case <-changed:
		case <-demotions:
		case <-timer:
		}
		stop()
	}
}
