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
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/dnsserver"
	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/fsm"
	"github.com/sidecarhq/sidecar/httpapi"
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

	// Services are registered, and Elections campaigned for, at start.
	Services  []api.ServiceRegistration
	Elections []Election

	// Raft overrides the Raft server settings (tests); zero: defaults.
	Raft *election.ServerConfig
}

// Election is a candidacy from the config file.
type Election struct {
	Name, Candidate, Value, Service string
}

// Agent is one running sidecar.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	metrics *prometheus.Registry

	server *election.Server
	local  *election.Local
	http   *httpapi.Server
	dns    *dnsserver.Server

	mu     sync.Mutex
	ready  bool
	closed bool
}

// New builds an agent. Nothing listens until Start.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if !cfg.Server && !cfg.Dev {
		return nil, errors.New("agent: client mode (no --server) needs the cluster support, not in this build yet; run with --server or --dev")
	}
	if cfg.BootstrapExpect > 1 {
		return nil, fmt.Errorf("agent: --bootstrap-expect %d needs gossip cluster formation, not in this build yet; use 1", cfg.BootstrapExpect)
	}
	a := &Agent{cfg: cfg, log: log, metrics: prometheus.NewRegistry()}
	// SPEC: every metric is prefixed sidecar_, the runtime's too.
	prometheus.WrapRegistererWithPrefix("sidecar_", a.metrics).MustRegister(
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

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
	sc.Bootstrap = cfg.Dev || cfg.BootstrapExpect <= 1
	if cfg.SnapshotThreshold > 0 {
		sc.SnapshotThreshold = cfg.SnapshotThreshold
	}
	if cfg.SnapshotInterval > 0 {
		sc.SnapshotInterval = cfg.SnapshotInterval
	}
	sc.Logger = log
	sc.Registerer = a.metrics
	srv, err := election.NewServer(sc)
	if err != nil {
		return nil, err
	}
	a.server = srv
	a.local = election.NewLocal(election.LocalConfig{
		Node: cfg.Name, SessionTTL: cfg.SessionTTL, Logger: log, Registerer: a.metrics,
	}, a, srv.FSM())

	hc := httpapi.DefaultConfig()
	hc.Addr = cfg.HTTPAddr
	hc.SessionTTL = cfg.SessionTTL
	hc.Logger = log
	hc.Registerer = a.metrics
	hc.Gatherer = a.metrics
	a.http = httpapi.New(hc, srv.FSM(), a, a.local)

	dc := dnsserver.DefaultConfig()
	dc.Addr = cfg.DNSAddr
	if cfg.Domain != "" {
		dc.Domain = cfg.Domain
	}
	dc.Recursors = cfg.Recursors
	if cfg.DNSTTL > 0 {
		dc.ServiceTTL, dc.NodeTTL, dc.LeaderTTL = cfg.DNSTTL, cfg.DNSTTL, cfg.DNSTTL
	}
	dc.Logger = log
	dc.Registerer = a.metrics
	dns, err := dnsserver.New(dc, srv.FSM(), a)
	if err != nil {
		srv.Close()
		return nil, err
	}
	a.dns = dns
	return a, nil
}

// DNSAddr is the bound DNS address.
func (a *Agent) DNSAddr() string { return a.dns.Addr() }

// Metrics is the agent's own Prometheus registry.
func (a *Agent) Metrics() *prometheus.Registry { return a.metrics }

// FSM is the agent's copy of the registry.
func (a *Agent) FSM() *fsm.FSM { return a.server.FSM() }

// Local is what the agent holds for its apps.
func (a *Agent) Local() *election.Local { return a.local }

// HTTPAddr is the bound HTTP address.
func (a *Agent) HTTPAddr() string { return a.http.Addr() }

// Run serves until ctx ends, then shuts down gracefully: HTTP and DNS stop
// (ending connection-bound holds), candidacies resign and locks are
// released, Raft and its stores close.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.http.Start(); err != nil {
		a.server.Close()
		return err
	}
	if err := a.dns.Start(); err != nil {
		a.shutdown()
		return err
	}
	startErr := make(chan error, 1)
	go func() { startErr <- a.join(ctx) }()
	select {
	case err := <-startErr:
		if err != nil && ctx.Err() == nil {
			a.shutdown()
			return err
		}
	case <-ctx.Done():
	}
	<-ctx.Done()
	a.log.Info("shutting down")
	return a.shutdown()
}

// join waits for a Raft leader, records this node, opens the node session
// and registers what the config file declares.
func (a *Agent) join(ctx context.Context) error {
	for {
		if leader, _ := a.server.Leader(); leader != "" {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err := a.retry(ctx, func() error {
		_, err := a.Apply(ctx, &fsm.RegisterNode{Name: a.cfg.Name, Address: a.advertiseIP(), Meta: map[string]string{"role": a.role()}})
		return err
	}); err != nil {
		return fmt.Errorf("register node: %w", err)
	}
	if err := a.local.Start(ctx); err != nil {
		return err
	}
	for _, svc := range a.cfg.Services {
		in, err := httpapi.InstanceFromRegistration(svc, a.cfg.Name)
		if err != nil {
			return fmt.Errorf("service %q from config: %w", svc.ID, err)
		}
		if _, err := a.Apply(ctx, &fsm.RegisterInstance{Instance: *in}); err != nil {
			return fmt.Errorf("register service %q: %w", svc.ID, err)
		}
	}
	for _, e := range a.cfg.Elections {
		cand := e.Candidate
		if cand == "" {
			cand = a.cfg.Name
		}
		if _, err := a.local.Campaign(ctx, election.CampaignSpec{Election: e.Name, Candidate: cand, Value: e.Value, Service: e.Service}); err != nil {
			return fmt.Errorf("campaign %q from config: %w", e.Name, err)
		}
	}
	a.mu.Lock()
	a.ready = true
	a.mu.Unlock()
	a.log.Info("agent ready", "node", a.cfg.Name, "http_addr", a.http.Addr())
	return nil
}

func (a *Agent) retry(ctx context.Context, f func() error) error {
	for {
		err := f()
		if err == nil || !errors.Is(err, election.ErrNotLeader) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
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
	if err := a.local.Close(ctx); err != nil {
		errs = append(errs, fmt.Errorf("release holds: %w", err))
	}
	if err := a.server.TransferLeadership(); err != nil && len(a.server.Status().Peers) > 1 {
		errs = append(errs, err)
	}
	if err := a.server.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (a *Agent) role() string {
	if a.cfg.Server || a.cfg.Dev {
		return "server"
	}
	return "client"
}

func (a *Agent) advertiseIP() string {
	if a.cfg.AdvertiseAddr != "" {
		return a.cfg.AdvertiseAddr
	}
	if host, _, err := net.SplitHostPort(a.cfg.BindAddr); err == nil {
		return host
	}
	return "127.0.0.1"
}

// Node implements httpapi.Agent.
func (a *Agent) Node() string { return a.cfg.Name }

// Status implements httpapi.Agent.
func (a *Agent) Status() api.Status { return a.server.Status() }

// Members lists the nodes of the cluster; until gossip exists, this node.
func (a *Agent) Members() []api.Member {
	port := 0
	if _, p, err := net.SplitHostPort(a.cfg.BindAddr); err == nil {
		port, _ = strconv.Atoi(p)
	}
	return []api.Member{{Name: a.cfg.Name, Addr: a.advertiseIP(), Port: port, Role: a.role(), Status: "alive"}}
}

// Ready implements httpapi.Agent: a leader is known and this node joined.
func (a *Agent) Ready() error {
	if leader, _ := a.server.Leader(); leader == "" {
		return errors.New("no raft leader known")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.ready {
		return errors.New("agent still joining")
	}
	return nil
}

// Apply writes through Raft.
func (a *Agent) Apply(ctx context.Context, cmd fsm.Command) (*fsm.Result, error) {
	return a.server.Apply(ctx, cmd)
}

// KeepAlive implements election.Backend.
func (a *Agent) KeepAlive(ctx context.Context, id string) (time.Duration, error) {
	return a.server.KeepAlive(ctx, id)
}

// ConsistentRead implements httpapi.Agent.
func (a *Agent) ConsistentRead(ctx context.Context) error { return a.server.ConsistentRead(ctx) }

// SaveSnapshot implements httpapi.Agent.
func (a *Agent) SaveSnapshot(w io.Writer) error { return a.server.SaveSnapshot(w) }

// RestoreSnapshot implements httpapi.Agent.
func (a *Agent) RestoreSnapshot(ctx context.Context, r io.Reader) error {
	return a.server.RestoreSnapshot(ctx, r)
}

// LeaseRemaining tells how long a lease surely stays live, for DNS TTLs of
// leader records: the leader's own deadline, else this sidecar's knowledge.
func (a *Agent) LeaseRemaining(id string) (time.Duration, bool) {
	if d, ok := a.local.LeaseRemaining(id); ok {
		return d, true
	}
	return a.server.LeaseRemaining(id)
}
