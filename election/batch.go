package election

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/sidecarhq/sidecar/acl"
)

// Writes on their way to a server travel in batches: those a client (or a
// follower) sends to the same server while earlier ones are still out go
// together in one RPC and are answered entry by entry. Each entry carries
// its caller's token and deadline and is checked and applied as if it came
// alone (its own Raft entry, so its own index and fencing token); only the
// HTTP exchange is shared. Why: through a client agent that exchange was a
// sixth of a write's CPU (two loopback writes and reads and the parsing on
// both ends), and Raft batches the entries on the leader anyway.

const (
	rpcApplyBatch = "/rpc/v1/apply-batch"
	// batchInFlight is how many batches may be out to one server at once:
	// a lone write never waits, and while that many are out the next ones
	// gather behind them.
	batchInFlight = 4
	// batchMaxEntries and batchMaxBytes bound what one batch takes from the
	// queue (an entry bigger than batchMaxBytes goes alone).
	batchMaxEntries = 256
	batchMaxBytes   = 1 << 20
	// A server reads at most this much of one batch: the entries the limits
	// above allow, or one entry of the size a single apply may have.
	maxBatchBody    = 8 << 20
	maxBatchEntries = 1024
	maxEntryData    = 4 << 20
)

// batchEntry is one caller's write in a batch.
type batchEntry struct {
	data   []byte
	secret string
	// timeout is what the caller had left to wait when it was sent, in
	// milliseconds: the server bounds this entry's apply by it.
	timeout  uint32
	deadline time.Time

	lead chan struct{} // this caller is to send the next batch
	done chan struct{} // closed once reply and err are set
	sent bool          // taken into a batch (under batcher.mu)

	reply rpcReply
	err   error
}

// encodeBatch is the request body: a count, then per entry its timeout,
// its secret and its data, each length-prefixed (big-endian).
func encodeBatch(entries []*batchEntry) []byte {
	size := 4
	for _, e := range entries {
		// equivalent mutant: a capacity only saves copies
		size += 4 + 2 + len(e.secret) + 4 + len(e.data)
	}
	b := make([]byte, 0, size)
	b = binary.BigEndian.AppendUint32(b, uint32(len(entries)))
	for _, e := range entries {
		b = binary.BigEndian.AppendUint32(b, e.timeout)
		b = binary.BigEndian.AppendUint16(b, uint16(len(e.secret)))
		b = append(b, e.secret...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(e.data)))
		b = append(b, e.data...)
	}
	return b
}

var errBatchFormat = errors.New("malformed batch")

// decodeBatch reads a request body; the entries' data and secrets alias b.
func decodeBatch(b []byte) ([]batchEntry, error) {
	// equivalent mutant: 4 bytes hold a count and no entry, refused below
	if len(b) < 4 {
		return nil, fmt.Errorf("%w: %d bytes, no count", errBatchFormat, len(b))
	}
	n := binary.BigEndian.Uint32(b)
	if n == 0 || n > maxBatchEntries {
		return nil, fmt.Errorf("%w: %d entries, want 1 to %d", errBatchFormat, n, maxBatchEntries)
	}
	b = b[4:]
	entries := make([]batchEntry, n)
	for i := range entries {
		// equivalent mutant: 6 bytes hold an entry's header and not its data length, refused below
		if len(b) < 6 {
			return nil, fmt.Errorf("%w: entry %d cut short", errBatchFormat, i)
		}
		entries[i].timeout = binary.BigEndian.Uint32(b)
		ls := int(binary.BigEndian.Uint16(b[4:]))
		b = b[6:]
		if len(b) < ls+4 {
			return nil, fmt.Errorf("%w: entry %d cut short", errBatchFormat, i)
		}
		entries[i].secret = string(b[:ls])
		ld := int(binary.BigEndian.Uint32(b[ls:]))
		b = b[ls+4:]
		if ld > maxEntryData || len(b) < ld {
			return nil, fmt.Errorf("%w: entry %d: %d bytes of data, %d left", errBatchFormat, i, ld, len(b))
		}
		entries[i].data = b[:ld:ld]
		b = b[ld:]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the last entry", errBatchFormat, len(b))
	}
	return entries, nil
}

// batchReply is the answer to a batch: one reply per entry, in order.
type batchReply struct {
	Replies []rpcReply `json:"replies"`
}

// serveApplyBatch answers a batch. Each entry is checked against the
// sending peer's certificate here, at its first hop; a follower passes
// those that pass on to the leader as one batch, the leader applies them
// all at once (so that Raft commits them together).
func (s *Server) serveApplyBatch(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBatchBody+1))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if len(body) > maxBatchBody {
		http.Error(w, fmt.Sprintf("batch larger than %d bytes", maxBatchBody), http.StatusRequestEntityTooLarge)
		return
	}
	entries, err := decodeBatch(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.m.batchEntries.Observe(float64(len(entries)))
	ctx := r.Context()
	replies := make([]rpcReply, len(entries))
	forwarded := r.Header.Get(hdrForwarded) != ""
	if !forwarded && r.Header.Get(hdrFed) != "" {
		ctx = withLeaderFed(ctx)
	}
	if s.IsLeader() || forwarded {
		var wg sync.WaitGroup
		for i := range entries {
			wg.Go(func() {
				e := &entries[i]
				ctx, cancel := entryContext(ctx, e.timeout)
				defer cancel()
				replies[i] = s.serveApply(ctx, e.secret, e.data, forwarded)
			})
		}
		wg.Wait()
		writeBatchReply(w, replies)
		return
	}
	var pass []*batchEntry
	var at []int
	for i := range entries {
		if err := s.authorizeApply(ctx, entries[i].data); err != nil {
			replies[i] = replyOf(nil, err)
			continue
		}
		pass = append(pass, &entries[i])
		at = append(at, i)
	}
	// equivalent mutant: forwarding no entries changes no reply; this spares the request
	if len(pass) > 0 {
		fwd, err := s.forwardApplyBatch(ctx, pass)
		for k, i := range at {
			if err != nil {
				replies[i] = replyOf(nil, err)
			} else {
				replies[i] = fwd[k]
			}
		}
	}
	writeBatchReply(w, replies)
}

// entryContext bounds one entry's apply by what its caller had left.
func entryContext(ctx context.Context, timeoutMS uint32) (context.Context, context.CancelFunc) {
	if timeoutMS == 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, time.Duration(timeoutMS)*time.Millisecond)
}

func writeBatchReply(w http.ResponseWriter, replies []rpcReply) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(batchReply{Replies: replies})
}

// forwardApplyBatch passes a follower's batch on to the leader, once.
func (s *Server) forwardApplyBatch(ctx context.Context, entries []*batchEntry) ([]rpcReply, error) {
	addr, err := s.leaderAddr()
	if err != nil {
		return nil, err
	}
	replies, _, err := s.rpc.callBatch(ctx, addr, encodeBatch(entries), len(entries), true, false)
	if errors.Is(err, errBatchUnsupported) {
		// A leader that does not know batches yet (a rolling upgrade):
		// the entries go one by one.
		replies = make([]rpcReply, len(entries))
		var wg sync.WaitGroup
		for i, e := range entries {
			wg.Go(func() {
				ctx, cancel := entryContext(ctx, e.timeout)
				defer cancel()
				replies[i] = replyOf(s.forwardApply(forwardingContext(ctx, e.secret), e.data))
			})
		}
		wg.Wait()
		return replies, nil
	}
	return replies, err
}

// errBatchUnsupported: the server does not serve batches (an older
// version); the batch did nothing.
var errBatchUnsupported = errors.New("election: server does not take batches")

// callBatch sends a batch of n entries and returns their replies and the
// answer's leader hint; fed: the sender's copy streams from addr.
func (c *rpcClient) callBatch(ctx context.Context, addr string, body []byte, n int, forwarded, fed bool) ([]rpcReply, string, error) {
	var hdr http.Header
	if fed {
		hdr = http.Header{hdrFed: {"1"}}
	}
	reply, resp, err := c.postWith(ctx, addr, rpcApplyBatch, bytes.NewReader(body), forwarded, hdr)
	if err != nil {
		return nil, reply.leader, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		// Only a server from before batches answers this route so: a
		// plain 404 of an unknown route, having done nothing.
		return nil, reply.leader, fmt.Errorf("%w: %s", errBatchUnsupported, addr)
	case resp.StatusCode != http.StatusOK:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, reply.leader, fmt.Errorf("rpc %s to %s: %s: %s", rpcApplyBatch, addr, resp.Status, bytes.TrimSpace(b))
	}
	var br batchReply
	if err := json.NewDecoder(resp.Body).Decode(&br); err != nil {
		return nil, reply.leader, fmt.Errorf("%w: rpc %s reply: %v", ErrUnknownOutcome, rpcApplyBatch, err)
	}
	if len(br.Replies) != n {
		return nil, reply.leader, fmt.Errorf("%w: rpc %s: %d replies to %d entries", ErrUnknownOutcome, rpcApplyBatch, len(br.Replies), n)
	}
	return br.Replies, reply.leader, nil
}

// batcher gathers a Remote's writes per destination into batches. It
// starts no goroutine: a waiting caller sends the next batch when it is
// first in line and fewer than batchInFlight are out.
type batcher struct {
	mu     sync.Mutex
	queues map[batchKey]*batchQueue
}

type batchKey struct {
	addr      string
	forwarded bool
}

type batchQueue struct {
	waiting  []*batchEntry
	inFlight int
}

// kick tells the first caller in line to send, when it may (under mu).
func (q *batchQueue) kick() {
	// equivalent mutant: the caller told checks the limit again before it sends; this only spares a wake-up
	if q.inFlight < batchInFlight && len(q.waiting) > 0 {
		select {
		case q.waiting[0].lead <- struct{}{}:
		default: // told already
		}
	}
}

// take moves the next batch out of the line (under mu).
func (q *batchQueue) take() []*batchEntry {
	n, size := 0, 0
	for n < len(q.waiting) && n < batchMaxEntries {
		size += len(q.waiting[n].data)
		if n > 0 && size > batchMaxBytes {
			break
		}
		n++
	}
	batch := make([]*batchEntry, n)
	copy(batch, q.waiting)
	for _, e := range batch {
		e.sent = true
	}
	q.waiting = append(q.waiting[:0], q.waiting[n:]...)
	q.inFlight++
	q.kick()
	return batch
}

// applyBatched sends data to addr in a batch and returns its reply.
func (r *Remote) applyBatched(ctx context.Context, addr string, forwarded bool, data []byte) (rpcReply, error) {
	e := &batchEntry{data: data, lead: make(chan struct{}, 1), done: make(chan struct{})}
	if c := acl.FromContext(ctx); c != nil {
		e.secret = c.Secret
	}
	if dl, ok := ctx.Deadline(); ok {
		e.deadline = dl
	} else {
		e.deadline = time.Now().Add(r.timeout)
	}
	key := batchKey{addr, forwarded}
	b := &r.batch
	b.mu.Lock()
	if b.queues == nil {
		b.queues = make(map[batchKey]*batchQueue)
	}
	q := b.queues[key]
	if q == nil {
		q = &batchQueue{}
		b.queues[key] = q
	}
	q.waiting = append(q.waiting, e)
	q.kick()
	b.mu.Unlock()
	for {
		select {
		case <-e.done:
			return e.reply, e.err
		case <-e.lead:
			b.mu.Lock()
			// equivalent mutant: kick tells the head only while fewer than batchInFlight are out, and only the head takes
			if e.sent || q.inFlight >= batchInFlight || len(q.waiting) == 0 || q.waiting[0] != e {
				b.mu.Unlock()
				continue
			}
			batch := q.take()
			b.mu.Unlock()
			r.sendBatch(addr, forwarded, batch)
			b.mu.Lock()
			q.inFlight--
			q.kick()
			if q.inFlight == 0 && len(q.waiting) == 0 && b.queues[key] == q {
				delete(b.queues, key)
			}
			b.mu.Unlock()
		case <-ctx.Done():
			b.mu.Lock()
			if e.sent {
				b.mu.Unlock()
				return rpcReply{}, fmt.Errorf("%w: rpc %s to %s: %v", ErrUnknownOutcome, rpcApplyBatch, addr, ctx.Err())
			}
			for i, w := range q.waiting {
				if w == e {
					q.waiting = append(q.waiting[:i], q.waiting[i+1:]...)
					break
				}
			}
			q.kick() // the next in line, if this one was told to send
			b.mu.Unlock()
			return rpcReply{}, fmt.Errorf("%w: %v", errNotSent, ctx.Err())
		}
	}
}

// sendBatch sends one batch and hands every entry its reply. Its deadline
// is the latest of the entries': one caller's short deadline does not cut
// the others' writes short (each entry is bounded by its own on the
// server).
func (r *Remote) sendBatch(addr string, forwarded bool, batch []*batchEntry) {
	deadline := batch[0].deadline
	now := time.Now()
	for _, e := range batch {
		if e.deadline.After(deadline) {
			deadline = e.deadline
		}
		// equivalent mutant: at exactly 1 ms left either way gives the server 1 ms
		if left := e.deadline.Sub(now); left > time.Millisecond {
			e.timeout = uint32(min(left.Milliseconds(), 1<<31))
		} else {
			e.timeout = 1
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	fed := r.fedBy != nil && r.fedBy() == addr
	replies, leader, err := r.rpc.callBatch(ctx, addr, encodeBatch(batch), len(batch), forwarded, fed)
	r.noteLeader(leader, err)
	for i, e := range batch {
		if err != nil {
			e.err = err
		} else {
			e.reply = replies[i]
		}
		close(e.done)
	}
}
