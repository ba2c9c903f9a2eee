package concurrency

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"

	"github.com/sidecarhq/sidecar/api"
)

// Mutex is a distributed lock held on a session's lease. One Mutex holds
// at most one acquisition at a time; its methods are safe for concurrent
// use.
type Mutex struct {
	s    *Session
	name string

	mu sync.Mutex
	h  *hold // the current or last acquisition; nil before the first
	// released marks h unlocked (Unlock succeeded, or the registry said
	// there was nothing left to release).
	released bool
	// locking marks a Lock or TryLock in flight: one at a time per Mutex.
	locking bool
}

// NewMutex returns a Mutex for the lock name on s's lease.
func NewMutex(s *Session, name string) *Mutex {
	return &Mutex{s: s, name: name}
}

// Name is the lock's name.
func (m *Mutex) Name() string { return m.name }

// Lock blocks until the lock is held, ctx ends or the session ends. It
// waits in the agent's line (fair, and woken by the registry, not by
// polling). A Lock cancelled just as the lock was granted releases it
// again, so an abandoned Lock leaves nothing held.
func (m *Mutex) Lock(ctx context.Context) error {
	return m.lock(ctx, true)
}

// TryLock takes the lock if it is free and returns ErrLocked (wrapped, with
// the holder) at once if not.
func (m *Mutex) TryLock(ctx context.Context) error {
	return m.lock(ctx, false)
}

func (m *Mutex) lock(ctx context.Context, wait bool) error {
	m.mu.Lock()
	if m.locking || (m.h != nil && !m.released && m.h.Err() == nil) {
		m.mu.Unlock()
		return fmt.Errorf("concurrency: lock %q: %w", m.name, ErrHeld)
	}
	m.locking = true
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.locking = false
		m.mu.Unlock()
	}()
	bctx, cancel := m.s.bind(ctx)
	defer cancel()
	req := api.LockRequest{Lease: m.s.Lease()}
	if wait {
		req.Wait = acquireWait.String()
	}
	for {
		res, err := m.s.client.Lock(bctx, m.name, req)
		if bctx.Err() != nil {
			m.abandon(ctx)
			return fmt.Errorf("concurrency: lock %q: %w", m.name, context.Cause(bctx))
		}
		if err != nil {
			return fmt.Errorf("concurrency: lock %q: %w", m.name, err)
		}
		if res.Held {
			m.start(res.Token)
			return nil
		}
		if !wait {
			if res.Holder != nil {
				return fmt.Errorf("concurrency: lock %q: %w (token %d, node %s)", m.name, ErrLocked, res.Holder.Token, res.Holder.Node)
			}
			return fmt.Errorf("concurrency: lock %q: %w", m.name, ErrLocked)
		}
		// The wait ran out (or the lease left the line; the next request
		// says why): ask again.
	}
}

// abandon releases the lock if a cancelled Lock got it anyway: the agent
// keeps a lock handed over just as the wait ended, and nobody here knows
// its token.
func (m *Mutex) abandon(ctx context.Context) {
	select {
	case <-m.s.Done():
		return // the lease is gone or going: nothing to give back
	default:
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout(m.s))
	defer cancel()
	li, _, err := m.s.client.LockInfo(cctx, m.name, nil)
	if err != nil || li == nil || li.Lease != m.s.Lease() {
		return
	}
	_ = m.s.client.UnlockToken(cctx, m.name, m.s.Lease(), li.Token)
}

func (m *Mutex) start(token uint64) {
	h := startHold(m.s, token, m.watch)
	m.mu.Lock()
	m.h, m.released = h, false
	m.mu.Unlock()
}

// watch follows the lock with blocking queries until the registry shows
// another acquisition than h (another lease, another token, or none).
func (m *Mutex) watch(ctx context.Context, h *hold) error {
	return follow(ctx, func(index uint64) (uint64, error, error) {
		li, meta, err := m.s.client.LockInfo(ctx, m.name, &api.QueryOptions{Index: index, Wait: watchWait})
		if err != nil {
			return 0, nil, err
		}
		if li == nil || li.Lease != m.s.Lease() || li.Token != h.token {
			return 0, ErrLost, nil
		}
		return meta.Index, nil, nil
	})
}

func (m *Mutex) current() *hold {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.h
}

// Token is the fencing token of the current or last acquisition, 0 before
// the first. It stays after the hold ends, so that Fence can say who holds
// now.
func (m *Mutex) Token() uint64 {
	if h := m.current(); h != nil {
		return h.token
	}
	return 0
}

// Done is closed when the hold can no longer be trusted: the session's
// Done, the registry showing another holder, or Unlock. Stop acting on the
// lock's behalf when it closes. Before the first Lock it is closed.
func (m *Mutex) Done() <-chan struct{} {
	if h := m.current(); h != nil {
		return h.done
	}
	return closedCh
}

// Err says why Done closed: ErrLost, ErrReleased or the session's reason;
// nil while held.
func (m *Mutex) Err() error {
	if h := m.current(); h != nil {
		return h.Err()
	}
	return ErrNotHeld
}

// Unlock releases the acquisition this Mutex made, guarded by its token
// (SPEC "Token-guarded release"): when the lock has passed on since (the
// lease expired and another took it), the agent answers 409 (an
// *api.StatusError, wrapped) and the newer hold stands. So a late or
// retried Unlock never ends someone else's hold, and Unlock can be retried
// after a failure. Done closes first, whatever the answer.
func (m *Mutex) Unlock(ctx context.Context) error {
	h := m.current()
	if h == nil {
		return fmt.Errorf("concurrency: unlock %q: %w", m.name, ErrNotHeld)
	}
	h.stop(ErrReleased)
	err := m.s.client.UnlockToken(ctx, m.name, m.s.Lease(), h.token)
	var se *api.StatusError
	if err == nil || (errors.As(err, &se) && (se.Code == http.StatusConflict || se.Code == http.StatusNotFound)) {
		// Released, or nothing of ours left to release.
		m.mu.Lock()
		if m.h == h {
			m.released = true
		}
		m.mu.Unlock()
	}
	if err != nil {
		return fmt.Errorf("concurrency: unlock %q token %d: %w", m.name, h.token, err)
	}
	return nil
}

// Fence asks the servers whether this Mutex's token is still the live
// holder's, confirmed with a quorum; see the package function Fence.
func (m *Mutex) Fence(ctx context.Context) (current bool, currentToken uint64, err error) {
	h := m.current()
	if h == nil {
		return false, 0, fmt.Errorf("concurrency: fence lock %q: %w", m.name, ErrNotHeld)
	}
	return Fence(ctx, m.s.client, KindLock, m.name, h.token)
}
