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

// ReadIndexer is an optional capability of a Backend, found by type
// assertion: the index a local copy of the registry must reach to reflect
// every write acknowledged before the call, confirmed with a quorum (the
// Raft leader's read index). Remote has it; fence checks need it.
type ReadIndexer interface {
	ReadIndex(ctx context.Context) (uint64, error)
}

// ErrNoReadIndex: the backend cannot confirm a read with a quorum, so a
// fence check cannot be answered.
var ErrNoReadIndex = errors.New("election: backend cannot confirm reads with a quorum")

// LockFence tells whether token is the fencing token of the lock's live
// holder, after a quorum confirmed this sidecar's copy of the registry is
// current (linearizable): Current false carries the current token (0 when
// the lock is vacant).
func (l *Local) LockFence(ctx context.Context, name string, token uint64) (api.FenceResult, error) {
	return l.fence(ctx, token, func() (*fsm.Mutex, bool) { return l.reg.Lock(name) })
}

// ElectionFence is LockFence for an election's leader.
func (l *Local) ElectionFence(ctx context.Context, name string, token uint64) (api.FenceResult, error) {
	return l.fence(ctx, token, func() (*fsm.Mutex, bool) { return l.reg.Election(name) })
}

func (l *Local) fence(ctx context.Context, token uint64, read func() (*fsm.Mutex, bool)) (api.FenceResult, error) {
	if !bugFenceSkipsQuorum {
		if err := l.readCurrent(ctx); err != nil {
			return api.FenceResult{}, err
		}
	}
	var cur uint64
	if m, ok := read(); ok && m.Holder != nil {
		cur = m.Holder.Token
	}
	return api.FenceResult{Current: token != 0 && token == cur, Token: cur}, nil
}

// readCurrent returns once this sidecar's copy of the registry holds every
// write acknowledged before the call: the leader's read index (on the
// leader, concurrent callers share one round of leadership confirmation
// that began after they arrived), then the local copy catching up to it.
func (l *Local) readCurrent(ctx context.Context) error {
	ri, ok := l.backend.(ReadIndexer)
	if !ok {
		return ErrNoReadIndex
	}
	idx, err := ri.ReadIndex(ctx)
	if err != nil {
		return err
	}
	return l.reachIndex(ctx, idx)
}

// reachIndex waits until the local registry applied index. It polls as
// well as watching: an entry the registry refused advances its index
// without waking watchers.
func (l *Local) reachIndex(ctx context.Context, index uint64) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		ch := l.reg.Watch()
		if l.reg.Index() >= index {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: local copy of the registry behind index %d: %v", ErrUnknownOutcome, index, ctx.Err())
		case <-ch:
		case <-tick.C:
		}
	}
}

// UnlockToken releases the acquisition of a lock that got token on lease
// (token-guarded release): when the lock was released and taken again
// since, even on the same lease, it fails with fsm.ErrStaleToken, naming
// the current token, and nothing changes. Token 0 is Unlock.
func (l *Local) UnlockToken(ctx context.Context, name, lease string, token uint64) error {
	lease, err := l.defaultLease(lease)
	if err != nil {
		return err
	}
	_, err = l.apply(ctx, &fsm.ReleaseLock{Name: name, Lease: lease, Token: token, Node: l.cfg.Node, Now: l.now().UnixNano(), Auth: l.authFor(ctx, lease)})
	if err == nil || errors.Is(err, fsm.ErrNotHolder) {
		l.mu.Lock()
		delete(l.locks, lockKey{name, lease})
		l.mu.Unlock()
	}
	return err
}

// demotion marks a candidate of this sidecar that must not be reported as
// leader: a transfer of it is on its way.
type demotion struct{}

// demoted reports whether a candidate is demoted (l.mu held).
func (l *Local) demotedLocked(k candidateKey) bool {
	_, ok := l.demoted[k]
	return ok
}

func (l *Local) isDemoted(election, candidate string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.demotedLocked(candidateKey{election, candidate})
}

// demotionChanged returns a channel closed at the next demotion or
// reinstatement, which change what Self reports without any index moving.
func (l *Local) demotionChanged() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.demoteWake
}

// setDemoted demotes or reinstates a candidate and wakes whoever reports
// leadership (l.mu held).
func (l *Local) setDemotedLocked(k candidateKey, on bool) {
	if on {
		l.demoted[k] = demotion{}
	} else {
		delete(l.demoted, k)
	}
	close(l.demoteWake)
	l.demoteWake = make(chan struct{})
}

// ErrTransferUnconfirmed: a transfer's leader stopped reporting itself, but
// a connection-bound hold could not tell its client so in time; the
// transfer was not sent.
var ErrTransferUnconfirmed = errors.New("election: demotion not delivered to the holder's stream")

// transferReportWait bounds how long a transfer waits for a connection-bound
// hold of its leader to tell its client it no longer leads.
const transferReportWait = 2 * time.Second

// Transfer hands an election's leadership from candidate from, which
// campaigns through this sidecar, to the waiting candidate to, in one Raft
// entry with a greater token; from leaves the election in that entry (a
// resign with a chosen successor: its app may campaign again). from ""
// names the one candidate this sidecar campaigns for in the election.
//
// Demotion comes first: this sidecar reports from as not leading (Self,
// WaitSelf, connection-bound holds, which have told their clients so)
// before it sends the entry, so no observer sees two leaders. If the entry
// is refused, from is reported as leader again only once a quorum-confirmed
// read of the registry shows it still leads; if its outcome is unknown,
// from resigns, so that it never leads unknowingly.
func (l *Local) Transfer(ctx context.Context, election, from, to string) (api.TransferResult, error) {
	if from == "" {
		var err error
		if from, err = l.soleCandidate(election); err != nil {
			return api.TransferResult{}, err
		}
	}
	if from == to {
		return api.TransferResult{}, fmt.Errorf("%w: a transfer names two different candidates", fsm.ErrInvalid)
	}
	caller := acl.FromContext(ctx)
	if err := l.transferable(election, from, to, caller.By()); err != nil {
		return api.TransferResult{}, err
	}
	key := candidateKey{election, from}
	l.mu.Lock()
	c := l.candidates[key]
	l.setDemotedLocked(key, true)
	l.mu.Unlock()
	if c != nil {
		if err := l.waitReported(ctx, c); err != nil {
			l.reinstate(key)
			return api.TransferResult{}, err
		}
	}
	res, err := l.apply(ctx, &fsm.Transfer{Election: election, From: from, To: to, Node: l.cfg.Node, Now: l.now().UnixNano(),
		Auth: fsm.Auth{By: caller.By()}})
	switch {
	case err == nil:
		l.mu.Lock()
		if l.candidates[key] == c {
			delete(l.candidates, key)
		}
		l.setDemotedLocked(key, false)
		l.mu.Unlock()
		return api.TransferResult{Leader: to, Token: res.Token}, nil
	case fsm.Refused(err):
		l.reinstate(key)
		return api.TransferResult{}, err
	default:
		// Not known to have happened, nor not to: from stays demoted and
		// resigns, so that either way it does not lead.
		go l.resignDemoted(caller, key, c)
		return api.TransferResult{}, err
	}
}

// soleCandidate is the one candidate this sidecar keeps in an election.
func (l *Local) soleCandidate(election string) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var found []string
	for k, c := range l.candidates {
		if k.election == election && !c.parked {
			found = append(found, k.candidate)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return "", fmt.Errorf("%w: this sidecar campaigns for no candidate in election %q", fsm.ErrNotLeading, election)
	}
	return "", fmt.Errorf("%w: this sidecar campaigns for %d candidates in election %q: name the one to transfer from", fsm.ErrInvalid, len(found), election)
}

// transferable checks, on this sidecar's copy, what the registry will check
// again: from leads through this sidecar, the caller may act for it, and
// to waits. It keeps a transfer that would be refused from demoting a
// live leader for nothing.
func (l *Local) transferable(election, from, to, by string) error {
	m, ok := l.reg.Election(election)
	if !ok {
		return fmt.Errorf("%w: %q", fsm.ErrUnknownElection, election)
	}
	if m.Holder == nil || m.Holder.ID != from {
		return fmt.Errorf("%w: candidate %q does not lead election %q", fsm.ErrNotLeading, from, election)
	}
	if m.Holder.Node != l.cfg.Node {
		return fmt.Errorf("%w: candidate %q of election %q campaigns through node %q, not this one (%q): transfer it there",
			fsm.ErrNotLeading, from, election, m.Holder.Node, l.cfg.Node)
	}
	if m.Holder.Owner != by {
		if t, ok := l.reg.ACLToken(by); !ok || by == "" || !t.Management {
			who := "a request without token"
			if by != "" {
				who = fmt.Sprintf("token %q", by)
			}
			return fmt.Errorf("%w: candidate %q of election %q was entered by another token; %s may not transfer it", fsm.ErrNotOwner, from, election, who)
		}
	}
	if m.WaiterIndex(to) < 0 {
		return fmt.Errorf("%w: candidate %q is not waiting in election %q", fsm.ErrNotCandidate, to, election)
	}
	return nil
}

// waitReported waits until no connection-bound hold still has from's
// leadership standing with its client.
func (l *Local) waitReported(ctx context.Context, c *candidacy) error {
	deadline := time.Now().Add(transferReportWait)
	for {
		l.mu.Lock()
		told := c.reported
		l.mu.Unlock()
		if !told {
			return nil
		}
		if time.Now().After(deadline) {
			return ErrTransferUnconfirmed
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
}

// reinstate lifts a demotion once a quorum-confirmed read of the registry
// is in this sidecar's copy (Self then reads the truth from it); until it
// can confirm, the candidate stays demoted, which is always safe.
func (l *Local) reinstate(key candidateKey) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	err := l.readCurrent(ctx)
	cancel()
	if err == nil {
		l.mu.Lock()
		l.setDemotedLocked(key, false)
		l.mu.Unlock()
		return
	}
	go func() {
		// equivalent mutant: the bound stops retries after 30 s of failed reads; no test may wait it out
		for i := 0; i < 300; i++ {
			time.Sleep(100 * time.Millisecond)
			l.mu.Lock()
			closed := l.closed
			l.mu.Unlock()
			if closed {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			err := l.readCurrent(ctx)
			cancel()
			if err == nil {
				l.mu.Lock()
				l.setDemotedLocked(key, false)
				l.mu.Unlock()
				return
			}
		}
	}()
}

// resignDemoted resigns a candidate whose transfer has an unknown outcome,
// retrying until the answer is known; it stays demoted until then.
func (l *Local) resignDemoted(caller *acl.Caller, key candidateKey, c *candidacy) {
	// equivalent mutant: the bound stops retries after about two minutes of failures; no test may wait it out
	for i := 0; i < 60; i++ {
		ctx, cancel := context.WithTimeout(acl.NewContext(context.Background(), caller), 2*time.Second)
		_, err := l.apply(ctx, &fsm.Resign{Election: key.election, Candidate: key.candidate, Node: l.cfg.Node, Now: l.now().UnixNano(),
			Auth: fsm.Auth{By: caller.By()}})
		cancel()
		if err == nil || errors.Is(err, fsm.ErrNotCandidate) || errors.Is(err, fsm.ErrUnknownElection) || fsm.Refused(err) {
			l.mu.Lock()
			if l.candidates[key] == c {
				delete(l.candidates, key)
			}
			l.setDemotedLocked(key, false)
			l.mu.Unlock()
			return
		}
		l.mu.Lock()
		closed := l.closed
		l.mu.Unlock()
		if closed {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}
