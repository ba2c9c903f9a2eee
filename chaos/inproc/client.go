package inproc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sidecarhq/sidecar/chaos/checker"
	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/fsm"
)

// backend is how a client's sidecar reaches the Raft leader: through its
// home server, which knows the leader, over the network. It retries only
// what surely did nothing (no leader known, request lost, not the leader);
// a lost answer makes the outcome unknown. It also tells the recorder of
// every lease granted, kept alive and revoked.
type backend struct {
	c    *Cluster
	home int
	rec  *checker.Recorder
	// readVia is the server consistent reads go to (-1: ask home); only
	// the client's goroutine touches it.
	readVia int
}

var (
	_ election.Backend     = (*backend)(nil)
	_ election.ReadIndexer = (*backend)(nil)
)

// errDown: the home server is down; nothing was sent.
var errDown = fmt.Errorf("%w: home server down", election.ErrNotLeader)

// leader returns the leader the home server knows, once the request to it
// crossed the network.
func (b *backend) leader() (*election.Server, int, error) {
	home, _ := b.c.Server(b.home)
	if home == nil {
		return nil, -1, errDown
	}
	name, _ := home.Leader()
	j := b.c.Index(name)
	if j < 0 {
		return nil, -1, election.ErrNotLeader
	}
	s, _ := b.c.Server(j)
	if s == nil || !b.c.net.Deliver(b.c.Name(b.home), name) {
		return nil, -1, fmt.Errorf("%w: leader %s unreachable", election.ErrNotLeader, name)
	}
	return s, j, nil
}

func (b *backend) retry(ctx context.Context, err error) error {
	select {
	case <-ctx.Done():
		return fmt.Errorf("%w: %v (%v)", election.ErrNotLeader, err, ctx.Err())
	case <-time.After(10 * time.Millisecond):
		return nil
	}
}

func (b *backend) Apply(ctx context.Context, cmd fsm.Command) (*fsm.Result, error) {
	invoke := b.rec.Now()
	switch c := cmd.(type) {
	case *fsm.RevokeLease:
		b.rec.Revoking(c.ID)
	}
	for {
		s, j, err := b.leader()
		if err == nil {
			var res *fsm.Result
			res, err = s.Apply(ctx, cmd)
			if !errors.Is(err, election.ErrNotLeader) {
				if !b.c.net.Deliver(b.c.Name(j), b.c.Name(b.home)) {
					return nil, fmt.Errorf("%w: answer lost", election.ErrUnknownOutcome)
				}
				if errors.Is(err, election.ErrShutdown) {
					return nil, fmt.Errorf("%w: %v", election.ErrUnknownOutcome, err)
				}
				if g, ok := cmd.(*fsm.GrantLease); ok && err == nil {
					b.rec.LeaseGranted(res.LeaseID, time.Duration(g.TTL), invoke)
				}
				return res, err
			}
		}
		if rerr := b.retry(ctx, err); rerr != nil {
			return nil, rerr
		}
	}
}

func (b *backend) KeepAlive(ctx context.Context, id string) (time.Duration, error) {
	sent := b.rec.Now()
	for {
		s, j, err := b.leader()
		if err == nil {
			var ttl time.Duration
			ttl, err = s.KeepAlive(ctx, id)
			if !errors.Is(err, election.ErrNotLeader) {
				if !b.c.net.Deliver(b.c.Name(j), b.c.Name(b.home)) {
					return 0, fmt.Errorf("keepalive answer lost: %w", errUnreachable)
				}
				if err == nil {
					b.rec.KeepAliveAcked(id, sent)
				}
				return ttl, err
			}
		}
		if rerr := b.retry(ctx, err); rerr != nil {
			return 0, rerr
		}
	}
}

// ReadIndex implements election.ReadIndexer for fence checks: the leader,
// reached through the home server across the network, confirms its
// leadership with a quorum and answers its registry's index.
func (b *backend) ReadIndex(ctx context.Context) (uint64, error) {
	s, j, err := b.leader()
	if err != nil {
		return 0, err
	}
	if err := s.ConsistentRead(ctx); err != nil {
		return 0, err
	}
	idx := s.FSM().Index()
	if !b.c.net.Deliver(b.c.Name(j), b.c.Name(b.home)) {
		return 0, fmt.Errorf("%w: read index answer lost", election.ErrUnknownOutcome)
	}
	return idx, nil
}

// consistentRead makes the home server's registry reflect every write
// acknowledged before the call. It asks the home server, then, if that one
// does not lead, does what an agent does with a read index: it asks the
// server it last saw lead to confirm leadership (Server.ConsistentRead)
// and report its applied index, then waits for the home server to apply
// that far. Like a client library, it keeps asking the same server until
// that one says it no longer leads: Server.ConsistentRead must say so.
func (b *backend) consistentRead(ctx context.Context) (*fsm.FSM, error) {
	home, _ := b.c.Server(b.home)
	if home == nil {
		return nil, errDown
	}
	// The home server first: Server.ConsistentRead must refuse unless it
	// leads (the agent guards it with IsLeader too; this tests the
	// contract itself).
	if err := home.ConsistentRead(ctx); err == nil {
		return home.FSM(), nil
	} else if !errors.Is(err, election.ErrNotLeader) {
		return nil, err
	}
	if b.readVia < 0 {
		name, _ := home.Leader()
		if b.readVia = b.c.Index(name); b.readVia < 0 {
			return nil, election.ErrNotLeader
		}
	}
	j := b.readVia
	s, _ := b.c.Server(j)
	if s == nil || !b.c.net.Deliver(b.c.Name(b.home), b.c.Name(j)) {
		b.readVia = -1
		return nil, fmt.Errorf("%w: %s unreachable", election.ErrNotLeader, b.c.Name(j))
	}
	if err := s.ConsistentRead(ctx); err != nil {
		b.readVia = -1
		return nil, err
	}
	idx := s.FSM().Index()
	if !b.c.net.Deliver(b.c.Name(j), b.c.Name(b.home)) {
		b.readVia = -1
		return nil, fmt.Errorf("read index answer: %w", errUnreachable)
	}
	reg := home.FSM()
	for {
		ch := reg.Watch()
		if reg.Index() >= idx {
			return reg, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-ch:
		}
	}
}

// outcome classifies a write's error: nil or a registry refusal is a
// definite answer, not-the-leader surely did nothing, anything else may or
// may not have been applied.
func outcome(err error) checker.Outcome {
	switch {
	case err == nil:
		return checker.OK
	case errors.Is(err, election.ErrNotLeader):
		return checker.Failed
	case isRegistryError(err):
		return checker.OK
	}
	return checker.Unknown
}

func isRegistryError(err error) bool {
	for _, e := range []error{fsm.ErrInvalid, fsm.ErrUnknownNode, fsm.ErrUnknownInstance, fsm.ErrUnknownLease,
		fsm.ErrUnknownLock, fsm.ErrUnknownElection, fsm.ErrNotHolder, fsm.ErrNotCandidate} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
