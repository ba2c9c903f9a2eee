package election

import (
	"errors"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/sidecarhq/sidecar/fsm"
)

// The leader applies an entry only once it is on its own disk: before,
// the registry does not hold it (nothing is answered or streamed); an
// entry the disk could not take halts the registry before it.
func TestRecordingFSM_appliesOnlyWhatIsDurable(t *testing.T) {
	durableTo := make(chan uint64, 1)
	failed := errors.New("fdatasync: input/output error")
	var waited []uint64
	r := &recordingFSM{FSM: fsm.New(), log: newChangeLog(16), durable: func(i uint64) error {
		waited = append(waited, i)
		if d := <-durableTo; d < i {
			return failed
		}
		return nil
	}}
	entry := func(i uint64, name string) *raft.Log {
		data, err := fsm.Encode(&fsm.RegisterNode{Name: name, Address: "10.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		return &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: data}
	}
	durableTo <- 1
	r.Apply(entry(1, "n1"))
	if r.FSM.Index() != 1 || len(waited) != 1 || waited[0] != 1 {
		t.Fatalf("index %d after entry 1, waited for %v", r.FSM.Index(), waited)
	}
	durableTo <- 1 // the sync of entry 2 failed
	res, _ := r.Apply(entry(2, "n2")).(*fsm.Result)
	if res == nil || !errors.Is(res.Err, fsm.ErrHalted) || !errors.Is(res.Err, failed) {
		t.Fatalf("entry 2 whose sync failed: %+v", res)
	}
	if r.FSM.Index() != 1 || r.FSM.Err() == nil {
		t.Fatalf("the registry applied an entry that is not on disk: index %d, halted: %v", r.FSM.Index(), r.FSM.Err())
	}
	if out, _, _ := r.log.since(0); len(out) != 1 {
		t.Fatalf("%d entries streamed, want 1", len(out))
	}
	select {
	case <-r.FSM.Halted():
	default:
		t.Fatal("Halted not closed")
	}
}

type appendRecorder struct {
	raft.Transport
	sent []uint64
}

func (a *appendRecorder) AppendEntries(_ raft.ServerID, _ raft.ServerAddress, req *raft.AppendEntriesRequest, _ *raft.AppendEntriesResponse) error {
	a.sent = append(a.sent, req.LeaderCommitIndex)
	return nil
}

func (a *appendRecorder) AppendEntriesPipeline(raft.ServerID, raft.ServerAddress) (raft.AppendPipeline, error) {
	return pipelineRecorder{a}, nil
}

type pipelineRecorder struct{ a *appendRecorder }

func (p pipelineRecorder) AppendEntries(req *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) (raft.AppendFuture, error) {
	p.a.sent = append(p.a.sent, req.LeaderCommitIndex)
	return nil, nil
}
func (pipelineRecorder) Consumer() <-chan raft.AppendFuture { return nil }
func (pipelineRecorder) Close() error                       { return nil }

type preVoteRecorder struct{ *appendRecorder }

func (preVoteRecorder) RequestPreVote(raft.ServerID, raft.ServerAddress, *raft.RequestPreVoteRequest, *raft.RequestPreVoteResponse) error {
	return nil
}

// Followers learn of a commit only as far as the leader's disk holds the
// log, on both of Raft's ways to send entries; pre-vote stays available
// exactly when the transport under it has it.
func TestCommitClampTransport_followersLearnOnlyDurableCommits(t *testing.T) {
	_, inmem := raft.NewInmemTransport("a")
	rec := &appendRecorder{Transport: inmem}
	durable := uint64(7)
	tr := newCommitClampTransport(rec, func() uint64 { return durable })
	if _, ok := tr.(raft.WithPreVote); ok {
		t.Fatal("pre-vote offered over a transport without it")
	}
	for _, commit := range []uint64{5, 7, 9} {
		if err := tr.AppendEntries("b", "b", &raft.AppendEntriesRequest{LeaderCommitIndex: commit}, &raft.AppendEntriesResponse{}); err != nil {
			t.Fatal(err)
		}
	}
	p, err := tr.AppendEntriesPipeline("b", "b")
	if err != nil {
		t.Fatal(err)
	}
	durable = 8
	for _, commit := range []uint64{9, 3} {
		if _, err := p.AppendEntries(&raft.AppendEntriesRequest{LeaderCommitIndex: commit}, &raft.AppendEntriesResponse{}); err != nil {
			t.Fatal(err)
		}
	}
	want := []uint64{5, 7, 7, 8, 3}
	if len(rec.sent) != len(want) {
		t.Fatalf("sent %v, want %v", rec.sent, want)
	}
	for i := range want {
		if rec.sent[i] != want[i] {
			t.Fatalf("sent commit indexes %v, want %v", rec.sent, want)
		}
	}
	if _, ok := newCommitClampTransport(preVoteRecorder{rec}, func() uint64 { return 0 }).(raft.WithPreVote); !ok {
		t.Fatal("pre-vote lost over a transport that has it")
	}
}
