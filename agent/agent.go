// Package agent assembles one sidecar: the Raft server and registry, the
// holds kept for local apps, the HTTP API and DNS, and shuts them down in
// reverse order. cmd/sidecar turns flags into a Config and calls Run.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/time/rate"

	"github.com/sidecarhq/sidecar/acl"
	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/discovery"
	"github.com/sidecarhq/sidecar/dnsserver"
	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/fsm"
	"github.com/sidecarhq/sidecar/healthcheck"
	"github.com/sidecarhq/sidecar/httpapi"
	"github.com/sidecarhq/sidecar/localstate"
	"github.com/sidecarhq/sidecar/tlsutil"
)

// Config is what the agent needs to run; cmd/sidecar fills it from flags,
// environment and config file.
type Config struct {
	Name    string
	DataDir string
	Server  bool
	// BootstrapExpect servers form the cluster; 1 bootstraps alone.
	BootstrapExpect int
	Dev             bool
	BindAddr        string
	AdvertiseAddr   string
	RaftAddr        string
	HTTPAddr        string
	DNSAddr         string
	Domain          string
	Recursors       []string
	DNSTTL          time.Duration
	SessionTTL      time.Duration

	SnapshotThreshold uint64
	SnapshotInterval  time.Duration

	// Join lists gossip addresses to join (retried until one answers).
	Join []string
	// EncryptKey is the 32-byte gossip key, nil for none.
	EncryptKey []byte
	// ReapAfter is how long a failed server keeps its Raft vote.
	ReapAfter time.Duration
	// Gossip overrides the gossip settings (tests); nil: defaults.
	Gossip *discovery.Config
	// Checks overrides the health check settings (tests); nil: defaults.
	Checks *healthcheck.Config
	// OnReady, when set, is called once the agent serves (systemd's
	// READY=1).
	OnReady func()

	// Services are registered, and Elections campaigned for, at start.
	Services  []api.ServiceRegistration
	Elections []Election

	// Raft overrides the Raft server settings (tests); zero: defaults.
	Raft *election.ServerConfig
	// OnFatal is told when the Raft log fails in a way the server cannot
	// recover from (a damaged entry read back, a failed write or fsync).
	// Nil: the failure is logged and the process exits with status 1 at
	// once (fail-stop: Raft must not go on with state it may not have
	// persisted; a supervisor restarts it).
	OnFatal func(error)
	// TLS, when set, secures the Raft/RPC port (mutual TLS 1.3 against the
	// cluster CA) and the HTTPS API; nil: plain text.
	TLS *tlsutil.Loader
	// HTTPSAddr serves the HTTP API over TLS too ("" for none).
	HTTPSAddr string
	// ExecChecks allows exec checks: "" none, "local" from the config
	// file only, "all" also through the HTTP API (--enable-exec-checks).
	ExecChecks string
	// AllowedHosts are Host names the HTTP API answers to besides IP
	// literals, localhost and the node name (--http-allowed-hosts).
	AllowedHosts []string
	// HTTP API limits; zero: the defaults (httpapi.DefaultConfig), -1: no
	// bound.
	HTTPMaxConnsPerClient, HTTPMaxBlockingQueries int
	// HTTPWriteRate (writes per second) and HTTPWriteBurst bound each
	// token's writes (each client address's without a token); zero: the
	// defaults, -1: no bound.
	HTTPWriteRate  float64
	HTTPWriteBurst int
	// HTTP timeouts: of a request's headers, of its body, of an idle
	// kept-alive connection; zero: the defaults.
	HTTPReadHeaderTimeout, HTTPReadTimeout, HTTPIdleTimeout time.Duration
	// MaxRestoreBytes bounds a snapshot restore's body; zero: 1 GiB.
	MaxRestoreBytes int64
	// AntiEntropyInterval is the backstop between comparisons of the
	// registry with the local state when nothing changed; zero: 30s.
	AntiEntropyInterval time.Duration
	// ACLDefaultPolicy is "allow" (default) or "deny"
	// (--acl-default-policy); ACLDNSToken the secret DNS answers are read
	// with (--acl-dns-token; "": the anonymous rules).
	ACLDefaultPolicy string
	ACLDNSToken      string
}

// Values of Config.ExecChecks.
const (
	ExecChecksLocal = "local"
	ExecChecksAll   = "all"
)

// Election is a candidacy from the config file.
type Election struct {
	Name, Candidate, Value, Service string
}

// Agent is one running sidecar.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	metrics *prometheus.Registry

	gossip    *discovery.Gossip
	server    *election.Server     // nil on a client
	formation *discovery.Formation // nil on a client
	replica   *election.Replica    // nil on a server
	remote    *election.Remote
	reg       *fsm.FSM
	// acl resolves request tokens against the registry's tokens.
	acl    *acl.Resolver
	local  *election.Local
	http   *httpapi.Server
	dns    *dnsserver.Server
	checks *healthcheck.Runner
	// state is what this agent owns (its registrations), antiEntropy keeps
	// the registry in line with it.
	state       *localstate.Store
	antiEntropy *localstate.AntiEntropy

	stopBackground context.CancelFunc
	background     sync.WaitGroup

	mu     sync.Mutex
	ready  bool
	closed bool
}

// New builds an agent. Nothing listens until Run but gossip and Raft.
func New(cfg Config, log *slog.Logger) (a *Agent, err error) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Dev {
		cfg.Server = true
	}
	a = &Agent{cfg: cfg, log: log, metrics: prometheus.NewRegistry()}
	// SPEC: every metric is prefixed sidecar_, the runtime's too.
	prometheus.WrapRegistererWithPrefix("sidecar_", a.metrics).MustRegister(
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var closers []func()
	defer func() {
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i]()
			}
		}
	}()

	// The local state first: a damaged one stops the start before Raft
	// or gossip begins.
	statePath := ""
	if !cfg.Dev && cfg.DataDir != "" {
		statePath = filepath.Join(cfg.DataDir, localstate.FileName)
	}
	state, err := localstate.Open(statePath)
	if err != nil {
		return nil, err
	}
	closers = append(closers, func() { state.Close() })
	a.state = state

	if cfg.Server {
		sc := election.DefaultServerConfig()
		if cfg.Raft != nil {
			sc = *cfg.Raft
		}
		sc.Node = cfg.Name
		sc.DataDir = cfg.DataDir
		sc.InMemory = cfg.Dev
		if !cfg.Dev {
			sc.RaftAddr = cfg.RaftAddr
			if cfg.AdvertiseAddr != "" {
				_, port, err := net.SplitHostPort(cfg.RaftAddr)
				if err != nil {
					return nil, fmt.Errorf("raft address %q: %w", cfg.RaftAddr, err)
				}
				sc.AdvertiseAddr = net.JoinHostPort(cfg.AdvertiseAddr, port)
			}
		}
		// One expected server bootstraps alone at once; more bootstrap
		// together through gossip.
		sc.Bootstrap = cfg.Dev || cfg.BootstrapExpect == 1
		// A server with an empty data dir that joins a cluster may be one
		// whose disk was wiped: it neither votes nor stands for election
		// until the leader has caught it up and promoted it.
		sc.GateFresh = !cfg.Dev
		if cfg.SnapshotThreshold > 0 {
			sc.SnapshotThreshold = cfg.SnapshotThreshold
		}
		if cfg.SnapshotInterval > 0 {
			sc.SnapshotInterval = cfg.SnapshotInterval
		}
		sc.Logger = log
		sc.Registerer = a.metrics
		sc.StoreFatal = cfg.OnFatal
		if sc.StoreFatal == nil {
			sc.StoreFatal = func(err error) {
				log.Error("stopping: the raft log cannot be trusted", "err", err)
				os.Exit(1)
			}
		}
		if cfg.TLS != nil {
			sc.TLS = cfg.TLS
		}
		srv, err := election.NewServer(sc)
		if err != nil {
			return nil, err
		}
		closers = append(closers, func() { srv.Close() })
		a.server, a.reg = srv, srv.FSM()
	} else {
		a.reg = fsm.New()
	}

	policy, err := acl.ParsePolicy(cfg.ACLDefaultPolicy)
	if err != nil {
		return nil, err
	}
	a.acl = acl.NewResolver(a.reg, policy)
	if a.server != nil {
		// As the Raft leader, it checks again the token of every write
		// and keepalive forwarded to it.
		a.server.SetACL(a.acl)
	}

	gc := discovery.DefaultConfig()
	if cfg.Gossip != nil {
		gc = *cfg.Gossip
	}
	gc.Name = cfg.Name
	gc.BindAddr = cfg.BindAddr
	gc.AdvertiseAddr = cfg.AdvertiseAddr
	gc.Join = cfg.Join
	gc.EncryptKey = cfg.EncryptKey
	gc.KeyringFile = a.keyringFile()
	gc.Logger = log
	gc.Registerer = a.metrics
	gc.Meta = discovery.Meta{Role: a.role(), HTTPAddr: cfg.HTTPAddr, DNSAddr: cfg.DNSAddr, BootstrapExpect: cfg.BootstrapExpect}
	if a.server != nil && !cfg.Dev {
		gc.Meta.RaftAddr = string(a.server.Addr())
	}
	g, err := discovery.New(gc)
	if err != nil {
		return nil, err
	}
	closers = append(closers, func() { g.Shutdown() })
	a.gossip = g

	a.remote = election.NewRemote(a.server, a.serverAddrs)
	if a.server == nil && cfg.TLS != nil {
		// A server dials with its own certificate; a client with its
		// client certificate, wanting a server's from every server.
		a.remote.UseTLS(cfg.TLS)
	}
	if a.server != nil {
		fc := discovery.DefaultFormationConfig()
		if cfg.ReapAfter > 0 {
			fc.ReapAfter = cfg.ReapAfter
		}
		fc.BootstrapExpect = cfg.BootstrapExpect
		if cfg.Raft != nil {
			// Ten heartbeat timeouts, as with the default timings.
			fc.PromoteAfter = 10 * cfg.Raft.HeartbeatTimeout
		}
		fc.Logger = log
		a.formation = discovery.NewFormation(fc, g, a.server, a.remote)
	} else {
		a.replica = election.NewReplica(a.reg, a.serverAddrs, log)
		if cfg.TLS != nil {
			a.replica.UseTLS(cfg.TLS)
		}
		a.replica.Prefer(a.leaderAddr)
		a.remote.FedBy(a.replica.Server)
	}

	a.local = election.NewLocal(election.LocalConfig{
		Node: cfg.Name, SessionTTL: cfg.SessionTTL, Logger: log, Registerer: a.metrics,
	}, a.remote, a.reg)

	cc := healthcheck.DefaultConfig()
	if cfg.Checks != nil {
		cc = *cfg.Checks
	}
	cc.Logger = log
	cc.Registerer = a.metrics
	cc.ExecEnabled = cfg.ExecChecks == ExecChecksLocal || cfg.ExecChecks == ExecChecksAll
	checks, err := healthcheck.New(cc, checkNotifier{a})
	if err != nil {
		return nil, err
	}
	closers = append(closers, func() { checks.Close() })
	a.checks = checks

	a.antiEntropy = localstate.NewAntiEntropy(localstate.Config{
		Node: cfg.Name,
		NodeEntry: func() *fsm.RegisterNode {
			return &fsm.RegisterNode{Name: cfg.Name, Address: a.advertiseIP(), Meta: map[string]string{"role": a.role()}}
		},
		Interval: cfg.AntiEntropyInterval, CheckStatus: checks.RegistryStatus, Forgotten: checks.RemoveInstance,
		Logger: log, Registerer: a.metrics,
	}, a.state, a.reg, a)

	hc := httpapi.DefaultConfig()
	hc.Addr = cfg.HTTPAddr
	hc.Node, hc.AllowedHosts = cfg.Name, cfg.AllowedHosts
	hc.ExecChecks = cfg.ExecChecks == ExecChecksAll
	if cfg.HTTPMaxConnsPerClient != 0 {
		hc.MaxConnsPerClient = max(cfg.HTTPMaxConnsPerClient, 0)
	}
	if cfg.MaxRestoreBytes > 0 {
		hc.MaxSnapshotBytes = cfg.MaxRestoreBytes
	}
	if cfg.HTTPMaxBlockingQueries != 0 {
		hc.MaxBlockingQueries = max(cfg.HTTPMaxBlockingQueries, 0)
	}
	if cfg.TLS != nil && cfg.HTTPSAddr != "" {
		hc.HTTPSAddr, hc.TLS = cfg.HTTPSAddr, cfg.TLS.HTTPSConfig()
	}
	hc.SessionTTL = cfg.SessionTTL
	hc.ACL = a.acl
	if cfg.HTTPWriteRate != 0 {
		hc.WriteRate = rate.Limit(max(cfg.HTTPWriteRate, 0))
	}
	if cfg.HTTPWriteBurst > 0 {
		hc.WriteBurst = cfg.HTTPWriteBurst
	}
	if cfg.HTTPReadHeaderTimeout > 0 {
		hc.ReadHeaderTimeout = cfg.HTTPReadHeaderTimeout
	}
	if cfg.HTTPReadTimeout > 0 {
		hc.BodyReadTimeout = cfg.HTTPReadTimeout
	}
	if cfg.HTTPIdleTimeout > 0 {
		hc.IdleTimeout = cfg.HTTPIdleTimeout
	}
	hc.Logger = log
	hc.Registerer = a.metrics
	hc.Gatherer = a.metrics
	a.http = httpapi.New(hc, a.reg, a, holds{a.local, a})

	dc := dnsserver.DefaultConfig()
	dc.Addr = cfg.DNSAddr
	if cfg.Domain != "" {
		dc.Domain = cfg.Domain
	}
	dc.Recursors = cfg.Recursors
	dc.NodeName = cfg.Name
	if cfg.DNSTTL > 0 {
		dc.ServiceTTL, dc.NodeTTL, dc.LeaderTTL = cfg.DNSTTL, cfg.DNSTTL, cfg.DNSTTL
	}
	// DNS answers follow --acl-dns-token (SPEC: Security), resolved again
	// whenever the registry's tokens change.
	dnsACL := a.acl.Fixed(cfg.ACLDNSToken, func() uint64 { return a.reg.TableIndex(fsm.TableACL) })
	dc.ACL = func() dnsserver.Authorizer { return dnsACL() }
	dc.Logger = log
	dc.Registerer = a.metrics
	dns, err := dnsserver.New(dc, a.reg, a)
	if err != nil {
		return nil, err
	}
	a.dns = dns
	return a, nil
}

// leaderAddr is the RPC address of the Raft leader, "" when unknown. A
// client streams from the leader when it can: a follower learns of commits
// a heartbeat later, and every read-your-write through the client would
// wait for that.
func (a *Agent) leaderAddr() string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	st, err := a.remote.ServerStatus(ctx)
	if err != nil || st.Leader == "" {
		return ""
	}
	if m, ok := a.gossip.Member(st.Leader); ok && m.Status == discovery.StatusAlive {
		return m.Meta.RaftAddr
	}
	return ""
}

// serverAddrs lists the RPC addresses of alive servers, from gossip.
func (a *Agent) serverAddrs() []string {
	var out []string
	for _, m := range a.gossip.Members() {
		if m.Status == discovery.StatusAlive && m.Meta.IsServer() && m.Meta.RaftAddr != "" {
			out = append(out, m.Meta.RaftAddr)
		}
	}
	return out
}

// DNSAddr is the bound DNS address.
func (a *Agent) DNSAddr() string { return a.dns.Addr() }

// Metrics is the agent's own Prometheus registry.
func (a *Agent) Metrics() *prometheus.Registry { return a.metrics }

// FSM is the agent's copy of the registry.
func (a *Agent) FSM() *fsm.FSM { return a.reg }

// Local is what the agent holds for its apps.
func (a *Agent) Local() *election.Local { return a.local }

// HTTPAddr is the bound HTTP address.
func (a *Agent) HTTPAddr() string { return a.http.Addr() }

// HTTPSAddr is the bound HTTPS address, "" without one.
func (a *Agent) HTTPSAddr() string { return a.http.HTTPSAddr() }

// Run serves until ctx ends, then shuts down gracefully: HTTP and DNS stop
// (ending connection-bound holds), candidacies resign and locks are
// released, leadership moves to another server, the node leaves gossip, and
// Raft and its stores close.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.http.Start(); err != nil {
		a.shutdown()
		return err
	}
	if err := a.dns.Start(); err != nil {
		a.shutdown()
		return err
	}
	bg, stop := context.WithCancel(context.Background())
	a.stopBackground = stop
	if err := a.gossip.Start(bg); err != nil {
		a.shutdown()
		return err
	}
	a.goBackground(func() { a.forwardEvents(bg) })
	if a.formation != nil {
		a.goBackground(func() { a.formation.Run(bg) })
	}
	if a.replica != nil {
		a.goBackground(func() { a.replica.Run(bg) })
	}
	jctx, stopJoin := context.WithCancel(ctx)
	defer stopJoin()
	startErr := make(chan error, 1)
	go func() { startErr <- a.join(jctx, bg) }()
	for ctx.Err() == nil {
		select {
		case err := <-startErr:
			if err != nil && ctx.Err() == nil {
				if ferr := a.failure(); ferr != nil {
					err = ferr
				}
				a.shutdown()
				return err
			}
			startErr = nil
		case <-ctx.Done():
		case <-a.state.Damaged():
			stopJoin()
			a.shutdown()
			return a.failure()
		case <-a.reg.Halted():
			stopJoin()
			a.shutdown()
			return a.failure()
		}
	}
	a.log.Info("shutting down")
	return a.shutdown()
}

// failure is why the agent cannot go on, or nil: its local state found
// damaged, or its registry halted on an entry it cannot decode.
func (a *Agent) failure() error {
	if err := a.reg.Err(); err != nil {
		if a.server != nil {
			return fmt.Errorf("%w: if the other servers run a newer sidecar, upgrade this one; "+
				"else its Raft log is damaged: stop it, empty its data dir (%s) and start it again: it rejoins and copies the registry from the others",
				err, a.cfg.DataDir)
		}
		return fmt.Errorf("%w: if the servers run a newer sidecar, upgrade this agent; else restart it: it copies the registry again", err)
	}
	select {
	case <-a.state.Damaged():
		return a.state.Err()
	default:
	}
	return nil
}

func (a *Agent) goBackground(f func()) {
	a.background.Add(1)
	go func() {
		defer a.background.Done()
		f()
	}()
}

// forwardEvents wakes the formation on every gossip event.
func (a *Agent) forwardEvents(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-a.gossip.Events():
			if !ok {
				return
			}
			if a.formation != nil {
				a.formation.Wake()
			}
		}
	}
}

// join waits until writes can reach a leader, records this node, opens the
// node session, brings back what the local state holds (and what the config
// file declares), and campaigns again; only then is the agent ready.
func (a *Agent) join(ctx, bg context.Context) error {
	if err := a.retry(ctx, func() error {
		_, err := a.Apply(ctx, &fsm.RegisterNode{Name: a.cfg.Name, Address: a.advertiseIP(), Meta: map[string]string{"role": a.role()}})
		return err
	}); err != nil {
		return fmt.Errorf("register node: %w", err)
	}
	if err := a.local.Start(ctx); err != nil {
		return err
	}
	if err := a.startLocalState(ctx, bg); err != nil {
		return err
	}
	if err := a.campaignLocal(ctx); err != nil {
		return err
	}
	a.mu.Lock()
	a.ready = true
	a.mu.Unlock()
	a.log.Info("agent ready", "node", a.cfg.Name, "role", a.role(), "http_addr", a.http.Addr(), "dns_addr", a.dns.Addr(),
		"local_instances", a.state.Len())
	if a.cfg.OnReady != nil {
		a.cfg.OnReady()
	}
	return nil
}

// retry retries f while no leader is reachable or a leader change leaves
// its outcome unknown, until ctx ends: a cluster forms after its servers
// start, and elections may still churn then. Only for writes that may be
// applied twice (registering the node and config services: upserts).
func (a *Agent) retry(ctx context.Context, f func() error) error {
	for {
		err := f()
		if err == nil || !(errors.Is(err, election.ErrNotLeader) || errors.Is(err, election.ErrUnknownOutcome)) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (a *Agent) shutdown() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	a.ready = false
	a.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var errs []error
	if err := a.http.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("http shutdown: %w", err))
	}
	if err := a.dns.Close(); err != nil {
		errs = append(errs, fmt.Errorf("dns shutdown: %w", err))
	}
	if err := a.checks.Close(); err != nil {
		errs = append(errs, fmt.Errorf("stop checks: %w", err))
	}
	if err := a.local.Close(ctx); err != nil {
		errs = append(errs, fmt.Errorf("release holds: %w", err))
	}
	if a.server != nil && a.server.IsLeader() && len(a.server.Status().Peers) > 1 {
		if err := a.server.TransferLeadership(); err != nil {
			a.log.Warn("leadership transfer failed", "err", err)
		}
	}
	if err := a.gossip.Leave(5 * time.Second); err != nil && !errors.Is(err, discovery.ErrShutdown) {
		a.log.Warn("gossip leave", "err", err)
	}
	if a.stopBackground != nil {
		a.stopBackground()
	}
	a.background.Wait()
	if err := a.gossip.Shutdown(); err != nil {
		errs = append(errs, fmt.Errorf("gossip shutdown: %w", err))
	}
	a.remote.Close()
	if a.server != nil {
		if err := a.server.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := a.state.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close local state: %w", err))
	}
	return errors.Join(errs...)
}

// Kill stops the agent as if its process died: no resign, no release, no
// gossip leave. For tests of failures.
func (a *Agent) Kill() {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	a.closed = true
	a.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	a.gossip.Shutdown()
	if a.server != nil {
		a.server.Close()
	}
	a.http.Shutdown(ctx)
	a.dns.Close()
	if a.stopBackground != nil {
		a.stopBackground()
	}
	a.background.Wait()
	a.checks.Close()
	a.local.Abandon()
	a.remote.Close()
	a.state.Close()
}

func (a *Agent) role() string {
	if a.cfg.Server || a.cfg.Dev {
		return "server"
	}
	return "client"
}

func (a *Agent) advertiseIP() string {
	if addr := a.gossip.LocalMember().Addr; addr != "" {
		return addr
	}
	if a.cfg.AdvertiseAddr != "" {
		return a.cfg.AdvertiseAddr
	}
	if host, _, err := net.SplitHostPort(a.cfg.BindAddr); err == nil {
		return host
	}
	return "127.0.0.1"
}

// Gossip is the agent's membership (tests).
func (a *Agent) Gossip() *discovery.Gossip { return a.gossip }

// Server is the agent's Raft server, nil on a client (tests).
func (a *Agent) Server() *election.Server { return a.server }
