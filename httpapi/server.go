// Package httpapi serves sidecar's HTTP API (SPEC.md): health and metrics,
// the registry with blocking queries, leases, locks and elections, and
// connection-bound holds streamed as JSON lines. It reads and writes through
// small interfaces, so it runs the same over a server or a client agent.
package httpapi

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/time/rate"

	"github.com/sidecarhq/sidecar/acl"
	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/fsm"
	"github.com/sidecarhq/sidecar/localstate"
	"github.com/sidecarhq/sidecar/ui"
)

// Registry is the local copy of the registry the API reads.
type Registry interface {
	Watch() <-chan struct{}
	TableIndex(fsm.Table) uint64
	// Per-topic indexes and watches of blocking queries.
	WatchTable(fsm.Table) <-chan struct{}
	ServiceIndex(name string) uint64
	WatchService(name string) <-chan struct{}
	LockIndex(name string) uint64
	WatchLock(name string) <-chan struct{}
	ElectionIndex(name string) uint64
	WatchElection(name string) <-chan struct{}
	Services() map[string][]string
	ServiceInstances(name string) []fsm.ServiceEntry
	Lock(name string) (*fsm.Mutex, bool)
	Election(name string) (*fsm.Mutex, bool)
	// Locks and Elections list every one, sorted by name; Lease gives a
	// holder's lease TTL for the listings.
	Locks() []*fsm.Mutex
	Elections() []*fsm.Mutex
	Lease(id string) (*fsm.Lease, bool)
	CheckOwner(node, checkID string) (*fsm.Instance, bool)
	Node(name string) (*fsm.Node, bool)
	// Instance and the ACL tokens: what permissions are checked on, and
	// /v1/acl/tokens.
	Instance(node, id string) (*fsm.Instance, bool)
	ACLToken(id string) (*fsm.ACLToken, bool)
	ACLTokens() []*fsm.ACLToken
}

// Agent is the node the API runs on.
type Agent interface {
	Node() string
	Status() api.Status
	Members() []api.Member
	// Ready returns nil once the node can serve: joined, a leader known.
	Ready() error
	// Apply writes through the Raft leader.
	Apply(ctx context.Context, cmd fsm.Command) (*fsm.Result, error)
	// RegisterService registers an instance of this node, which the agent
	// keeps in its local state; DeregisterService removes one.
	RegisterService(ctx context.Context, in *fsm.Instance) (*fsm.Result, error)
	DeregisterService(ctx context.Context, id string) (*fsm.Result, error)
	// ConsistentRead returns once the local registry holds every write
	// acknowledged before the call.
	ConsistentRead(ctx context.Context) error
	// UpdateTTLCheck feeds a TTL check and returns once the registry shows
	// the status.
	UpdateTTLCheck(ctx context.Context, checkID, status, note string) error
	SaveSnapshot(w io.Writer) error
	RestoreSnapshot(ctx context.Context, r io.Reader) error
}

// MemberWatch is an optional capability of the Agent: how many times its
// member list has changed, and a channel closed at the next change, so
// that GET /v1/members blocks on what it answers from. Without it the
// members block on the registry's node table.
type MemberWatch interface {
	MemberChanges() (uint64, <-chan struct{})
}

// LeaseClock is an optional capability of the Agent, found by type
// assertion: how long a lease stays live without another keepalive, known
// on the Raft leader and on the agent holding the lease. The listings of
// locks and elections give it as expires_in when known.
type LeaseClock interface {
	LeaseRemaining(id string) (time.Duration, bool)
}

// Keyring is the cluster's gossip keyring (/v1/operator/keyring), an
// optional capability of the Agent found by type assertion: an agent
// without it answers 400. Both calls act on every alive member.
type Keyring interface {
	ListKeys(ctx context.Context) (api.KeyringResponse, error)
	// ChangeKeys runs op (api.KeyringInstall, KeyringUse or KeyringRemove)
	// with key, a validated gossip key.
	ChangeKeys(ctx context.Context, op string, key []byte) (api.KeyringResponse, error)
}

// Holds is what this sidecar holds for its apps (election.Local).
type Holds interface {
	GrantLease(ctx context.Context, ttl time.Duration) (string, error)
	KeepAlive(ctx context.Context, id string) (time.Duration, error)
	RevokeLease(ctx context.Context, id string) error
	Lock(ctx context.Context, spec election.LockSpec) (api.LockResult, error)
	Unlock(ctx context.Context, name, lease string) error
	// UnlockToken releases only the acquisition that got token (0: Unlock).
	UnlockToken(ctx context.Context, name, lease string, token uint64) error
	// LockFence and ElectionFence compare a token with the live holder's,
	// after a quorum confirmed the local copy is current.
	LockFence(ctx context.Context, name string, token uint64) (api.FenceResult, error)
	ElectionFence(ctx context.Context, name string, token uint64) (api.FenceResult, error)
	// Transfer hands an election from a candidate of this sidecar to a
	// waiting one, demoting it first.
	Transfer(ctx context.Context, election, from, to string) (api.TransferResult, error)
	HoldLock(ctx context.Context, spec election.LockSpec, ttl time.Duration, emit election.Emit[api.LockResult]) error
	Campaign(ctx context.Context, spec election.CampaignSpec) (api.CampaignResult, error)
	Resign(ctx context.Context, election, candidate string) error
	HoldCampaign(ctx context.Context, spec election.CampaignSpec, ttl time.Duration, emit election.Emit[api.CampaignResult]) error
	Self(election string) api.SelfStatus
	WaitSelf(ctx context.Context, election string, minIndex uint64) (api.SelfStatus, uint64)
}

// Config configures the API server.
type Config struct {
	// Addr is the listen address (--http-addr).
	Addr string
	// HTTPSAddr, with TLS, serves the same API over TLS (--https-addr).
	HTTPSAddr string
	TLS       *tls.Config
	// ExecChecks allows registering exec checks through the API
	// (--enable-exec-checks=all); without it such a registration is 403.
	ExecChecks bool
	// Node is this agent's node name, a Host the API answers to.
	Node string
	// AllowedHosts are further Host names the API answers to
	// (--http-allowed-hosts); IP literals and localhost always are.
	AllowedHosts []string
	// MaxConnsPerClient bounds the connections open at once from one
	// client address (0: no bound).
	MaxConnsPerClient int
	// MaxBlockingQueries bounds the blocking queries waiting at once
	// (0: no bound).
	MaxBlockingQueries int
	// SessionTTL is the lease TTL of a connection-bound hold that names
	// none.
	SessionTTL time.Duration
	// MaxSnapshotBytes caps a snapshot restore body.
	MaxSnapshotBytes int64
	// ACL resolves request tokens (SPEC: Security); nil checks none and
	// allows everything (tests of the bare server).
	ACL Resolver
	// WriteRate and WriteBurst bound every caller's writes (non-GET
	// requests): per token, or per client address for requests without
	// one. 0: no bound.
	WriteRate  rate.Limit
	WriteBurst int
	// ReadHeaderTimeout bounds the arrival of a request's headers,
	// BodyReadTimeout that of its body (408 past it); IdleTimeout closes a
	// kept-alive connection with no request.
	ReadHeaderTimeout time.Duration
	BodyReadTimeout   time.Duration
	IdleTimeout       time.Duration
	Logger            *slog.Logger
	Registerer        prometheus.Registerer
	Gatherer          prometheus.Gatherer
}

// DefaultConfig returns the defaults of SPEC.md.
func DefaultConfig() Config {
	return Config{
		Addr:       "127.0.0.1:7080",
		SessionTTL: 10 * time.Second,
		// Registry snapshots are small; 1 GiB is the FSM's own limit.
		MaxSnapshotBytes: 1 << 30,
		// Consul's default for one client address; every local app shares
		// 127.0.0.1.
		MaxConnsPerClient: 512,
		// About 150 MiB of goroutines and buffers at most.
		MaxBlockingQueries: 16384,
		// Far above what one app writes (make bench writes about 2,000/s
		// without a token from 127.0.0.1), low enough that one runaway
		// caller cannot take the whole Raft log's throughput.
		WriteRate: 5000, WriteBurst: 5000,
		// Headers and bodies are small and local: a client slower than
		// this holds a connection for nothing.
		ReadHeaderTimeout: 10 * time.Second,
		BodyReadTimeout:   30 * time.Second,
		// Long enough for an app's keep-alive pool between its polls.
		IdleTimeout: 2 * time.Minute,
	}
}

// Server is the HTTP API of one sidecar.
type Server struct {
	cfg   Config
	log   *slog.Logger
	reg   Registry
	agent Agent
	holds Holds
	mux   *http.ServeMux

	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	// writes limits every caller's write rate; nil: no limit.
	writes *writeLimiter
	// patterns are the routes registered, in order (tests).
	patterns []string

	mu     sync.Mutex
	cancel context.CancelFunc
	srv    *http.Server
	ln     net.Listener
	tlsLn  net.Listener
	// blocking holds one token per waiting blocking query.
	blocking chan struct{}
	serveErr chan error
}

// New builds the API; Start listens.
func New(cfg Config, reg Registry, agent Agent, holds Holds) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = DefaultConfig().SessionTTL
	}
	if cfg.MaxSnapshotBytes <= 0 {
		cfg.MaxSnapshotBytes = DefaultConfig().MaxSnapshotBytes
	}
	def := DefaultConfig()
	if cfg.ReadHeaderTimeout <= 0 {
		cfg.ReadHeaderTimeout = def.ReadHeaderTimeout
	}
	if cfg.BodyReadTimeout <= 0 {
		cfg.BodyReadTimeout = def.BodyReadTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = def.IdleTimeout
	}
	s := &Server{
		cfg: cfg, log: cfg.Logger.With("component", "http"), reg: reg, agent: agent, holds: holds,
		mux: http.NewServeMux(), blocking: make(chan struct{}, max(cfg.MaxBlockingQueries, 1)),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidecar_http_requests_total",
			Help: "HTTP API requests by route pattern and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "sidecar_http_request_duration_seconds",
			Help: "HTTP API request duration by route pattern (blocking queries include their wait).",
			// 100µs to ~13s: local reads, Raft writes, and capped waits.
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9),
		}, []string{"route"}),
		writes: newWriteLimiter(cfg.WriteRate, cfg.WriteBurst),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(s.requests, s.duration)
	}
	s.routes()
	return s
}

func (s *Server) routes() {
	s.handle("GET /healthz", s.healthz)
	s.handle("GET /readyz", s.readyz)
	if s.cfg.Gatherer != nil {
		s.handleHTTP("GET /metrics",
			promhttp.HandlerFor(s.cfg.Gatherer, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	}
	s.handle("GET /v1/status", s.status)
	s.handle("GET /v1/members", s.members)
	s.handle("PUT /v1/services", s.register)
	s.handle("DELETE /v1/services/{id}", s.deregister)
	s.handle("GET /v1/services", s.services)
	s.handle("GET /v1/services/{name}", s.service)
	s.handle("PUT /v1/checks/{check_id}/{status}", s.updateCheck)
	s.handle("POST /v1/leases", s.grantLease)
	s.handle("PUT /v1/leases/{id}/keepalive", s.keepAlive)
	s.handle("DELETE /v1/leases/{id}", s.revokeLease)
	s.handle("PUT /v1/locks/{name}", s.lock)
	s.handle("DELETE /v1/locks/{name}", s.unlock)
	s.handle("GET /v1/locks", s.lockList)
	s.handle("GET /v1/locks/{name}", s.lockInfo)
	s.handle("GET /v1/locks/{name}/fence", s.lockFence)
	s.handle("PUT /v1/elections/{name}/campaign", s.campaign)
	s.handle("DELETE /v1/elections/{name}/campaign", s.resign)
	s.handle("GET /v1/elections", s.electionList)
	s.handle("GET /v1/elections/{name}", s.electionInfo)
	s.handle("GET /v1/elections/{name}/self", s.self)
	s.handle("GET /v1/elections/{name}/fence", s.electionFence)
	s.handle("PUT /v1/elections/{name}/transfer", s.transfer)
	s.handle("GET /v1/snapshot", s.saveSnapshot)
	s.handle("PUT /v1/snapshot", s.restoreSnapshot)
	s.handle("GET /v1/operator/keyring", s.listKeys)
	s.handle("PUT /v1/operator/keyring", s.changeKeys)
	s.handle("PUT /v1/acl/bootstrap", s.aclBootstrap)
	s.handle("PUT /v1/acl/tokens", s.aclSetToken)
	s.handle("GET /v1/acl/tokens", s.aclTokens)
	s.handle("GET /v1/acl/tokens/{id}", s.aclToken)
	s.handle("DELETE /v1/acl/tokens/{id}", s.aclDeleteToken)
	// The web UI: static files, no token (the page's API calls send one).
	s.handleHTTP("GET /ui/", http.StripPrefix("/ui/", ui.Handler()))
	s.handleHTTP("GET /{$}", http.RedirectHandler("/ui/", http.StatusFound))
}

// handlerFunc answers a request; a returned error becomes the JSON error
// answer with the status errors map to.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

func (s *Server) handle(pattern string, h handlerFunc) {
	s.handleHTTP(pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			s.writeError(w, r, err)
		}
	}))
}

// handleHTTP registers a route behind its permission (the permissions
// table): a route without an entry is a programming error, caught by every
// test that builds a server.
func (s *Server) handleHTTP(pattern string, h http.Handler) {
	p, ok := permissions[pattern]
	if !ok {
		panic(fmt.Sprintf("httpapi: route %q has no entry in the permissions table", pattern))
	}
	s.patterns = append(s.patterns, pattern)
	s.mux.Handle(pattern, s.instrument(pattern, s.guard(p, h)))
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Flush on the real writer.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (s *Server) instrument(route string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("handler panic", "route", route, "panic", p)
				if rec.code == 0 {
					writeJSON(rec, http.StatusInternalServerError, api.Error{Error: "internal error"})
				}
			}
			code := rec.code
			if code == 0 {
				code = http.StatusOK
			}
			s.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
			s.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
		}()
		h.ServeHTTP(rec, r)
	})
}

// ServeHTTP answers unknown routes and wrong methods with JSON errors too.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.hostAllowed(r.Host) {
		// A name that is not this agent's: a web page that rebound its own
		// name to this address (DNS rebinding) must not reach the API.
		writeJSON(w, http.StatusForbidden, api.Error{Error: fmt.Sprintf("host %q is not an address or name of this agent (see --http-allowed-hosts)", r.Host)})
		return
	}
	if _, pattern := s.mux.Handler(r); pattern != "" {
		s.mux.ServeHTTP(w, r)
		return
	}
	var allowed []string
	for _, m := range []string{http.MethodGet, http.MethodPut, http.MethodPost, http.MethodDelete} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, p := s.mux.Handler(probe); p != "" {
			allowed = append(allowed, m)
		}
	}
	if len(allowed) > 0 {
		for _, m := range allowed {
			w.Header().Add("Allow", m)
		}
		writeJSON(w, http.StatusMethodNotAllowed, api.Error{Error: fmt.Sprintf("method %s not allowed on %s", r.Method, r.URL.Path)})
		return
	}
	writeJSON(w, http.StatusNotFound, api.Error{Error: fmt.Sprintf("no route %s %s", r.Method, r.URL.Path)})
}

// hostAllowed reports whether a request's Host names this agent: an IP
// literal, localhost, the node name, or an allowed host (any port).
func (s *Server) hostAllowed(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if host == "" || host == "localhost" || strings.HasSuffix(host, ".localhost") || net.ParseIP(host) != nil {
		// An empty Host is HTTP/1.0; a browser always sends one.
		return true
	}
	if s.cfg.Node != "" && host == strings.ToLower(s.cfg.Node) {
		return true
	}
	for _, a := range s.cfg.AllowedHosts {
		if host == strings.TrimSuffix(strings.ToLower(a), ".") {
			return true
		}
	}
	return false
}

// Start listens on cfg.Addr and serves in the background.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen http %s: %w", s.cfg.Addr, err)
	}
	ln = newClientLimitListener(ln, s.cfg.MaxConnsPerClient)
	// Request contexts derive from base, so that Shutdown ends blocking
	// queries and connection-bound holds (releasing the holds) instead of
	// waiting for them.
	base, cancel := context.WithCancel(context.Background())
	srv := &http.Server{
		Handler:           s,
		BaseContext:       func(net.Listener) context.Context { return base },
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		// No read timeout (readBody sets one per body) and no write
		// timeout: blocking queries and holds stream for long.
		IdleTimeout: s.cfg.IdleTimeout,
		ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	var tlsLn net.Listener
	if s.cfg.HTTPSAddr != "" && s.cfg.TLS != nil {
		raw, err := net.Listen("tcp", s.cfg.HTTPSAddr)
		if err != nil {
			ln.Close()
			cancel()
			return fmt.Errorf("listen https %s: %w", s.cfg.HTTPSAddr, err)
		}
		tlsLn = tls.NewListener(newClientLimitListener(raw, s.cfg.MaxConnsPerClient), s.cfg.TLS)
	}
	s.mu.Lock()
	s.srv, s.ln, s.tlsLn, s.serveErr, s.cancel = srv, ln, tlsLn, make(chan error, 2), cancel
	s.mu.Unlock()
	go func() { s.serveErr <- srv.Serve(ln) }()
	s.log.Info("http api listening", "addr", ln.Addr().String())
	if tlsLn != nil {
		go func() { s.serveErr <- srv.Serve(tlsLn) }()
		s.log.Info("https api listening", "addr", tlsLn.Addr().String())
	}
	return nil
}

// HTTPSAddr is the bound HTTPS address, "" without one.
func (s *Server) HTTPSAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tlsLn == nil {
		return ""
	}
	return s.tlsLn.Addr().String()
}

// Addr is the bound address (useful with port 0).
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Shutdown stops accepting, ends open streams (their holds are released as
// their contexts end) and waits for handlers until ctx ends. Safe twice.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	srv, cancel := s.srv, s.cancel
	s.srv = nil
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	cancel()
	err := srv.Shutdown(ctx)
	if err != nil {
		srv.Close()
	}
	if s.cfg.Registerer != nil {
		s.cfg.Registerer.Unregister(s.requests)
		s.cfg.Registerer.Unregister(s.duration)
	}
	return err
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// statusOf maps an error to its HTTP status.
func statusOf(err error) int {
	var bad *badRequest
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return http.StatusRequestEntityTooLarge
	case errors.As(err, &bad), errors.Is(err, fsm.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, errTooLarge), errors.Is(err, errSnapshotTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, fsm.ErrCorruptSnapshot):
		return http.StatusBadRequest
	case errors.Is(err, fsm.ErrUnknownNode), errors.Is(err, fsm.ErrUnknownInstance), errors.Is(err, fsm.ErrUnknownCheck),
		errors.Is(err, fsm.ErrUnknownLease), errors.Is(err, fsm.ErrUnknownLock), errors.Is(err, fsm.ErrUnknownElection),
		errors.Is(err, errNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrForbidden), errors.Is(err, acl.ErrDenied), errors.Is(err, fsm.ErrNotOwner),
		errors.Is(err, election.ErrPermissionDenied):
		return http.StatusForbidden
	case errors.Is(err, fsm.ErrACLBootstrapped), errors.Is(err, fsm.ErrTokenExists):
		return http.StatusConflict
	case errors.Is(err, fsm.ErrUnknownToken):
		return http.StatusNotFound
	case errors.Is(err, errTooMany):
		return http.StatusTooManyRequests
	case errors.Is(err, errSlowBody):
		return http.StatusRequestTimeout
	case errors.Is(err, fsm.ErrNotHolder), errors.Is(err, fsm.ErrNotCandidate), errors.Is(err, fsm.ErrLeaseExists),
		errors.Is(err, fsm.ErrStaleToken), errors.Is(err, fsm.ErrNotLeading),
		errors.Is(err, fsm.ErrCheckConflict), errors.Is(err, fsm.ErrChanged), errors.Is(err, errConflict), errors.Is(err, election.ErrServiceNotPassing):
		return http.StatusConflict
	case errors.Is(err, election.ErrNotLeader), errors.Is(err, election.ErrUnknownOutcome),
		errors.Is(err, election.ErrShutdown), errors.Is(err, election.ErrClosed), errors.Is(err, errNotReady),
		errors.Is(err, election.ErrTransferUnconfirmed):
		return http.StatusServiceUnavailable
	case errors.Is(err, election.ErrDiskFull):
		return http.StatusInsufficientStorage
	case errors.Is(err, localstate.ErrDiskFull):
		// SPEC Durability: a full disk refuses writes with 507.
		return http.StatusInsufficientStorage
	case errors.Is(err, localstate.ErrReadOnly), errors.Is(err, localstate.ErrDiskFailed),
		errors.Is(err, localstate.ErrDamaged), errors.Is(err, fsm.ErrHalted):
		return http.StatusServiceUnavailable
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	case errors.Is(err, context.Canceled):
		// The client went away; nobody reads this.
		return 499
	}
	return http.StatusInternalServerError
}

// waitSlot takes a place for a blocking query, or says there is none.
func (s *Server) waitSlot() (release func(), err error) {
	if s.cfg.MaxBlockingQueries <= 0 {
		return func() {}, nil
	}
	select {
	case s.blocking <- struct{}{}:
		return func() { <-s.blocking }, nil
	default:
		return nil, fmt.Errorf("%w: %d blocking queries are waiting already; retry, or read without ?index", errTooMany, s.cfg.MaxBlockingQueries)
	}
}

var (
	// ErrForbidden: the caller may not do this (403).
	ErrForbidden = errors.New("forbidden")
	errTooMany   = errors.New("too many requests")
	// errSnapshotTooLarge: a restore past MaxSnapshotBytes (413).
	errSnapshotTooLarge = errors.New("snapshot too large")
	errNotFound         = errors.New("not found")
	errConflict         = errors.New("conflict")
	errNotReady         = errors.New("not ready")
)

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	code := statusOf(err)
	if code == http.StatusTooManyRequests {
		retry := "1"
		var rl *rateLimited
		if errors.As(err, &rl) {
			retry = rl.retryAfter()
		}
		w.Header().Set("Retry-After", retry)
	}
	if code >= 500 && code != http.StatusServiceUnavailable {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeJSON(w, code, api.Error{Error: err.Error()})
}
