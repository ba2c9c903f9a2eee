package election

import (
	"bytes"
	"context"
	"time"

	"github.com/sidecarhq/sidecar/fsm"
)

// BatchEntry is one write of a hand-made batch: its command and the secret
// it carries ("" for none).
type BatchEntry struct {
	Secret string
	Cmd    fsm.Command
}

// SendBatch sends entries to addr as one batch over r's connections (its
// certificate, if any), as a client would, and returns each entry's
// result.
func (r *Remote) SendBatch(ctx context.Context, addr string, entries []BatchEntry) ([]*fsm.Result, []error, error) {
	batch := make([]*batchEntry, len(entries))
	for i, e := range entries {
		data, err := fsm.Encode(e.Cmd)
		if err != nil {
			return nil, nil, err
		}
		batch[i] = &batchEntry{data: data, secret: e.Secret}
	}
	replies, _, err := r.rpc.callBatch(ctx, addr, encodeBatch(batch), len(batch), false, false)
	if err != nil {
		return nil, nil, err
	}
	res := make([]*fsm.Result, len(replies))
	errs := make([]error, len(replies))
	for i, rep := range replies {
		res[i], errs[i] = rep.result()
	}
	return res, errs, nil
}

// MaxBatchBody is the most a server reads of one batch.
const MaxBatchBody = maxBatchBody

// PostBatch sends body as a batch to addr over r's connections and returns
// the answer's status.
func (r *Remote) PostBatch(ctx context.Context, addr string, body []byte) (int, error) {
	_, resp, err := r.rpc.post(ctx, addr, rpcApplyBatch, bytes.NewReader(body), false)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// PostRestore sends body to addr as a restore, without the check a
// Remote makes of a snapshot before it sends one, and returns the answer.
func (r *Remote) PostRestore(ctx context.Context, addr string, body []byte) error {
	reply, err := r.rpc.callStream(ctx, addr, rpcRestore, bytes.NewReader(body), false)
	if err != nil {
		return err
	}
	return decodeError(reply.Code, reply.Error)
}

// SetNudgeHold sets how long a leader-fed writer's nudge is held back.
func SetNudgeHold(c *ServerConfig, d time.Duration) { c.nudgeHold = d }

// LeaseTrackerReady is closed once this term's lease tracker leads (its
// term-start barrier applied, its nudge asked for).
func (s *Server) LeaseTrackerReady() <-chan struct{} {
	s.leases.mu.Lock()
	defer s.leases.mu.Unlock()
	return s.leases.ready
}
