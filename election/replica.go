package election

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidecarhq/sidecar/fsm"
)

// preferCheck is how often a replica checks that it streams from the
// preferred server; preferFirst is the first check on a new stream, so
// that a client that connected before it knew the leader (at start, or
// right after an election) moves within a moment, not seconds later.
const (
	preferCheck = 2 * time.Second
	preferFirst = 200 * time.Millisecond
)

// Replica keeps a client's in-memory copy of the registry, fed by a change
// stream from any server: a snapshot, then every entry from its index on.
// When a stream breaks it resumes from its own index on another server (the
// server sends a snapshot instead when it no longer has those entries).
type Replica struct {
	fsm     *fsm.FSM
	servers func() []string
	rpc     *rpcClient
	log     *slog.Logger

	next   atomic.Uint64
	prefer func() string

	mu        sync.Mutex
	lastHeard time.Time
	behind    bool
	server    string
}

// NewReplica returns a replica filling reg from the servers listed.
func NewReplica(reg *fsm.FSM, servers func() []string, log *slog.Logger) *Replica {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Replica{fsm: reg, servers: servers, rpc: newRPCClient(), log: log.With("component", "replica")}
}

// UseTLS makes the Replica stream from servers over TLS, accepting the
// registry only from a server certificate; call it before Run.
func (r *Replica) UseTLS(t TLS) { r.rpc = newRPCClientTLS(orNil(t)) }

// Prefer names the server to stream from when it can (the Raft leader,
// whose registry is the first to hold every commit). Call before Run.
func (r *Replica) Prefer(f func() string) { r.prefer = f }

// FSM is the local copy.
func (r *Replica) FSM() *fsm.FSM { return r.fsm }

// Server is the server whose change stream feeds the copy now; "" while
// none does.
func (r *Replica) Server() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.server
}

// Current returns nil while the copy is fed by a live stream and holds
// everything the server had at its last heartbeat.
func (r *Replica) Current() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.server == "" {
		return errors.New("no change stream connected")
	}
	// equivalent mutant: silence of exactly three heartbeats, to the nanosecond
	if time.Since(r.lastHeard) > 3*streamHeartbeat {
		return fmt.Errorf("change stream from %s silent for %v", r.server, time.Since(r.lastHeard).Round(time.Millisecond))
	}
	if r.behind {
		return fmt.Errorf("copy still catching up with %s", r.server)
	}
	return nil
}

// Run follows change streams until ctx ends.
func (r *Replica) Run(ctx context.Context) {
	defer r.rpc.close()
	// equivalent mutant: the retry backoff is a tuning constant
	backoff := 50 * time.Millisecond
	skipPrefer, moving := false, false
	for ctx.Err() == nil {
		list := r.servers()
		if len(list) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			continue
		}
		addr := list[int(r.next.Add(1)%uint64(len(list)))]
		preferred := false
		if r.prefer != nil && !skipPrefer {
			if p := r.prefer(); p != "" {
				addr, preferred = p, true
			}
		}
		err := r.follow(ctx, addr, skipPrefer, moving)
		// A preferred server that failed us is skipped once, so that a
		// stale idea of the leader cannot keep the copy from any stream.
		moving = errors.Is(err, errMoveToPreferred)
		skipPrefer = preferred && !moving
		// A planned move keeps the server named: the copy is as current
		// as the stream just closed left it, so it stays so (and the agent
		// ready) while the next stream connects, which it does at once.
		if !moving || ctx.Err() != nil {
			r.mu.Lock()
			r.server = ""
			r.mu.Unlock()
		}
		if ctx.Err() != nil {
			return
		}
		if moving {
			continue
		}
		r.log.Debug("change stream ended; resuming elsewhere", "server", addr, "index", r.fsm.Index(), "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
	}
}

// errMoveToPreferred ends a stream to reconnect to the preferred server.
var errMoveToPreferred = errors.New("election: moving to the preferred server")

// follow streams from addr until the stream fails or moves to the
// preferred server; afterPreferFailed (the preferred server just failed
// us) waits a full preferCheck before asking again, so that a stale idea
// of the leader is not retried at once. moving (the last stream closed to
// move here) keeps the copy's freshness as that stream left it.
func (r *Replica) follow(ctx context.Context, addr string, afterPreferFailed, moving bool) (err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	from := r.fsm.Index()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+rpcStream+"?index="+strconv.FormatUint(from, 10), nil)
	if err != nil {
		return err
	}
	resp, err := r.rpc.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("stream from %s: %s", addr, resp.Status)
	}
	r.mu.Lock()
	r.server = addr
	if !moving {
		r.lastHeard, r.behind = time.Now(), true
	}
	r.mu.Unlock()
	// A stream that goes silent is cut, so a dead server is left quickly.
	// equivalent mutant: the watchdog's period is a tuning constant (a shorter one only reconnects more)
	watchdog := time.AfterFunc(3*streamHeartbeat, cancel)
	defer watchdog.Stop()
	var moved atomic.Bool
	defer func() {
		if moved.Load() {
			err = errMoveToPreferred
		}
	}()
	if r.prefer != nil {
		// Move to the preferred server (the leader) once it is known and
		// this one is not it: the resume from our index costs nothing.
		go func() {
			// equivalent mutant: the first check's delay is a tuning constant
			t := time.NewTimer(preferFirst)
			if afterPreferFailed {
				t.Reset(preferCheck)
			}
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					if p := r.prefer(); p != "" && p != addr {
						r.log.Debug("moving change stream to the leader", "from", addr, "to", p)
						moved.Store(true)
						cancel()
						return
					}
					t.Reset(preferCheck)
				}
			}
		}()
	}
	br := bufio.NewReaderSize(resp.Body, 64<<10)
	for {
		typ, index, data, err := readFrame(br)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("stream closed by server")
			}
			return err
		}
		watchdog.Reset(3 * streamHeartbeat)
		behind := false
		switch typ {
		case frameSnapshot:
			if err := r.fsm.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
				return fmt.Errorf("stream snapshot: %w", err)
			}
		case frameEntry:
			// equivalent mutant: the registry ignores an entry at or below its index
			if index > r.fsm.Index() {
				// equivalent mutant: log output only
				if res := r.fsm.ApplyBytes(index, data); res.Err != nil && errors.Is(res.Err, fsm.ErrDecode) {
					r.log.Warn("stream entry does not decode", "index", index, "err", res.Err)
				}
			}
			behind = br.Buffered() > 0
		case frameHeartbeat:
			behind = r.fsm.Index() < index
		default:
			return fmt.Errorf("stream frame type %q", typ)
		}
		r.mu.Lock()
		r.lastHeard, r.behind = time.Now(), behind
		r.mu.Unlock()
	}
}
