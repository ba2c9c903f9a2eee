package election

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/sidecarhq/sidecar/acl"
	"github.com/sidecarhq/sidecar/fsm"
)

// SafetyMargin is how much earlier than the lease's earliest possible expiry
// a sidecar stops trusting its hold: 2% of the TTL for clock-rate drift
// between this host and the leader, plus 5 ms for scheduling. The leader
// starts a deadline no earlier than it receives the keepalive, and the
// keepalive was sent before, so send time + TTL is a lower bound of expiry.
func SafetyMargin(ttl time.Duration) time.Duration {
	return ttl/50 + 5*time.Millisecond
}

// ErrSessionLost: the servers no longer know the session's lease.
var ErrSessionLost = errors.New("election: session lease lost")

// Session is a lease this sidecar keeps alive. It knows, from the send time
// of the last acknowledged keepalive, until when the lease is surely live on
// the servers: Live is false from that moment, strictly before any other
// holder can be granted what this session holds.
type Session struct {
	id  string
	ttl time.Duration
	l   *Local
	// caller is who asked for the session (nil: the sidecar itself), kept
	// in memory only: the lease is its token's, so its keepalives and
	// revoke go with that token. onNode marks the node session.
	caller *acl.Caller
	onNode bool

	mu         sync.Mutex
	validUntil time.Time
	changed    chan struct{}
	done       chan struct{}
	err        error

	cancel    context.CancelFunc
	loopDone  chan struct{}
	closeOnce sync.Once
}

// ID is the lease ID.
func (s *Session) ID() string { return s.id }

// TTL is the lease's time to live.
func (s *Session) TTL() time.Duration { return s.ttl }

// ValidUntil is the moment from which this sidecar no longer trusts the
// lease.
func (s *Session) ValidUntil() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.validUntil
}

// Live reports whether the lease is surely live now.
func (s *Session) Live() bool {
	return s.l.now().Before(s.ValidUntil())
}

// Changed returns a channel closed when ValidUntil moves or the session
// ends.
func (s *Session) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Done is closed when the session ends: closed, or its lease lost.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err says why the session ended.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *Session) acked(sent time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if until := sent.Add(s.ttl - SafetyMargin(s.ttl)); until.After(s.validUntil) {
		s.validUntil = until
		close(s.changed)
		s.changed = make(chan struct{})
	}
}

func (s *Session) end(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.done:
		return
	default:
	}
	s.err = err
	s.validUntil = time.Time{}
	close(s.done)
	close(s.changed)
	s.changed = make(chan struct{})
}

// keepAlive sends keepalives every third of the TTL, and retries failures
// faster, until the session ends.
func (s *Session) keepAlive(ctx context.Context) {
	defer close(s.loopDone)
	interval := s.ttl / 3
	retry := s.ttl / 10
	// equivalent mutant: at exactly 20 ms either way retries every 20 ms
	if retry < 20*time.Millisecond {
		retry = 20 * time.Millisecond
	}
	next := interval
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(next):
		}
		sent := s.l.now()
		kctx, cancel := context.WithTimeout(acl.NewContext(ctx, s.caller), interval)
		_, err := s.l.backend.KeepAlive(kctx, s.id)
		cancel()
		switch {
		case err == nil:
			s.acked(sent)
			next = interval
		case errors.Is(err, fsm.ErrUnknownLease):
			s.l.log.Warn("session lease lost", "lease", s.id)
			s.end(ErrSessionLost)
			return
		default:
			if ctx.Err() != nil {
				return
			}
			s.l.log.Debug("keepalive failed", "lease", s.id, "err", err)
			next = retry
		}
	}
}

// Close stops the keepalives and revokes the lease, which releases every
// lock and resigns every candidacy on it in one Raft entry. Safe twice.
func (s *Session) Close(ctx context.Context) error {
	return s.shut(func() error { return s.l.revokeRetrying(acl.NewContext(ctx, s.caller), s.id) })
}

// shut stops the keepalives, revokes the lease with revoke (nil: revoked
// already) unless it was lost, and ends the session. Once.
func (s *Session) shut(revoke func() error) error {
	var err error
	s.closeOnce.Do(func() {
		s.cancel()
		<-s.loopDone
		s.l.forgetSession(s)
		select {
		case <-s.done:
			// Lost already: nothing to revoke.
		default:
			if revoke != nil {
				err = revoke()
			}
			s.end(errors.New("election: session closed"))
		}
	})
	return err
}

// revokeRetrying revokes a lease, retrying through a leader change until
// ctx ends.
func (l *Local) revokeRetrying(ctx context.Context, id string) error {
	for {
		err := l.revoke(ctx, id)
		if err == nil || !(errors.Is(err, ErrNotLeader) || errors.Is(err, ErrUnknownOutcome)) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(20 * time.Millisecond):
		}
	}
}
