package concurrency

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sidecarhq/sidecar/api"
)

// DefaultTTL is a session's lease TTL unless WithTTL says otherwise: long
// enough that a busy host's pauses do not cost the hold, short enough that
// a dead application's locks pass on within seconds.
const DefaultTTL = 10 * time.Second

// MinTTL is the servers' minimum lease TTL (SPEC "Leases").
const MinTTL = time.Second

// Why a session's Done closed (Err).
var (
	// ErrSessionExpired: no keepalive was acknowledged in time, so the
	// lease may expire on the servers any moment; the session demoted
	// itself first.
	ErrSessionExpired = errors.New("concurrency: session expired (self-demoted)")
	// ErrLeaseLost: the servers no longer know the lease (a keepalive was
	// answered 404): it expired or was revoked.
	ErrLeaseLost = errors.New("concurrency: session lease lost")
	// ErrSessionClosed: Close was called.
	ErrSessionClosed = errors.New("concurrency: session closed")
)

// SafetyMargin is how much earlier than the lease's earliest possible expiry
// a session stops trusting it: a tenth of the TTL for clock-rate drift
// between this host and the Raft leader (whose clock times the TTL), plus
// 100 ms for the scheduling of this process and of its sidecar. It is wider
// than the sidecar's own margin because an application sits one more hop
// (and one more scheduler) away from the lease. The bound it protects: the
// leader starts the lease's deadline no earlier than it receives a
// keepalive, and the keepalive was sent after the time the session noted,
// so send time + TTL is a lower bound of the lease's expiry.
func SafetyMargin(ttl time.Duration) time.Duration {
	return ttl/10 + 100*time.Millisecond
}

// SessionOption configures NewSession.
type SessionOption func(*sessionConfig)

type sessionConfig struct {
	ttl time.Duration
}

// WithTTL sets the lease's TTL (at least MinTTL; default DefaultTTL).
func WithTTL(ttl time.Duration) SessionOption {
	return func(c *sessionConfig) { c.ttl = ttl }
}

// Session is a lease the application keeps alive through its sidecar. Locks
// and candidacies taken through a session hang on its lease: they end when
// it is revoked (Close) or expires. It is safe for concurrent use.
type Session struct {
	client *api.Client
	id     string
	ttl    time.Duration
	margin time.Duration

	mu         sync.Mutex
	validUntil time.Time
	demote     *time.Timer // fires at validUntil
	done       chan struct{}
	err        error

	cancel    context.CancelFunc
	loopDone  chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// NewSession grants a lease through client and keeps it alive (a keepalive
// every third of the TTL, retried faster after a failure) until Close or
// until the session can no longer be trusted.
func NewSession(ctx context.Context, client *api.Client, opts ...SessionOption) (*Session, error) {
	cfg := sessionConfig{ttl: DefaultTTL}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.ttl < MinTTL {
		return nil, fmt.Errorf("concurrency: session TTL %v is below the minimum %v", cfg.ttl, MinTTL)
	}
	// The send time is taken before the request: the lease cannot start
	// before it, so it cannot expire before sent + TTL.
	sent := time.Now()
	l, err := client.GrantLease(ctx, cfg.ttl)
	if err != nil {
		return nil, fmt.Errorf("concurrency: grant session lease: %w", err)
	}
	ttl := cfg.ttl
	if d, err := time.ParseDuration(l.TTL); err == nil && d > 0 {
		// The servers' word: the TTL they time.
		ttl = d
	}
	s := &Session{
		client:   client,
		id:       l.ID,
		ttl:      ttl,
		margin:   SafetyMargin(ttl),
		done:     make(chan struct{}),
		loopDone: make(chan struct{}),
	}
	s.mu.Lock()
	s.validUntil = sent.Add(ttl - s.margin)
	s.demote = time.AfterFunc(time.Until(s.validUntil), s.expire)
	s.mu.Unlock()
	kctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.keepAlive(kctx)
	return s, nil
}

// Lease is the ID of the session's lease.
func (s *Session) Lease() string { return s.id }

// TTL is the lease's time to live.
func (s *Session) TTL() time.Duration { return s.ttl }

// Client is the client the session talks through.
func (s *Session) Client() *api.Client { return s.client }

// Done is closed when the session can no longer be trusted: its
// self-demotion deadline passed without an acknowledged keepalive, the
// lease was lost, or Close was called. It never reopens: start a new
// session to hold again.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err says why Done closed (ErrSessionExpired, ErrLeaseLost or
// ErrSessionClosed); nil while the session is live.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// ValidUntil is the moment from which the session no longer trusts its
// lease, unless a keepalive is acknowledged before: the send time of the
// last acknowledged keepalive plus the TTL, less SafetyMargin.
func (s *Session) ValidUntil() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.validUntil
}

// acked moves the deadline on after a keepalive sent at sent was
// acknowledged.
func (s *Session) acked(sent time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	until := sent.Add(s.ttl - s.margin)
	if !until.After(s.validUntil) {
		return
	}
	s.validUntil = until
	s.demote.Reset(time.Until(until))
}

// expire runs when the demotion timer fires; a stale firing (the deadline
// moved meanwhile) does nothing.
func (s *Session) expire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Now().Before(s.validUntil) {
		return
	}
	s.endLocked(ErrSessionExpired)
}

func (s *Session) end(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.endLocked(err)
}

func (s *Session) endLocked(err error) {
	if s.err != nil {
		return
	}
	s.err = err
	s.demote.Stop()
	close(s.done)
}

// keepAlive renews the lease every third of the TTL, so that two keepalives
// may fail before the session demotes itself, and retries a failed one
// after a tenth of the TTL. It stops when the session ends.
func (s *Session) keepAlive(ctx context.Context) {
	defer close(s.loopDone)
	interval := s.ttl / 3
	retry := max(s.ttl/10, 50*time.Millisecond)
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.done:
			return
		case <-t.C:
		}
		sent := time.Now()
		// An answer after the deadline would come too late to matter:
		// the session has demoted itself by then.
		kctx, cancel := context.WithDeadline(ctx, s.ValidUntil())
		_, err := s.client.KeepAlive(kctx, s.id)
		cancel()
		switch {
		case err == nil:
			s.acked(sent)
			t.Reset(interval)
		case api.IsNotFound(err):
			s.end(ErrLeaseLost)
			return
		default:
			if ctx.Err() != nil {
				return
			}
			t.Reset(retry)
		}
	}
}

// Close stops the keepalives and revokes the lease, which releases every
// lock and resigns every candidacy on it in one Raft entry, so the next in
// line need not wait for the TTL. A lease already lost is not an error.
// Safe to call more than once; later calls return the first one's error.
func (s *Session) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.cancel()
		<-s.loopDone
		lost := errors.Is(s.Err(), ErrLeaseLost)
		s.end(ErrSessionClosed)
		if lost {
			return
		}
		// Revoked even after a self-demotion: the lease may still be live
		// on the servers, holding what others wait for.
		if err := s.client.RevokeLease(ctx, s.id); err != nil && !api.IsNotFound(err) {
			s.closeErr = fmt.Errorf("concurrency: revoke session lease %s: %w", s.id, err)
		}
	})
	return s.closeErr
}

// bind returns a context that ends with ctx or when the session ends,
// whichever first; context.Cause then names the session's end. Call cancel
// when done with it: that also ends the goroutine watching the session.
func (s *Session) bind(ctx context.Context) (context.Context, context.CancelFunc) {
	cctx, cancel := context.WithCancelCause(ctx)
	go func() {
		select {
		case <-s.done:
			cancel(s.Err())
		case <-cctx.Done():
		}
	}()
	return cctx, func() { cancel(context.Canceled) }
}
