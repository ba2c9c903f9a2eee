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

// CampaignSpec is a candidacy through this sidecar.
type CampaignSpec struct {
	Election  string
	Candidate string
	Value     string
	// Service ties the candidacy to a local instance's health.
	Service string
	// Lease to hang on; empty means the node session.
	Lease string
	// Wait is how long Campaign waits to lead before it answers.
	Wait time.Duration
}

// LockSpec is a lock request through this sidecar.
type LockSpec struct {
	Name  string
	Lease string // empty: the node session
	Value string
	// Wait > 0 queues the request and waits that long to be handed the
	// lock; 0 tries once.
	Wait      time.Duration
	LockDelay time.Duration
}

// Emit receives each change of a connection-bound hold; an error (the
// client went away) ends the hold.
type Emit[T any] func(T) error

// Campaign enters a candidate, kept alive by this sidecar until Resign or
// Close, and waits up to spec.Wait for it to lead. A candidate tied to a
// service instance enters only while the instance passes its checks.
func (l *Local) Campaign(ctx context.Context, spec CampaignSpec) (api.CampaignResult, error) {
	lease, err := l.defaultLease(spec.Lease)
	if err != nil {
		return api.CampaignResult{}, err
	}
	c := &candidacy{lease: lease, value: spec.Value, service: spec.Service, caller: acl.FromContext(ctx)}
	c.parked = spec.Service != "" && l.serviceStatus(spec.Service) != fsm.StatusPassing
	if !c.parked {
		if err := l.enter(ctx, spec.Election, spec.Candidate, c); err != nil {
			return api.CampaignResult{}, l.nodeSessionErr(lease, err)
		}
	} else if _, ok := l.reg.Instance(l.cfg.Node, spec.Service); !ok {
		return api.CampaignResult{}, fmt.Errorf("%w: service instance %q of this node", fsm.ErrUnknownInstance, spec.Service)
	}
	l.mu.Lock()
	l.candidates[candidateKey{spec.Election, spec.Candidate}] = c
	l.mu.Unlock()
	if c.service != "" {
		l.startHealthWatch()
	}
	deadline := l.now().Add(spec.Wait)
	for {
		watch := l.reg.Watch()
		res := l.candidateStatus(spec.Election, spec.Candidate)
		wait := deadline.Sub(l.now())
		// equivalent mutant: a wait ending at exactly this nanosecond
		if res.Leader || wait <= 0 {
			return res, nil
		}
		select {
		case <-ctx.Done():
			return res, nil
		case <-watch:
		case <-time.After(wait):
		}
	}
}

// enter campaigns for c as the caller that made it: the candidate is its
// token's (the registry keeps an existing candidate's owner).
func (l *Local) enter(ctx context.Context, election, candidate string, c *candidacy) error {
	ctx = c.ctx(ctx)
	_, err := l.apply(ctx, &fsm.Campaign{
		Election: election, Candidate: candidate, Lease: c.lease, Node: l.cfg.Node,
		Value: c.value, Service: c.service, Now: l.now().UnixNano(), Auth: l.authFor(ctx, c.lease),
	})
	return err
}

// resignOwn resigns a candidacy of this sidecar on its behalf: one on the
// node session as the node (OnSession), any other as the caller that made
// it.
func (l *Local) resignOwn(ctx context.Context, election, candidate string, c *candidacy) error {
	if !l.isNodeSession(c.lease) {
		ctx = c.ctx(ctx)
	} else {
		ctx = acl.NewContext(ctx, nil)
	}
	_, err := l.apply(ctx, &fsm.Resign{Election: election, Candidate: candidate, Node: l.cfg.Node, Now: l.now().UnixNano(), Auth: l.authFor(ctx, c.lease)})
	return err
}

// serviceStatus is the health of one of this node's instances, critical
// when it is not registered.
func (l *Local) serviceStatus(id string) string {
	in, ok := l.reg.Instance(l.cfg.Node, id)
	if !ok {
		return fsm.StatusCritical
	}
	node, _ := l.reg.Node(l.cfg.Node)
	return fsm.InstanceStatus(in, node)
}

// startHealthWatch starts, once, the loop that makes candidacies follow the
// health of their service instances.
func (l *Local) startHealthWatch() {
	l.healthOnce.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		l.healthStop = cancel
		l.healthDone = make(chan struct{})
		go func() {
			defer close(l.healthDone)
			l.followHealth(ctx)
		}()
	})
}

// followHealth resigns a tied candidacy when its instance turns critical and
// enters it again when the instance passes.
func (l *Local) followHealth(ctx context.Context) {
	for {
		watch := l.reg.Watch()
		type move struct {
			key candidateKey
			c   candidacy
		}
		var moves []move
		l.mu.Lock()
		for k, c := range l.candidates {
			if c.service == "" {
				continue
			}
			status := l.serviceStatus(c.service)
			if (!c.parked && status == fsm.StatusCritical) || (c.parked && status == fsm.StatusPassing) {
				moves = append(moves, move{k, *c})
			}
		}
		l.mu.Unlock()
		for _, mv := range moves {
			var err error
			if mv.c.parked {
				l.log.Info("service passing again: campaigning", "election", mv.key.election, "candidate", mv.key.candidate, "service", mv.c.service)
				err = l.enter(ctx, mv.key.election, mv.key.candidate, &mv.c)
			} else {
				l.log.Info("service critical: resigning", "election", mv.key.election, "candidate", mv.key.candidate, "service", mv.c.service)
				err = l.resignOwn(ctx, mv.key.election, mv.key.candidate, &mv.c)
				if errors.Is(err, fsm.ErrNotCandidate) || errors.Is(err, fsm.ErrUnknownElection) {
					err = nil
				}
			}
			l.mu.Lock()
			if c := l.candidates[mv.key]; c != nil && err == nil {
				c.parked = !mv.c.parked
			} else if errors.Is(err, fsm.ErrUnknownLease) && c != nil && c.lease == mv.c.lease && !l.onNodeSessionLocked(c.lease) {
				// Its app's lease ended: nothing left to campaign with. (A
				// lost node session is renewed, and the candidacy with it.)
				delete(l.candidates, mv.key)
			}
			l.mu.Unlock()
			// equivalent mutant: log output only
			if err != nil && ctx.Err() == nil {
				l.log.Warn("following service health failed", "election", mv.key.election, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-watch:
		case <-time.After(time.Second):
			// Retry failed moves now and then even if nothing changes.
		}
	}
}

// onNodeSessionLocked: lease is the node session's (l.mu held).
func (l *Local) onNodeSessionLocked(lease string) bool {
	return l.node != nil && l.node.ID() == lease
}

// Resign withdraws a candidate of this sidecar, as the caller in ctx: only
// the token that campaigned (or a management token) may.
func (l *Local) Resign(ctx context.Context, election, candidate string) error {
	_, err := l.apply(ctx, &fsm.Resign{Election: election, Candidate: candidate, Node: l.cfg.Node, Now: l.now().UnixNano(),
		Auth: fsm.Auth{By: acl.FromContext(ctx).By()}})
	if err == nil || errors.Is(err, fsm.ErrNotCandidate) {
		l.mu.Lock()
		delete(l.candidates, candidateKey{election, candidate})
		l.mu.Unlock()
	}
	return err
}

// candidateStatus says whether a candidate leads and its lease is surely
// live.
func (l *Local) candidateStatus(election, candidate string) api.CampaignResult {
	m, ok := l.reg.Election(election)
	if !ok || m.Holder == nil {
		return api.CampaignResult{}
	}
	res := api.CampaignResult{Current: Holder(m.Holder, true)}
	if m.Holder.ID != candidate || l.isDemoted(election, candidate) {
		return res
	}
	if s := l.leaseSession(m.Holder.Lease); s != nil {
		// equivalent mutant: a lease ending at exactly this nanosecond
		if left := s.ValidUntil().Sub(l.now()); left > 0 {
			res.Leader, res.Token, res.ExpiresIn = true, m.Holder.Token, left.Round(time.Millisecond).String()
		}
	}
	return res
}

// Self reports whether a candidate of this sidecar leads the election,
// judged by this sidecar's own certainty that the lease is live.
func (l *Local) Self(election string) api.SelfStatus {
	m, ok := l.reg.Election(election)
	if !ok || m.Holder == nil {
		return api.SelfStatus{}
	}
	l.mu.Lock()
	c, ours := l.candidates[candidateKey{election, m.Holder.ID}]
	ours = ours && !c.parked
	l.mu.Unlock()
	if !ours {
		return api.SelfStatus{}
	}
	res := l.candidateStatus(election, m.Holder.ID)
	return api.SelfStatus{Leader: res.Leader, Token: res.Token, ExpiresIn: res.ExpiresIn, Candidate: m.Holder.ID}
}

// WaitSelf is the blocking form of Self: it returns once the elections
// index exceeds minIndex or the answer flips (self-demotion changes no
// index), or when ctx ends.
func (l *Local) WaitSelf(ctx context.Context, election string, minIndex uint64) (api.SelfStatus, uint64) {
	first := l.Self(election)
	for {
		watch, demotions := l.reg.Watch(), l.demotionChanged()
		idx := l.reg.TableIndex(fsm.TableElections)
		st := l.Self(election)
		if idx > minIndex || st.Leader != first.Leader {
			return st, idx
		}
		var flip <-chan time.Time
		var changed <-chan struct{}
		if m, ok := l.reg.Election(election); ok && m.Holder != nil {
			if s := l.leaseSession(m.Holder.Lease); s != nil {
				changed = s.Changed()
				if st.Leader {
					t := time.NewTimer(s.ValidUntil().Sub(l.now()))
					defer t.Stop()
					flip = t.C
				}
			}
		}
		select {
		case <-ctx.Done():
			return st, idx
		case <-watch:
		case <-demotions:
		case <-changed:
		case <-flip:
		}
	}
}

// Lock takes a lock, waiting in line up to spec.Wait. A lock held by
// someone else at the end of the wait is no error: Held is false.
func (l *Local) Lock(ctx context.Context, spec LockSpec) (api.LockResult, error) {
	lease, err := l.defaultLease(spec.Lease)
	if err != nil {
		return api.LockResult{}, err
	}
	spec.Lease = lease
	res, err := l.acquire(ctx, spec, spec.Wait > 0)
	if err != nil {
		return api.LockResult{}, l.nodeSessionErr(lease, err)
	}
	// equivalent mutant: with no wait nothing was queued, and the loop below answers the same at once
	if res.Held || spec.Wait <= 0 {
		return res, nil
	}
	deadline := l.now().Add(spec.Wait)
	for {
		watch := l.reg.Watch()
		m, _ := l.reg.Lock(spec.Name)
		if m != nil && m.Holder != nil && m.Holder.ID == lease {
			return l.held(spec.Name, m.Holder), nil
		}
		if m == nil || m.WaiterIndex(lease) < 0 {
			// Out of line: the lease was revoked or expired meanwhile.
			return api.LockResult{Holder: holderOf(m)}, nil
		}
		if m.Holder == nil && !l.now().Before(time.Unix(0, m.DelayUntil)) {
			// A lock delay ended: the next acquire hands it to the head of
			// the line.
			if res, err := l.acquire(ctx, spec, true); err != nil || res.Held {
				return res, err
			}
		}
		wait := deadline.Sub(l.now())
		// equivalent mutant: a wait ending at exactly this nanosecond
		if wait <= 0 || ctx.Err() != nil {
			return l.leaveLine(acl.FromContext(ctx), spec)
		}
		// equivalent mutant: with no delay d is negative and the wait stays
		if m.Holder == nil && m.DelayUntil > 0 {
			// equivalent mutant: at d == 0 or d == wait the wait is the same
			if d := time.Unix(0, m.DelayUntil).Sub(l.now()); d > 0 && d < wait {
				wait = d
			}
		}
		select {
		case <-ctx.Done():
		case <-watch:
		case <-time.After(wait):
		}
	}
}

func holderOf(m *fsm.Mutex) *api.Holder {
	if m == nil {
		return nil
	}
	return Holder(m.Holder, false)
}

func (l *Local) acquire(ctx context.Context, spec LockSpec, queue bool) (api.LockResult, error) {
	res, err := l.apply(ctx, &fsm.AcquireLock{
		Name: spec.Name, Lease: spec.Lease, Node: l.cfg.Node, Value: spec.Value,
		Queue: queue, LockDelay: int64(spec.LockDelay), Now: l.now().UnixNano(), Auth: l.authFor(ctx, spec.Lease),
	})
	if err != nil {
		return api.LockResult{}, err
	}
	if res.Held {
		return l.held(spec.Name, res.Holder), nil
	}
	return api.LockResult{Holder: Holder(res.Holder, false)}, nil
}

func (l *Local) held(name string, h *fsm.Holder) api.LockResult {
	l.mu.Lock()
	if !l.locks[lockKey{name, h.Lease}] {
		l.locks[lockKey{name, h.Lease}] = true
		l.lockAcquisitions.Inc()
	}
	l.mu.Unlock()
	return api.LockResult{Held: true, Token: h.Token, Lease: h.Lease}
}

// leaveLine takes a waiter out of line when its wait ended; the registry
// keeps a lock it was handed just before, and then the answer is held. It
// acts for the caller that waited (its request's context may be over).
func (l *Local) leaveLine(caller *acl.Caller, spec LockSpec) (api.LockResult, error) {
	ctx, cancel := context.WithTimeout(acl.NewContext(context.Background(), caller), 5*time.Second)
	defer cancel()
	res, err := l.apply(ctx, &fsm.ReleaseLock{Name: spec.Name, Lease: spec.Lease, OnlyWaiting: true, Node: l.cfg.Node, Now: l.now().UnixNano(),
		Auth: l.authFor(ctx, spec.Lease)})
	if err != nil && !errors.Is(err, fsm.ErrNotHolder) {
		return api.LockResult{}, err
	}
	if res != nil && res.Held {
		return l.held(spec.Name, res.Holder), nil
	}
	m, _ := l.reg.Lock(spec.Name)
	return api.LockResult{Holder: holderOf(m)}, nil
}

// Unlock releases a lock (or leaves its line), whichever acquisition of
// the lease holds it: a late, retried Unlock may end a newer hold on the
// same lease. UnlockToken releases only the acquisition it names.
func (l *Local) Unlock(ctx context.Context, name, lease string) error {
	return l.UnlockToken(ctx, name, lease, 0)
}
