package concurrency

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/sidecarhq/sidecar/api"
)

// Election campaigns in one election on a session's lease, and observes
// it. It is safe for concurrent use.
type Election struct {
	s    *Session
	name string
}

// NewElection returns an Election for name on s's lease.
func NewElection(s *Session, name string) *Election {
	return &Election{s: s, name: name}
}

// Name is the election's name.
func (e *Election) Name() string { return e.name }

// Campaign enters candidate with value (what followers and DNS see, e.g.
// host:port) on the session's lease, and blocks until it leads, ctx ends
// or the session ends. The agent does the waiting (the campaign's wait, woken
// by the registry), so a waiting candidate costs one request every few
// minutes. A Campaign that ends without leading resigns the candidate, so
// that an abandoned campaign never leads later with nobody to act.
func (e *Election) Campaign(ctx context.Context, candidate, value string) (*Leadership, error) {
	bctx, cancel := e.s.bind(ctx)
	defer cancel()
	req := api.CampaignRequest{Candidate: candidate, Value: value, Lease: e.s.Lease(), Wait: acquireWait.String()}
	for {
		res, err := e.s.client.Campaign(bctx, e.name, req)
		if bctx.Err() != nil {
			e.abandon(ctx, candidate)
			return nil, fmt.Errorf("concurrency: campaign %q as %q: %w", e.name, candidate, context.Cause(bctx))
		}
		if err != nil {
			return nil, fmt.Errorf("concurrency: campaign %q as %q: %w", e.name, candidate, err)
		}
		if res.Leader {
			l := &Leadership{e: e, candidate: candidate, value: value}
			l.h = startHold(e.s, res.Token, l.watch)
			return l, nil
		}
		// Still waiting after the agent's wait: campaign again (the same
		// candidate; the registry keeps its place).
	}
}

// abandon resigns a candidate whose campaign gave up; best effort, with a
// context of its own since ctx is over.
func (e *Election) abandon(ctx context.Context, candidate string) {
	select {
	case <-e.s.Done():
		return // the lease is gone or going, and the candidacy with it
	default:
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout(e.s))
	defer cancel()
	_ = e.s.client.Resign(cctx, e.name, candidate)
}

// Leader returns the election's current leader, nil when vacant.
func (e *Election) Leader(ctx context.Context) (*api.Holder, error) {
	info, _, err := e.s.client.Election(ctx, e.name, nil)
	if err != nil {
		return nil, fmt.Errorf("concurrency: leader of %q: %w", e.name, err)
	}
	return info.Leader, nil
}

// Observe returns a channel of the election's leaders, one value per change
// of leader (a new candidate or a new token), starting with the current one
// if there is one. A vacancy after a leader is sent as the zero Holder
// (Token 0). It follows the registry with blocking queries on
// GET /v1/elections/{name}, retrying failures with a backoff, and closes
// the channel when ctx ends. Values are not dropped: a slow reader slows
// the observer, and sees every leader it reads in order.
func (e *Election) Observe(ctx context.Context) <-chan api.Holder {
	ch := make(chan api.Holder)
	go func() {
		defer close(ch)
		var last api.Holder
		follow(ctx, func(index uint64) (uint64, error, error) {
			info, meta, err := e.s.client.Election(ctx, e.name, &api.QueryOptions{Index: index, Wait: watchWait})
			if err != nil {
				return 0, nil, err
			}
			var cur api.Holder
			if info.Leader != nil {
				cur = *info.Leader
			}
			if cur.Candidate != last.Candidate || cur.Token != last.Token {
				select {
				case ch <- cur:
					last = cur
				case <-ctx.Done():
				}
			}
			return meta.Index, nil, nil
		})
	}()
	return ch
}

// Leadership is one term of a candidate as leader, from Campaign. Its
// methods are safe for concurrent use.
type Leadership struct {
	e         *Election
	candidate string
	value     string
	h         *hold
}

// Candidate is the leading candidate's ID.
func (l *Leadership) Candidate() string { return l.candidate }

// Token is the term's fencing token, strictly greater than every token
// handed out before for this election.
func (l *Leadership) Token() uint64 { return l.h.token }

// Done is closed at self-demotion: the session's Done (its lease can no
// longer be trusted), the agent no longer reporting this candidate as
// leader with this token (another leads, or the agent itself is not sure
// of the lease), Resign or TransferTo. Stop acting as leader when it
// closes.
func (l *Leadership) Done() <-chan struct{} { return l.h.done }

// Err says why Done closed: ErrLost, ErrReleased or the session's reason;
// nil while leading.
func (l *Leadership) Err() error { return l.h.Err() }

// watch follows GET /v1/elections/{name}/self with blocking queries: the
// agent answers at once when its answer flips, including when its own view
// of the lease runs out, so this catches what the registry shows and what
// the agent fears.
func (l *Leadership) watch(ctx context.Context, h *hold) error {
	return follow(ctx, func(index uint64) (uint64, error, error) {
		st, meta, err := l.e.s.client.Self(ctx, l.e.name, &api.QueryOptions{Index: index, Wait: watchWait})
		if err != nil {
			return 0, nil, err
		}
		if !st.Leader || st.Candidate != l.candidate || st.Token != h.token {
			return 0, ErrLost, nil
		}
		return meta.Index, nil, nil
	})
}

// Resign ends the term: Done closes first, then the candidate withdraws
// (DELETE /v1/elections/{name}/campaign), so the next candidate can lead
// within one Raft commit. A candidate already gone (its lease ended, or a
// retried Resign) is not an error.
func (l *Leadership) Resign(ctx context.Context) error {
	l.h.stop(ErrReleased)
	err := l.e.s.client.Resign(ctx, l.e.name, l.candidate)
	var se *api.StatusError
	if errors.As(err, &se) && (se.Code == http.StatusConflict || se.Code == http.StatusNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("concurrency: resign %q as %q: %w", l.e.name, l.candidate, err)
	}
	return nil
}

// TransferTo hands leadership to the waiting candidate to in one Raft
// entry, with a greater token (PUT /v1/elections/{name}/transfer): a planned
// handover without a vacancy. Done closes before the request is sent, so
// this term has stopped acting before the next can begin; it stays closed
// even if the transfer fails (409 when to is not waiting, or this term is
// over already), in which case the candidate may still lead in the
// registry: Resign it, or Campaign again.
func (l *Leadership) TransferTo(ctx context.Context, to string) error {
	l.h.stop(ErrReleased)
	if _, err := l.e.s.client.Transfer(ctx, l.e.name, l.candidate, to); err != nil {
		return fmt.Errorf("concurrency: transfer %q from %q to %q: %w", l.e.name, l.candidate, to, err)
	}
	return nil
}

// Fence asks the servers whether this term's token is still the live
// leader's, confirmed with a quorum; see the package function Fence.
func (l *Leadership) Fence(ctx context.Context) (current bool, currentToken uint64, err error) {
	return Fence(ctx, l.e.s.client, KindElection, l.e.name, l.h.token)
}
