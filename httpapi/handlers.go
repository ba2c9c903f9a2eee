package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/fsm"
)

// pathName is the {name} of a route, which must be a DNS label.
func pathName(r *http.Request, what string) (string, error) {
	name := r.PathValue("name")
	return name, checkName(what, name)
}

// holdTTL is the TTL of a connection-bound hold's lease.
func (s *Server) holdTTL(ttl time.Duration) time.Duration {
	if ttl == 0 {
		return s.cfg.SessionTTL
	}
	return ttl
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	return nil
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) error {
	if err := s.agent.Ready(); err != nil {
		return fmt.Errorf("%w: %v", errNotReady, err)
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	return nil
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, s.agent.Status())
	return nil
}

// members answers from gossip; as a blocking query it wakes when this
// agent's member list changes (X-Sidecar-Index then counts those changes),
// or, with an agent that cannot tell, when the registry's node table does.
func (s *Server) members(w http.ResponseWriter, r *http.Request) error {
	tp := s.tableTopic(fsm.TableNodes)
	if mw, ok := s.agent.(MemberWatch); ok {
		tp = topic{
			index: func() uint64 { n, _ := mw.MemberChanges(); return n },
			watch: func() <-chan struct{} { _, ch := mw.MemberChanges(); return ch },
		}
	}
	v, err := block(s, w, r, tp, s.agent.Members)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

// topic is what a blocking read waits on: a table, or one service, lock
// or election, with its index and a channel closed when it changes.
type topic struct {
	index func() uint64
	watch func() <-chan struct{}
}

func (s *Server) tableTopic(t fsm.Table) topic {
	return topic{func() uint64 { return s.reg.TableIndex(t) }, func() <-chan struct{} { return s.reg.WatchTable(t) }}
}

func (s *Server) serviceTopic(name string) topic {
	return topic{func() uint64 { return s.reg.ServiceIndex(name) }, func() <-chan struct{} { return s.reg.WatchService(name) }}
}

func (s *Server) lockTopic(name string) topic {
	return topic{func() uint64 { return s.reg.LockIndex(name) }, func() <-chan struct{} { return s.reg.WatchLock(name) }}
}

func (s *Server) electionTopic(name string) topic {
	return topic{func() uint64 { return s.reg.ElectionIndex(name) }, func() <-chan struct{} { return s.reg.WatchElection(name) }}
}

// block runs a read as a blocking query on one topic: it answers at once
// without ?index (or when the topic's index already exceeds it), else when
// the topic changes past it or the wait ends, with the same answer then.
// Only a change of the topic wakes it, and it compares indexes before it
// reads, so blocked queries cost memory, not CPU, while other writes flow.
func block[T any](s *Server, w http.ResponseWriter, r *http.Request, tp topic, read func() T) (T, error) {
	var zero T
	q, err := parseBlocking(r.URL.Query())
	if err != nil {
		return zero, err
	}
	if q.Consistent {
		if err := s.agent.ConsistentRead(r.Context()); err != nil {
			return zero, err
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), q.Wait)
	defer cancel()
	waiting := false
	for {
		watch := tp.watch()
		idx := tp.index()
		if q.Index == 0 || idx > q.Index || ctx.Err() != nil {
			v := read()
			setIndex(w, idx)
			return v, nil
		}
		if !waiting {
			release, err := s.waitSlot()
			if err != nil {
				return zero, err
			}
			defer release()
			waiting = true
		}
		select {
		case <-watch:
		case <-ctx.Done():
		}
	}
}

// setIndex sets X-Sidecar-Index, never 0, so that a client passing it back
// always blocks instead of spinning.
func setIndex(w http.ResponseWriter, idx uint64) {
	if idx == 0 {
		idx = 1
	}
	w.Header().Set(api.HeaderIndex, strconv.FormatUint(idx, 10))
}

func (s *Server) register(w http.ResponseWriter, r *http.Request) error {
	body, err := s.readBody(w, r)
	if err != nil {
		return err
	}
	in, err := decodeRegistration(body, s.agent.Node())
	if err != nil {
		return err
	}
	if err := s.authorize(r, in.Name); err != nil {
		return err
	}
	if !s.cfg.ExecChecks {
		for _, c := range in.Checks {
			if c.Type == "exec" {
				// Whoever reaches the API would run commands as the agent.
				return fmt.Errorf("%w: check %q is an exec check; exec checks through the HTTP API need --enable-exec-checks=all", ErrForbidden, c.ID)
			}
		}
	}
	res, err := s.agent.RegisterService(r.Context(), in)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.RegisterResponse{ID: in.ID, Index: res.Index})
	return nil
}

func (s *Server) deregister(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := checkID("instance id", id); err != nil {
		return err
	}
	name, ok, err := s.instanceName(id)
	if err != nil {
		return err
	}
	if ok {
		if err := s.authorize(r, name); err != nil {
			return err
		}
	} else if err := s.authorizeUnknown(r, fmt.Errorf("%w: %q on this node", fsm.ErrUnknownInstance, id)); err != nil {
		return err
	}
	res, err := s.agent.DeregisterService(r.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.RegisterResponse{ID: id, Index: res.Index})
	return nil
}

func (s *Server) services(w http.ResponseWriter, r *http.Request) error {
	v, err := block(s, w, r, s.tableTopic(fsm.TableServices), func() map[string][]string {
		all := s.reg.Services()
		// Only the names the caller may read, as Consul filters its
		// catalog: a listing is no way around service:read.
		for name := range all {
			if !s.mayRead(r, name) {
				delete(all, name)
			}
		}
		return all
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

func (s *Server) service(w http.ResponseWriter, r *http.Request) error {
	name, err := pathName(r, "service")
	if err != nil {
		return err
	}
	q := r.URL.Query()
	_, passingOnly := q["passing"]
	tags := q["tag"]
	v, err := block(s, w, r, s.serviceTopic(name), func() []api.Instance {
		out := []api.Instance{}
		for _, e := range s.reg.ServiceInstances(name) {
			if passingOnly && e.Status != fsm.StatusPassing {
				continue
			}
			if !hasTags(e.Instance.Tags, tags) {
				continue
			}
			inst := toAPIInstance(e)
			if inst.Address == "" {
				// Registered without an address: the instance listens on
				// its node's, as DNS answers too.
				if n, ok := s.reg.Node(inst.Node); ok {
					inst.Address = n.Address
				}
			}
			out = append(out, inst)
		}
		return out
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

func hasTags(have, want []string) bool {
	for _, t := range want {
		found := false
		for _, h := range have {
			if h == t {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func toAPIInstance(e fsm.ServiceEntry) api.Instance {
	in := e.Instance
	out := api.Instance{ID: in.ID, Name: in.Name, Node: in.Node, Address: in.Address, Port: in.Port,
		Weight: in.EffectiveWeight(), Tags: in.Tags, Meta: in.Meta, Status: e.Status}
	if out.Tags == nil {
		out.Tags = []string{}
	}
	if out.Meta == nil {
		out.Meta = map[string]string{}
	}
	for _, c := range in.Checks {
		out.Checks = append(out.Checks, api.CheckStatus{ID: c.ID, Name: c.Name, Type: c.Type, Status: c.Status, Output: c.Output})
	}
	return out
}

var checkStatuses = map[string]string{"pass": fsm.StatusPassing, "warn": fsm.StatusWarning, "fail": fsm.StatusCritical}

func (s *Server) updateCheck(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("check_id")
	status, ok := checkStatuses[r.PathValue("status")]
	if !ok {
		return fmt.Errorf("%w: no route %s %s (want pass, warn or fail)", errNotFound, r.Method, r.URL.Path)
	}
	if err := checkID("check id", id); err != nil {
		return err
	}
	note := r.URL.Query().Get("note")
	if len(note) > fsm.MaxOutputLen {
		return badf("note is longer than %d bytes", fsm.MaxOutputLen)
	}
	owner, ok := s.reg.CheckOwner(s.agent.Node(), id)
	if !ok {
		return s.authorizeUnknown(r, fmt.Errorf("%w: %q on this node", fsm.ErrUnknownCheck, id))
	}
	if err := s.authorize(r, owner.Name); err != nil {
		return err
	}
	for _, c := range owner.Checks {
		if c.ID == id && c.Type != "ttl" {
			return badf("check %q is a %s check; only ttl checks are updated through the API", id, c.Type)
		}
	}
	if err := s.agent.UpdateTTLCheck(r.Context(), id, status, note); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": id, "status": status})
	return nil
}

func (s *Server) grantLease(w http.ResponseWriter, r *http.Request) error {
	body, err := s.readBody(w, r)
	if err != nil {
		return err
	}
	ttl, err := decodeLeaseRequest(body)
	if err != nil {
		return err
	}
	id, err := s.holds.GrantLease(r.Context(), ttl)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.Lease{ID: id, TTL: ttl.String()})
	return nil
}

func (s *Server) keepAlive(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := checkID("lease", id); err != nil {
		return err
	}
	ttl, err := s.holds.KeepAlive(r.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.Lease{ID: id, TTL: ttl.String()})
	return nil
}

func (s *Server) revokeLease(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := checkID("lease", id); err != nil {
		return err
	}
	if err := s.holds.RevokeLease(r.Context(), id); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]string{"id": id})
	return nil
}

// stream answers a connection-bound hold: JSON lines, one per change,
// flushed at once. The hold ends when the client's connection does.
func stream[T any](w http.ResponseWriter, r *http.Request, hold func(emit election.Emit[T]) error) error {
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	started := false
	err := hold(func(v T) error {
		if !started {
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.WriteHeader(http.StatusOK)
			started = true
		}
		if err := enc.Encode(v); err != nil {
			return err
		}
		return rc.Flush()
	})
	if err != nil && started {
		// The status is sent; the stream just ends. The client sees the
		// missing last line as a lost hold.
		return nil
	}
	return err
}

func (s *Server) lock(w http.ResponseWriter, r *http.Request) error {
	name, err := pathName(r, "lock")
	if err != nil {
		return err
	}
	body, err := s.readBody(w, r)
	if err != nil {
		return err
	}
	req, err := decodeLockRequest(body)
	if err != nil {
		return err
	}
	spec := election.LockSpec{Name: name, Lease: req.Lease, Value: req.Value, Wait: req.Wait, LockDelay: req.LockDelay}
	if req.Connection {
		return stream(w, r, func(emit election.Emit[api.LockResult]) error {
			return s.holds.HoldLock(r.Context(), spec, s.holdTTL(req.TTL), emit)
		})
	}
	res, err := s.holds.Lock(r.Context(), spec)
	if err != nil {
		return err
	}
	code := http.StatusOK
	if !res.Held {
		code = http.StatusConflict
	}
	writeJSON(w, code, res)
	return nil
}

func (s *Server) unlock(w http.ResponseWriter, r *http.Request) error {
	name, err := pathName(r, "lock")
	if err != nil {
		return err
	}
	body, err := s.readBody(w, r)
	if err != nil {
		return err
	}
	var req api.LockRequest
	if err := decodeJSON(body, &req, true); err != nil {
		return err
	}
	if req.Lease != "" {
		if err := checkID("lease", req.Lease); err != nil {
			return err
		}
	}
	if err := s.holds.UnlockToken(r.Context(), name, req.Lease, req.Token); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"held": false})
	return nil
}

// fence answers a fence check: 200 {"current":true,"token":N} when token
// is the live holder's, 409 {"current":false,"token":M} otherwise (M the
// current token, 0 when vacant), once a quorum confirmed the local copy.
func (s *Server) fence(w http.ResponseWriter, r *http.Request, kind string,
	check func(ctx context.Context, name string, token uint64) (api.FenceResult, error)) error {
	name, err := pathName(r, kind)
	if err != nil {
		return err
	}
	raw := r.URL.Query().Get("token")
	if raw == "" {
		return badf("token: missing (?token=N, the fencing token to check)")
	}
	token, err := strconv.ParseUint(raw, 10, 64)
	if err != nil {
		return badf("token: %q is not a fencing token (an unsigned integer)", raw)
	}
	res, err := check(r.Context(), name, token)
	if err != nil {
		return err
	}
	code := http.StatusOK
	if !res.Current {
		code = http.StatusConflict
	}
	writeJSON(w, code, res)
	return nil
}

func (s *Server) lockFence(w http.ResponseWriter, r *http.Request) error {
	return s.fence(w, r, "lock", s.holds.LockFence)
}

func (s *Server) electionFence(w http.ResponseWriter, r *http.Request) error {
	return s.fence(w, r, "election", s.holds.ElectionFence)
}

// transfer hands an election from a candidate campaigning here to a
// waiting one (PUT /v1/elections/{name}/transfer).
func (s *Server) transfer(w http.ResponseWriter, r *http.Request) error {
	name, err := pathName(r, "election")
	if err != nil {
		return err
	}
	body, err := s.readBody(w, r)
	if err != nil {
		return err
	}
	var req api.TransferRequest
	if err := decodeJSON(body, &req, false); err != nil {
		return err
	}
	if req.From != "" {
		if err := checkID("from", req.From); err != nil {
			return err
		}
	}
	if err := checkID("to", req.To); err != nil {
		return err
	}
	res, err := s.holds.Transfer(r.Context(), name, req.From, req.To)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

func (s *Server) lockInfo(w http.ResponseWriter, r *http.Request) error {
	name, err := pathName(r, "lock")
	if err != nil {
		return err
	}
	m, err := block(s, w, r, s.lockTopic(name), func() *fsm.Mutex { m, _ := s.reg.Lock(name); return m })
	if err != nil {
		return err
	}
	if m == nil || m.Holder == nil {
		return fmt.Errorf("%w: lock %q is not held", errNotFound, name)
	}
	h := m.Holder
	writeJSON(w, http.StatusOK, api.LockInfo{Holder: h.Node, Lease: h.Lease, Value: h.Value, Token: h.Token, Since: time.Unix(0, h.Since).UTC()})
	return nil
}

func (s *Server) lockList(w http.ResponseWriter, r *http.Request) error {
	return s.mutexList(w, r, fsm.TableLocks, s.reg.Locks, false)
}

func (s *Server) electionList(w http.ResponseWriter, r *http.Request) error {
	return s.mutexList(w, r, fsm.TableElections, s.reg.Elections, true)
}

// mutexList answers GET /v1/locks and /v1/elections: every name the caller
// may read, vacant ones included, with holder, lease and waiters in line; a
// blocking query on the table.
func (s *Server) mutexList(w http.ResponseWriter, r *http.Request, t fsm.Table, all func() []*fsm.Mutex, isElection bool) error {
	v, err := block(s, w, r, s.tableTopic(t), func() []api.MutexInfo {
		out := []api.MutexInfo{}
		for _, m := range all() {
			if !s.mayRead(r, m.Name) {
				continue
			}
			out = append(out, s.mutexInfo(m, isElection))
		}
		return out
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

func (s *Server) mutexInfo(m *fsm.Mutex, isElection bool) api.MutexInfo {
	out := api.MutexInfo{Name: m.Name, LastToken: m.LastToken, Waiters: []api.Waiter{}}
	if h := m.Holder; h != nil {
		out.Holder = election.Holder(h, isElection)
		if l, ok := s.reg.Lease(h.Lease); ok {
			out.LeaseTTL = time.Duration(l.TTL).String()
		}
		if lc, ok := s.agent.(LeaseClock); ok {
			if d, ok := lc.LeaseRemaining(h.Lease); ok {
				out.ExpiresIn = d.Round(time.Millisecond).String()
			}
		}
	}
	for _, wt := range m.Waiters {
		wo := api.Waiter{Node: wt.Node, Lease: wt.Lease, Value: wt.Value}
		if isElection {
			wo.Candidate = wt.ID
		}
		out.Waiters = append(out.Waiters, wo)
	}
	return out
}

func (s *Server) campaign(w http.ResponseWriter, r *http.Request) error {
	name, err := pathName(r, "election")
	if err != nil {
		return err
	}
	body, err := s.readBody(w, r)
	if err != nil {
		return err
	}
	req, err := decodeCampaignRequest(body)
	if err != nil {
		return err
	}
	spec := election.CampaignSpec{Election: name, Candidate: req.Candidate, Value: req.Value, Service: req.Service, Lease: req.Lease, Wait: req.Wait}
	if req.Connection {
		return stream(w, r, func(emit election.Emit[api.CampaignResult]) error {
			return s.holds.HoldCampaign(r.Context(), spec, s.holdTTL(req.TTL), emit)
		})
	}
	res, err := s.holds.Campaign(r.Context(), spec)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

func (s *Server) resign(w http.ResponseWriter, r *http.Request) error {
	name, err := pathName(r, "election")
	if err != nil {
		return err
	}
	cand := r.URL.Query().Get("candidate")
	if err := checkID("candidate", cand); err != nil {
		return err
	}
	if err := s.holds.Resign(r.Context(), name, cand); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"leader": false})
	return nil
}

func (s *Server) electionInfo(w http.ResponseWriter, r *http.Request) error {
	name, err := pathName(r, "election")
	if err != nil {
		return err
	}
	m, err := block(s, w, r, s.electionTopic(name), func() *fsm.Mutex { m, _ := s.reg.Election(name); return m })
	if err != nil {
		return err
	}
	if m == nil || m.Holder == nil {
		return fmt.Errorf("%w: election %q has no leader", errNotFound, name)
	}
	writeJSON(w, http.StatusOK, api.ElectionInfo{Leader: election.Holder(m.Holder, true)})
	return nil
}

func (s *Server) self(w http.ResponseWriter, r *http.Request) error {
	name, err := pathName(r, "election")
	if err != nil {
		return err
	}
	q, err := parseBlocking(r.URL.Query())
	if err != nil {
		return err
	}
	var st api.SelfStatus
	var idx uint64
	if q.Index == 0 {
		idx = s.reg.TableIndex(fsm.TableElections)
		st = s.holds.Self(name)
	} else {
		ctx, cancel := context.WithTimeout(r.Context(), q.Wait)
		st, idx = s.holds.WaitSelf(ctx, name, q.Index)
		cancel()
	}
	setIndex(w, idx)
	code := http.StatusOK
	if !st.Leader {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, st)
	return nil
}

// saveSnapshot writes this agent's copy of the registry, like every read;
// with ?consistent, once the copy holds every write the leader committed
// when it was asked (a write just answered through another agent, or
// through this one before its copy caught up).
func (s *Server) saveSnapshot(w http.ResponseWriter, r *http.Request) error {
	if _, ok := r.URL.Query()["consistent"]; ok {
		if err := s.agent.ConsistentRead(r.Context()); err != nil {
			return err
		}
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	return s.agent.SaveSnapshot(w)
}

func (s *Server) restoreSnapshot(w http.ResponseWriter, r *http.Request) error {
	if r.ContentLength > s.cfg.MaxSnapshotBytes {
		// Refused before a byte of it is read.
		w.Header().Set("Connection", "close")
		return fmt.Errorf("%w: snapshot of %d bytes is larger than the %d bytes allowed", errSnapshotTooLarge, r.ContentLength, s.cfg.MaxSnapshotBytes)
	}
	// The body goes to a temporary file first: one larger than allowed is
	// refused having cost disk, not memory, and a slow one holds no buffer.
	f, err := os.CreateTemp("", "sidecar-restore-*")
	if err != nil {
		return fmt.Errorf("restore: temporary file: %w", err)
	}
	defer func() {
		f.Close()
		os.Remove(f.Name())
	}()
	// A snapshot may take long to arrive, but not stall: each read gets
	// BodyReadTimeout, so a client that stops sending is cut off while a
	// slow, steady upload goes on.
	body := &progressReader{r: http.MaxBytesReader(w, r.Body, s.cfg.MaxSnapshotBytes), rc: http.NewResponseController(w), idle: s.cfg.BodyReadTimeout}
	if _, err := io.Copy(f, body); err != nil {
		w.Header().Set("Connection", "close")
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return fmt.Errorf("%w: snapshot larger than the %d bytes allowed", errSnapshotTooLarge, s.cfg.MaxSnapshotBytes)
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return fmt.Errorf("%w: no snapshot bytes received for %v", errSlowBody, s.cfg.BodyReadTimeout)
		}
		return badf("read snapshot: %v", err)
	}
	_ = body.rc.SetReadDeadline(time.Time{})
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("restore: rewind temporary file: %w", err)
	}
	if err := s.agent.RestoreSnapshot(r.Context(), f); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "restored"})
	return nil
}

// progressReader sets a read deadline before every read: the body must
// keep arriving, however long it is.
type progressReader struct {
	r    io.Reader
	rc   *http.ResponseController
	idle time.Duration
}

func (p *progressReader) Read(b []byte) (int, error) {
	if p.idle > 0 {
		_ = p.rc.SetReadDeadline(time.Now().Add(p.idle))
	}
	return p.r.Read(b)
}
