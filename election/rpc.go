package election

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/sidecarhq/sidecar/acl"
	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/fsm"
)

// Internal RPC between sidecars and servers, over HTTP/1.1 on the mux:
// writes, keepalives and read indexes go to any server, which forwards them
// once to the Raft leader; the change stream feeds clients' copies of the
// registry from any server.

const (
	rpcApply     = "/rpc/v1/apply"
	rpcKeepAlive = "/rpc/v1/keepalive"
	rpcReadIndex = "/rpc/v1/readindex"
	rpcStream    = "/rpc/v1/stream"
	rpcRestore   = "/rpc/v1/restore"
	rpcStatus    = "/rpc/v1/status"
	// hdrForwarded marks a request a server already forwarded, so that two
	// servers that disagree on the leader never bounce it around.
	hdrForwarded = "X-Sidecar-Forwarded"
	// hdrLeader is on every RPC answer: the Raft/RPC address of the leader
	// as the answering server knows it, so that a client sends its next
	// request there instead of through a follower that forwards it.
	hdrLeader = "X-Sidecar-Raft-Leader"
	// hdrFed marks a client's batch sent to the server whose change stream
	// feeds the client's copy (nudge.go).
	hdrFed = "X-Sidecar-Fed-By-You"
)

// errorCodes carries the sentinel of an error across the wire.
var errorCodes = []struct {
	code string
	err  error
}{
	{"invalid", fsm.ErrInvalid}, {"decode", fsm.ErrDecode},
	{"unknown_node", fsm.ErrUnknownNode}, {"unknown_instance", fsm.ErrUnknownInstance},
	{"unknown_check", fsm.ErrUnknownCheck}, {"unknown_lease", fsm.ErrUnknownLease},
	{"unknown_lock", fsm.ErrUnknownLock}, {"unknown_election", fsm.ErrUnknownElection},
	{"not_holder", fsm.ErrNotHolder}, {"not_candidate", fsm.ErrNotCandidate},
	{"lease_exists", fsm.ErrLeaseExists}, {"check_conflict", fsm.ErrCheckConflict},
	{"not_leader", ErrNotLeader}, {"unknown_outcome", ErrUnknownOutcome}, {"shutdown", ErrShutdown},
	{"permission_denied", ErrPermissionDenied}, {"not_owner", fsm.ErrNotOwner},
	{"acl_bootstrapped", fsm.ErrACLBootstrapped}, {"token_exists", fsm.ErrTokenExists},
	{"unknown_token", fsm.ErrUnknownToken}, {"disk_full", ErrDiskFull},
}

// remoteError is an error that came over RPC: its text as the server wrote
// it, its sentinel for errors.Is.
type remoteError struct {
	msg      string
	sentinel error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

func encodeError(err error) (code, msg string) {
	if err == nil {
		return "", ""
	}
	for _, c := range errorCodes {
		if errors.Is(err, c.err) {
			return c.code, err.Error()
		}
	}
	return "internal", err.Error()
}

func decodeError(code, msg string) error {
	if code == "" {
		return nil
	}
	for _, c := range errorCodes {
		if c.code == code {
			return &remoteError{msg: msg, sentinel: c.err}
		}
	}
	return errors.New(msg)
}

// rpcReply is the answer of apply, keepalive and readindex.
type rpcReply struct {
	// leader is the answer's hdrLeader ("" when the server knew none).
	leader string

	Index   uint64      `json:"index,omitempty"`
	Code    string      `json:"code,omitempty"`
	Error   string      `json:"error,omitempty"`
	LeaseID string      `json:"lease_id,omitempty"`
	Held    bool        `json:"held,omitempty"`
	Token   uint64      `json:"token,omitempty"`
	Holder  *fsm.Holder `json:"holder,omitempty"`
	TTL     int64       `json:"ttl,omitempty"`
}

func replyOf(res *fsm.Result, err error) rpcReply {
	var r rpcReply
	if res != nil {
		r = rpcReply{Index: res.Index, LeaseID: res.LeaseID, Held: res.Held, Token: res.Token, Holder: res.Holder}
	}
	r.Code, r.Error = encodeError(err)
	return r
}

func (r rpcReply) result() (*fsm.Result, error) {
	err := decodeError(r.Code, r.Error)
	// equivalent mutant: a committed write has an index, so 0 comes only with an error; callers read a result only without one
	if r.Index == 0 && err != nil {
		return nil, err
	}
	return &fsm.Result{Index: r.Index, Err: err, LeaseID: r.LeaseID, Held: r.Held, Token: r.Token, Holder: r.Holder}, err
}

// rpcClient calls servers' internal RPC.
type rpcClient struct {
	http *http.Client
}

// newRPCClient calls servers in plain text.
func newRPCClient() *rpcClient { return newRPCClientTLS(nil) }

// newRPCClientTLS dials in TLS when t is set, and in plain text when nil.
func newRPCClientTLS(t TLS) *rpcClient {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			timeout := 5 * time.Second
			if dl, ok := ctx.Deadline(); ok {
				timeout = time.Until(dl)
			}
			return dialProto(network, addr, protoRPC, timeout, t)
		},
		MaxIdleConnsPerHost: 128,
		IdleConnTimeout:     90 * time.Second,
	}
	return &rpcClient{http: &http.Client{Transport: tr}}
}

func (c *rpcClient) close() { c.http.CloseIdleConnections() }

// status asks the server at addr for its view of Raft.
func (c *rpcClient) status(ctx context.Context, addr string) (api.Status, error) {
	var st api.Status
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+rpcStatus, nil)
	if err != nil {
		return st, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return st, fmt.Errorf("status from %s: %s: %s", addr, resp.Status, bytes.TrimSpace(b))
	}
	return st, json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st)
}

// errNotSent: the request never reached the server, so it did nothing and
// may be retried elsewhere.
var errNotSent = errors.New("election: rpc not sent")

func (c *rpcClient) call(ctx context.Context, addr, path string, body []byte, forwarded bool) (rpcReply, error) {
	return c.callStream(ctx, addr, path, bytes.NewReader(body), forwarded)
}

// callStream is call with a body streamed from r (a restore's file).
func (c *rpcClient) callStream(ctx context.Context, addr, path string, body io.Reader, forwarded bool) (rpcReply, error) {
	r, resp, err := c.post(ctx, addr, path, body, forwarded)
	if err != nil {
		return r, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return r, fmt.Errorf("rpc %s to %s: %s: %s", path, addr, resp.Status, bytes.TrimSpace(b))
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return r, fmt.Errorf("%w: rpc %s reply: %v", ErrUnknownOutcome, path, err)
	}
	return r, nil
}

// post sends an RPC request and returns the response, whose body the
// caller closes, with the answer's leader hint in the reply.
func (c *rpcClient) post(ctx context.Context, addr, path string, body io.Reader, forwarded bool) (rpcReply, *http.Response, error) {
	return c.postWith(ctx, addr, path, body, forwarded, nil)
}

// postWith is post with more request headers.
func (c *rpcClient) postWith(ctx context.Context, addr, path string, body io.Reader, forwarded bool, hdr http.Header) (rpcReply, *http.Response, error) {
	if _, ok := body.(io.Closer); ok {
		// The transport closes a request's body once sent: the caller's
		// file stays open, to be read again by a retry.
		body = io.NopCloser(body)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+path, body)
	if err != nil {
		return rpcReply{}, nil, err
	}
	if forwarded {
		req.Header.Set(hdrForwarded, "1")
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	// The caller's token goes with whatever is sent on its behalf, so that
	// the leader checks it again (SPEC: Security).
	if c := acl.FromContext(ctx); c != nil && c.Secret != "" {
		req.Header.Set(acl.HeaderToken, c.Secret)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return rpcReply{}, nil, fmt.Errorf("%w: %v", errNotSent, err)
		}
		return rpcReply{}, nil, fmt.Errorf("%w: rpc %s to %s: %v", ErrUnknownOutcome, path, addr, err)
	}
	return rpcReply{leader: resp.Header.Get(hdrLeader)}, resp, nil
}

// rpcHandler serves the internal RPC of a server.
func (s *Server) rpcHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+rpcApply, func(w http.ResponseWriter, r *http.Request) {
		data, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeReply(w, s.serveApply(r.Context(), secretOf(r), data, r.Header.Get(hdrForwarded) != ""))
	})
	mux.HandleFunc("POST "+rpcApplyBatch, s.serveApplyBatch)
	mux.HandleFunc("POST "+rpcKeepAlive, func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		var ttl time.Duration
		var caller *acl.Caller
		err := s.authorizeKeepAlive(r, id)
		switch {
		case err != nil:
		case s.IsLeader():
			if caller, err = s.keepAliveCaller(r); err == nil {
				ctx := r.Context()
				if caller != nil {
					ctx = acl.NewContext(ctx, caller)
				}
				ttl, err = s.KeepAlive(ctx, id)
			}
		case r.Header.Get(hdrForwarded) != "":
			err = ErrNotLeader
		default:
			ttl, err = s.forwardKeepAlive(forwardingContext(r.Context(), secretOf(r)), id)
		}
		reply := replyOf(nil, err)
		reply.TTL = int64(ttl)
		writeReply(w, reply)
	})
	mux.HandleFunc("POST "+rpcReadIndex, func(w http.ResponseWriter, r *http.Request) {
		var idx uint64
		var err error
		switch {
		case s.IsLeader():
			idx, err = s.readIndex(r.Context())
		case r.Header.Get(hdrForwarded) != "":
			err = ErrNotLeader
		default:
			idx, err = s.forwardReadIndex(r.Context())
		}
		reply := replyOf(nil, err)
		reply.Index = idx
		writeReply(w, reply)
	})
	mux.HandleFunc("POST "+rpcRestore, func(w http.ResponseWriter, r *http.Request) {
		err := s.requireServer(r, "a restore")
		switch {
		case err != nil:
		case s.IsLeader():
			err = s.RestoreSnapshot(r.Context(), io.LimitReader(r.Body, maxFrame))
		case r.Header.Get(hdrForwarded) != "":
			err = ErrNotLeader
		default:
			err = s.forwardRestore(r.Context(), io.LimitReader(r.Body, maxFrame))
		}
		writeReply(w, replyOf(nil, err))
	})
	mux.HandleFunc("GET "+rpcStatus, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(s.Status())
	})
	mux.HandleFunc("GET "+rpcStream, s.serveStream)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, addr := s.Leader(); addr != "" {
			w.Header().Set(hdrLeader, string(addr))
		}
		mux.ServeHTTP(w, r)
	})
}

func writeReply(w http.ResponseWriter, r rpcReply) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(r)
}

// readIndex is what a consistent read elsewhere waits for: once leadership
// is confirmed, the leader's registry holds every acknowledged write.
func (s *Server) readIndex(ctx context.Context) (uint64, error) {
	if err := s.ConsistentRead(ctx); err != nil {
		return 0, err
	}
	return s.fsm.Index(), nil
}

func (s *Server) leaderAddr() (string, error) {
	_, addr := s.Leader()
	if addr == "" {
		return "", ErrNotLeader
	}
	return string(addr), nil
}

// serveApply answers one write that came over RPC, alone or in a batch:
// checked against the sending peer's certificate here, at its first hop,
// then applied by this leader or passed on to the leader once.
func (s *Server) serveApply(ctx context.Context, secret string, data []byte, forwarded bool) rpcReply {
	switch err := s.authorizeApply(ctx, data); {
	case err != nil:
		return replyOf(nil, err)
	case s.IsLeader():
		return replyOf(s.applyAuthorized(ctx, secret, data))
	case forwarded:
		return replyOf(nil, ErrNotLeader)
	default:
		return replyOf(s.forwardApply(forwardingContext(ctx, secret), data))
	}
}

// applyAuthorized applies a write that came over RPC to this leader, once
// the token it carries allows it (see authorizeACL).
func (s *Server) applyAuthorized(ctx context.Context, secret string, data []byte) (*fsm.Result, error) {
	// Commit only what decodes: a committed entry that does not halts the
	// registry of every replica (fsm.FSM.ApplyBytes). Writes made here
	// were encoded from a command and need no such check.
	cmd, err := fsm.Decode(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", fsm.ErrInvalid, err)
	}
	if s.aclResolver() != nil {
		caller, err := s.authorizeACL(secret, cmd)
		if err != nil {
			return nil, err
		}
		ctx = acl.NewContext(ctx, caller)
	}
	return s.ApplyEncoded(ctx, data)
}

func (s *Server) forwardApply(ctx context.Context, data []byte) (*fsm.Result, error) {
	addr, err := s.leaderAddr()
	if err != nil {
		return nil, err
	}
	reply, err := s.rpc.call(ctx, addr, rpcApply, data, true)
	if err != nil {
		return nil, err
	}
	return reply.result()
}

func (s *Server) forwardKeepAlive(ctx context.Context, id string) (time.Duration, error) {
	addr, err := s.leaderAddr()
	if err != nil {
		return 0, err
	}
	reply, err := s.rpc.call(ctx, addr, rpcKeepAlive+"?id="+id, nil, true)
	if err != nil {
		return 0, err
	}
	return time.Duration(reply.TTL), decodeError(reply.Code, reply.Error)
}

// forwardRestore passes a restore on to the leader, spooled through a
// temporary file rather than memory.
func (s *Server) forwardRestore(ctx context.Context, r io.Reader) error {
	f, err := spool(r)
	if err != nil {
		return err
	}
	defer f.Close()
	addr, err := s.leaderAddr()
	if err != nil {
		return err
	}
	reply, err := s.rpc.callStream(ctx, addr, rpcRestore, f, true)
	if err != nil {
		return err
	}
	return decodeError(reply.Code, reply.Error)
}

func (s *Server) forwardReadIndex(ctx context.Context) (uint64, error) {
	addr, err := s.leaderAddr()
	if err != nil {
		return 0, err
	}
	reply, err := s.rpc.call(ctx, addr, rpcReadIndex, nil, true)
	if err != nil {
		return 0, err
	}
	return reply.Index, decodeError(reply.Code, reply.Error)
}

// Change stream frames: type, index, length, data. A snapshot frame
// replaces the follower's registry; entry frames apply in order; heartbeats
// carry the server's index so the follower knows it is current.
const (
	frameSnapshot  byte = 'S'
	frameEntry     byte = 'E'
	frameHeartbeat byte = 'H'
	// streamHeartbeat is how often an idle stream says it is alive; a
	// follower that hears nothing for 3 of them reconnects elsewhere.
	streamHeartbeat = 500 * time.Millisecond
	maxFrame        = 1 << 30
)

func writeFrame(w *bufio.Writer, typ byte, index uint64, data []byte) error {
	var hdr [13]byte
	hdr[0] = typ
	binary.BigEndian.PutUint64(hdr[1:9], index)
	binary.BigEndian.PutUint32(hdr[9:13], uint32(len(data)))
	w.Write(hdr[:])
	_, err := w.Write(data)
	return err
}

func readFrame(r *bufio.Reader) (typ byte, index uint64, data []byte, err error) {
	var hdr [13]byte
	if _, err = io.ReadFull(r, hdr[:]); err != nil {
		return
	}
	typ, index = hdr[0], binary.BigEndian.Uint64(hdr[1:9])
	n := binary.BigEndian.Uint32(hdr[9:13])
	// equivalent mutant: a guard against a damaged length; a frame of exactly 1 GiB is too big for a test to build
	if n > maxFrame {
		return 0, 0, nil, fmt.Errorf("stream frame of %d bytes", n)
	}
	data = make([]byte, n)
	_, err = io.ReadFull(r, data)
	return
}

// serveStream sends a follower what it lacks after ?index=N: a snapshot
// when the change log no longer covers N, then every entry as it applies.
func (s *Server) serveStream(w http.ResponseWriter, r *http.Request) {
	from, err := strconv.ParseUint(r.URL.Query().Get("index"), 10, 64)
	if err != nil {
		http.Error(w, "index must be an integer", http.StatusBadRequest)
		return
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 64<<10)
	flush := func() error {
		if err := bw.Flush(); err != nil {
			return err
		}
		return rc.Flush()
	}
	ticker := time.NewTicker(s.cfg.streamHeartbeat)
	defer ticker.Stop()
	for {
		entries, notify, ok := s.changes.since(from)
		if !ok || from == 0 {
			snap, idx, err := s.streamSnapshot()
			if err != nil {
				s.log.Warn("stream snapshot failed", "err", err)
				return
			}
			// A snapshot that fits the buffer goes out with the entries
			// after it or with the next heartbeat.
			if err := writeFrame(bw, frameSnapshot, idx, snap); err != nil {
				return
			}
			from = idx
			if from == 0 {
				// An empty registry: follow from the first entry.
				from = 1
			}
			continue
		}
		for _, e := range entries {
			if err := writeFrame(bw, frameEntry, e.index, e.data); err != nil {
				return
			}
			from = e.index
		}
		// equivalent mutant: flushing an empty buffer sends nothing
		if len(entries) > 0 {
			if err := flush(); err != nil {
				return
			}
		}
		select {
		case <-r.Context().Done():
			return
		case <-s.stop:
			return
		case <-notify:
		case <-ticker.C:
			if err := writeFrame(bw, frameHeartbeat, s.fsm.Index(), nil); err != nil {
				return
			}
			// equivalent mutant: a failed flush is found by the next write as well
			if err := flush(); err != nil {
				return
			}
		}
	}
}
