package concurrency

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Why a hold's Done closed (the Err of a Mutex or a Leadership), besides the
// session's own reasons (ErrSessionExpired, ErrLeaseLost, ErrSessionClosed).
var (
	// ErrLost: the registry shows another holder or leader, or none.
	ErrLost = errors.New("concurrency: hold lost: the registry shows another holder")
	// ErrReleased: Unlock, Resign or TransferTo ended the hold.
	ErrReleased = errors.New("concurrency: hold released")
)

// Errors of calls made in the wrong state.
var (
	// ErrLocked: TryLock found the lock held by someone else.
	ErrLocked = errors.New("concurrency: lock held by another")
	// ErrHeld: Lock on a Mutex that holds already (or is already being
	// locked by another goroutine); unlock it first, or use
	// another Mutex (on another session: the registry knows holders by
	// lease, so two Mutexes on one session share one hold).
	ErrHeld = errors.New("concurrency: mutex already held")
	// ErrNotHeld: Unlock or Fence on a Mutex that holds nothing.
	ErrNotHeld = errors.New("concurrency: mutex not held")
)

// How long one lock or campaign request waits, and one blocking query,
// before it is asked again: under the agent's 10-minute cap and its 5-minute
// default, long enough that a waiter costs one request every few minutes.
// A wait ended early by ctx is cancelled at once; these only bound the idle
// case.
const (
	acquireWait = 5 * time.Minute
	watchWait   = 5 * time.Minute
)

// Retry bounds of a watch whose blocking query failed (agent restarting,
// 429 past its limits): short first, so a blip costs little, capped so a
// long outage costs one request every two seconds. The session's own
// deadline, not the watch, is what demotes a holder cut off from its agent.
const (
	retryMin = 50 * time.Millisecond
	retryMax = 2 * time.Second
)

// hold is one acquisition: its token, and the watch that closes done when
// the registry stops showing it.
type hold struct {
	token uint64
	done  chan struct{}

	mu  sync.Mutex
	err error

	cancel    context.CancelFunc
	watchDone chan struct{}
}

// startHold starts watch in a goroutine with a context that ends with the
// session (or stop): watch returns nil while the hold stands and the
// context ends, or the reason the hold ended.
func startHold(s *Session, token uint64, watch func(ctx context.Context, h *hold) error) *hold {
	h := &hold{token: token, done: make(chan struct{}), watchDone: make(chan struct{})}
	ctx, cancel := s.bind(context.Background())
	h.cancel = cancel
	go func() {
		defer close(h.watchDone)
		err := watch(ctx, h)
		if err == nil {
			// The context ended: the session's end, or stop (whose
			// caller ended the hold first, so this changes nothing).
			err = context.Cause(ctx)
		}
		if serr := s.Err(); serr != nil {
			// The session ended first: its reason, not what the registry
			// showed after it (Close revokes the lease before bind's
			// goroutine has cancelled ctx).
			err = serr
		}
		h.end(err)
	}()
	return h
}

// end closes done once, recording why.
func (h *hold) end(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil {
		return
	}
	h.err = err
	close(h.done)
}

// Err is why done closed, nil before.
func (h *hold) Err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

// stop ends the hold with err and waits for its watch to return.
func (h *hold) stop(err error) {
	h.end(err)
	h.cancel()
	<-h.watchDone
}

// sleep waits d, or less when ctx ends; false when it ended.
// follow repeats a blocking query from the index of its last answer until
// ctx ends (nil) or the query says to stop (its reason); a query that
// failed is retried with backoff. query returns the answer's index, the
// reason to stop (nil to go on) and the error of the request.
func follow(ctx context.Context, query func(index uint64) (next uint64, stop, err error)) error {
	var index uint64
	retry := retryMin
	for {
		next, stop, err := query(index)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if !sleep(ctx, retry) {
				return nil
			}
			retry = backoff(retry)
			continue
		}
		if stop != nil {
			return stop
		}
		retry, index = retryMin, next
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// backoff doubles d within [retryMin, retryMax].
func backoff(d time.Duration) time.Duration {
	return min(max(2*d, retryMin), retryMax)
}

// closedCh is what Done returns when nothing is held: stop at once.
var closedCh = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// cleanupTimeout bounds the best-effort release after a cancelled acquire:
// the caller's context is over, the session's TTL ends the hold anyway.
func cleanupTimeout(s *Session) time.Duration {
	return min(s.ttl, 5*time.Second)
}
