package election

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/fsm"
)

// Remote writes to the registry from anywhere in the cluster: on a server it
// applies locally while it leads and otherwise goes straight to the leader;
// on a client it asks the leader that the last answer named when that is
// one of the servers it knows, else the next server in turn, which forwards
// to the leader (a leader hint saves that hop: half of a client's write
// cost was the follower's forwarding). It retries,
// until the context ends, what surely did not happen (no leader, not
// connected); a write whose fate is unknown is never sent twice.
type Remote struct {
	local   *Server
	servers func() []string
	rpc     *rpcClient
	next    atomic.Uint64
	timeout time.Duration
	// leader is the leader's address the last answer named (nil: none).
	leader atomic.Pointer[string]
	batch  batcher
	// unbatched holds the servers that answered that they take no batches
	// (an older version during an upgrade).
	unbatched sync.Map
	// fedBy names the server whose change stream feeds this client's copy
	// (nil: unknown).
	fedBy func() string
}

// FedBy tells the Remote which server feeds the client's copy, so that a
// write sent to that server says so: when it leads, the write's commit
// reaches the copy with the write itself and its nudge to the followers
// may wait (nudge.go). Call it before the first request.
func (r *Remote) FedBy(f func() string) { r.fedBy = f }

// NewRemote returns a Remote. local may be nil (a client); servers lists
// the RPC addresses of servers, for a client.
func NewRemote(local *Server, servers func() []string) *Remote {
	if servers == nil {
		servers = func() []string { return nil }
	}
	var sec TLS
	if local != nil {
		sec = local.cfg.TLS // a server forwards with its own certificate
	}
	return &Remote{local: local, servers: servers, rpc: newRPCClientTLS(sec), timeout: 5 * time.Second}
}

// UseTLS makes the Remote dial servers over TLS, wanting a server
// certificate; call it before the first request.
func (r *Remote) UseTLS(t TLS) { r.rpc = newRPCClientTLS(orNil(t)) }

// Close drops idle connections.
func (r *Remote) Close() { r.rpc.close() }

// target picks where a request goes: the leader when this is a server that
// knows it, else the next server in turn.
func (r *Remote) target() (addr string, forwarded bool, err error) {
	if r.local != nil {
		if _, a := r.local.Leader(); a != "" {
			return string(a), true, nil
		}
		return "", false, ErrNotLeader
	}
	list := r.servers()
	if len(list) == 0 {
		return "", false, fmt.Errorf("%w: no server known", ErrNotLeader)
	}
	// Only a server this client knows is taken from a hint: an answer
	// never sends it anywhere else. A stale hint costs nothing more than
	// no hint: the old leader forwards the request (it is not marked
	// forwarded) or answers that no leader is known.
	if l := r.leader.Load(); l != nil && slices.Contains(list, *l) {
		return *l, false, nil
	}
	return list[int(r.next.Add(1)%uint64(len(list)))], false, nil
}

// call is r.rpc.callStream that keeps the leader hint of the answer, and
// forgets the hint when the request was not answered (a leader gone).
func (r *Remote) call(ctx context.Context, addr, path string, body io.Reader, fwd bool) (rpcReply, error) {
	reply, err := r.rpc.callStream(ctx, addr, path, body, fwd)
	r.noteLeader(reply.leader, err)
	return reply, err
}

// noteLeader keeps the leader hint of an answer (leader, "" when none),
// and forgets the hint when the request was not answered.
func (r *Remote) noteLeader(leader string, err error) {
	if r.local != nil {
		return // a server knows the leader from Raft
	}
	switch {
	case leader != "":
		if l := r.leader.Load(); l == nil || *l != leader {
			r.leader.Store(&leader)
		}
	case err == nil || errors.Is(err, errNotSent) || errors.Is(err, ErrUnknownOutcome):
		r.leader.Store(nil)
	}
}

func retryable(err error) bool {
	return errors.Is(err, ErrNotLeader) || errors.Is(err, errNotSent) || errors.Is(err, ErrShutdown)
}

func (r *Remote) do(ctx context.Context, attempt func(ctx context.Context) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.timeout)
		defer cancel()
	}
	backoff := 5 * time.Millisecond
	for {
		err := attempt(ctx)
		if err == nil || !retryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (gave up: %v)", err, ctx.Err())
		case <-time.After(backoff):
		}
		// equivalent mutant: the backoff's cap is a tuning constant
		if backoff < 100*time.Millisecond {
			backoff *= 2
		}
	}
}

// Apply implements Backend.
func (r *Remote) Apply(ctx context.Context, cmd fsm.Command) (*fsm.Result, error) {
	data, err := fsm.Encode(cmd)
	if err != nil {
		return nil, err
	}
	var res *fsm.Result
	err = r.do(ctx, func(ctx context.Context) error {
		var err error
		if r.local != nil && r.local.IsLeader() {
			// This agent reads the leader's own registry.
			res, err = r.local.ApplyEncoded(withLeaderFed(ctx), data)
			return err
		}
		addr, fwd, err := r.target()
		if err != nil {
			return err
		}
		reply, err := r.applyTo(ctx, addr, fwd, data)
		if err != nil {
			return err
		}
		res, err = reply.result()
		return err
	})
	return res, err
}

// applyTo sends one write to addr, in a batch unless addr takes none.
func (r *Remote) applyTo(ctx context.Context, addr string, fwd bool, data []byte) (rpcReply, error) {
	if _, old := r.unbatched.Load(addr); !old {
		reply, err := r.applyBatched(ctx, addr, fwd, data)
		if !errors.Is(err, errBatchUnsupported) {
			return reply, err
		}
		r.unbatched.Store(addr, true)
	}
	return r.call(ctx, addr, rpcApply, bytes.NewReader(data), fwd)
}

// KeepAlive implements Backend.
func (r *Remote) KeepAlive(ctx context.Context, id string) (time.Duration, error) {
	var ttl time.Duration
	err := r.do(ctx, func(ctx context.Context) error {
		var err error
		if r.local != nil && r.local.IsLeader() {
			ttl, err = r.local.KeepAlive(ctx, id)
			return err
		}
		addr, fwd, err := r.target()
		if err != nil {
			return err
		}
		reply, err := r.call(ctx, addr, rpcKeepAlive+"?id="+id, nil, fwd)
		if err != nil {
			return err
		}
		ttl = time.Duration(reply.TTL)
		return decodeError(reply.Code, reply.Error)
	})
	return ttl, err
}

// ReadIndex returns an index that a local copy of the registry must reach to
// reflect every write acknowledged before the call.
func (r *Remote) ReadIndex(ctx context.Context) (uint64, error) {
	var idx uint64
	err := r.do(ctx, func(ctx context.Context) error {
		var err error
		if r.local != nil && r.local.IsLeader() {
			idx, err = r.local.readIndex(ctx)
			return err
		}
		addr, fwd, err := r.target()
		if err != nil {
			return err
		}
		reply, err := r.call(ctx, addr, rpcReadIndex, nil, fwd)
		if err != nil {
			return err
		}
		idx = reply.Index
		return decodeError(reply.Code, reply.Error)
	})
	return idx, err
}

// ConsistentRead waits until reg reflects every write acknowledged before
// the call.
func (r *Remote) ConsistentRead(ctx context.Context, reg *fsm.FSM) error {
	idx, err := r.ReadIndex(ctx)
	if err != nil {
		return err
	}
	for {
		ch := reg.Watch()
		if reg.Index() >= idx {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("local copy behind index %s: %w", strconv.FormatUint(idx, 10), ctx.Err())
		case <-ch:
		}
	}
}

// Restore replaces the cluster's registry with a snapshot, through the
// leader. The snapshot is checked here first, so a corrupt file is refused
// without a round trip.
func (r *Remote) Restore(ctx context.Context, data []byte) error {
	return r.RestoreFrom(ctx, bytes.NewReader(data))
}

// RestoreFrom restores the snapshot in rs (a file, for a user's restore),
// checked here first, then streamed to the leader.
func (r *Remote) RestoreFrom(ctx context.Context, rs io.ReadSeeker) error {
	if err := fsm.CheckSnapshot(rs); err != nil {
		return err
	}
	return r.do(ctx, func(ctx context.Context) error {
		if _, err := rs.Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("restore: rewind: %w", err)
		}
		if r.local != nil && r.local.IsLeader() {
			return r.local.RestoreSnapshot(ctx, rs)
		}
		addr, fwd, err := r.target()
		if err != nil {
			return err
		}
		reply, err := r.call(ctx, addr, rpcRestore, rs, fwd)
		if err != nil {
			return err
		}
		return decodeError(reply.Code, reply.Error)
	})
}

// ServerStatus asks a server for its view of Raft (what a client reports
// as the cluster's status).
func (r *Remote) ServerStatus(ctx context.Context) (api.Status, error) {
	addr, _, err := r.target()
	if err != nil {
		return api.Status{}, err
	}
	return r.rpc.status(ctx, addr)
}
