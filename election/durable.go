package election

import (
	"io"

	"github.com/hashicorp/raft"
)

// A leader's Raft log write overlaps its replication: hashicorp/raft sends
// entries to the followers only after the leader's log store returns, so
// with the fdatasync inside the store the leader's disk and the followers'
// took turns on every write. The store now returns once the entries are
// written and syncs them in the background (raftlog.Store.DeferSyncWhile),
// and Raft counts the leader's copy toward a commit before it is on disk.
// Two things keep every effect of a commit behind a majority of disks, as
// before: the leader applies an entry (and so answers it and streams it)
// only once it is synced here (recordingFSM.durable), and followers learn
// of a commit only up to what is synced here (commitClampTransport), so no
// follower applies an entry a power loss on the leader could take back.
// Configuration entries are synced before they are sent at all.

// commitClampTransport sends followers a commit index no greater than the
// last entry on this server's disk.
type commitClampTransport struct {
	raft.Transport
	durable func() uint64
}

// commitClampPreVoteTransport is commitClampTransport over a transport with
// pre-vote: Raft uses pre-vote only when its transport has it.
type commitClampPreVoteTransport struct {
	*commitClampTransport
	raft.WithPreVote
}

func newCommitClampTransport(t raft.Transport, durable func() uint64) raft.Transport {
	ct := &commitClampTransport{Transport: t, durable: durable}
	if pv, ok := t.(raft.WithPreVote); ok {
		return commitClampPreVoteTransport{commitClampTransport: ct, WithPreVote: pv}
	}
	return ct
}

func (t *commitClampTransport) clamp(req *raft.AppendEntriesRequest) {
	// equivalent mutant: clamping an index equal to durable changes nothing
	if d := t.durable(); req.LeaderCommitIndex > d {
		req.LeaderCommitIndex = d
	}
}

func (t *commitClampTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, req *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	t.clamp(req)
	return t.Transport.AppendEntries(id, target, req, resp)
}

func (t *commitClampTransport) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	p, err := t.Transport.AppendEntriesPipeline(id, target)
	if err != nil {
		return nil, err
	}
	return clampPipeline{AppendPipeline: p, t: t}, nil
}

// Close closes the transport under it (Raft's Shutdown closes a transport
// that can be closed).
func (t *commitClampTransport) Close() error {
	if c, ok := t.Transport.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

type clampPipeline struct {
	raft.AppendPipeline
	t *commitClampTransport
}

func (p clampPipeline) AppendEntries(req *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) (raft.AppendFuture, error) {
	p.t.clamp(req)
	return p.AppendPipeline.AppendEntries(req, resp)
}
