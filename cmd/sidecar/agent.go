package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecarhq/sidecar/agent"
	"github.com/sidecarhq/sidecar/election"
)

// runAgent turns the parsed configuration into an agent and runs it until
// ctx ends (SIGINT/SIGTERM); it returns the process exit code. On SIGHUP it
// reads the configuration again through reload and applies the config
// file's services.
func runAgent(ctx context.Context, cfg *Config, reload func() (*Config, error), stdout, stderr io.Writer) int {
	log := newLogger(cfg, stderr)
	attrs := make([]any, 0, len(cfg.Banner()))
	for _, a := range cfg.Banner() {
		attrs = append(attrs, a)
	}
	if cfg.Server {
		rc := election.DefaultServerConfig()
		attrs = append(attrs, "raft_heartbeat_timeout", rc.HeartbeatTimeout, "raft_election_timeout", rc.ElectionTimeout,
			"raft_leader_lease_timeout", rc.LeaderLeaseTimeout, "raft_commit_timeout", rc.CommitTimeout)
	}
	log.Info("sidecar agent starting", attrs...)
	for _, w := range cfg.SecurityWarnings() {
		log.Warn(w)
	}
	if cfg.TLS != nil {
		cfg.TLS.SetLogger(log.With("component", "tls"))
	}

	ac := agent.Config{
		Name: cfg.Name, DataDir: cfg.DataDir, Server: cfg.Server, BootstrapExpect: cfg.BootstrapExpect, Dev: cfg.Dev,
		BindAddr: cfg.BindAddr, AdvertiseAddr: cfg.AdvertiseAddr, RaftAddr: cfg.RaftAddr,
		HTTPAddr: cfg.HTTPAddr, DNSAddr: cfg.DNSAddr, Domain: cfg.Domain, Recursors: cfg.Recursors, DNSTTL: cfg.DNSTTL,
		SessionTTL: cfg.SessionTTL, SnapshotThreshold: cfg.SnapshotThreshold, SnapshotInterval: cfg.SnapshotInterval,
		Services: cfg.Services, Join: cfg.Join, EncryptKey: cfg.EncryptKey,
		HTTPSAddr: cfg.HTTPSAddr, ExecChecks: cfg.ExecChecks, AllowedHosts: cfg.AllowedHosts,
		ACLDefaultPolicy: cfg.ACLDefaultPolicy, ACLDNSToken: cfg.ACLDNSToken,
		HTTPMaxConnsPerClient: noBound(cfg.HTTPMaxConnsPerClient), HTTPMaxBlockingQueries: noBound(cfg.HTTPMaxBlockingQueries),
		MaxRestoreBytes: cfg.MaxRestoreBytes,
		HTTPWriteRate:   float64(noBound(cfg.HTTPWriteRate)), HTTPWriteBurst: cfg.HTTPWriteBurst,
		HTTPReadHeaderTimeout: cfg.HTTPReadHeaderTimeout, HTTPReadTimeout: cfg.HTTPReadTimeout, HTTPIdleTimeout: cfg.HTTPIdleTimeout,
	}
	if cfg.TLS != nil {
		ac.TLS = cfg.TLS
	}
	for _, e := range cfg.Elections {
		ac.Elections = append(ac.Elections, agent.Election{Name: e.Name, Candidate: e.Candidate, Value: e.Value, Service: e.Service})
	}
	ac.OnReady = func() {
		if err := sdNotify("READY=1"); err != nil {
			log.Warn("systemd notify", "err", err)
		}
	}
	a, err := newAgent(ac, log)
	if err != nil {
		// One line, like every failure of a command: a damaged store names
		// its file and what to do.
		fmt.Fprintf(stderr, "sidecar: agent did not start: %s\n", oneLine(err.Error()))
		return 1
	}
	reloads := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sidecar_config_reloads_total",
		Help: "Reloads of the config file's services on SIGHUP, by result (ok, refused: the file did not parse, failed).",
	}, []string{"result"})
	a.Metrics().MustRegister(reloads)
	defer watchSIGHUP(ctx, cfg, log, func(ctx context.Context) { reloadServices(ctx, a, reload, log, reloads) })()
	if err := a.Run(ctx); err != nil {
		log.Error("agent stopped with error", "err", err)
		return 1
	}
	log.Info("agent stopped")
	return 0
}

// newAgent builds the agent. The stores it opens are read by libraries
// that panic, or fault past the end of a mapped file, on some damage (bbolt
// before internal/boltopen checks a file): such a panic or fault while it
// opens them is an error naming the data dir, not a stack trace.
func newAgent(ac agent.Config, log *slog.Logger) (a *agent.Agent, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("reading the data dir %s failed (%v): a file in it is damaged; restore it from a backup, or empty the data dir so that the agent starts afresh", ac.DataDir, v)
		}
	}()
	return agent.New(ac, log)
}

// noBound turns the flags' 0 (no bound) into the agent's -1 (its 0 is
// the default).
func noBound(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// reloadServices applies the config file's services again (SIGHUP): new
// ones are registered, changed ones corrected, removed ones deregistered. A
// configuration that no longer parses changes nothing.
func reloadServices(ctx context.Context, a *agent.Agent, reload func() (*Config, error), log *slog.Logger, reloads *prometheus.CounterVec) {
	cfg, err := reload()
	if err != nil {
		reloads.WithLabelValues("refused").Inc()
		log.Error("reload: configuration refused, nothing changed", "err", err)
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := a.ReloadServices(rctx, cfg.Services); err != nil {
		reloads.WithLabelValues("failed").Inc()
		log.Error("reload of the config file's services", "err", err)
		return
	}
	reloads.WithLabelValues("ok").Inc()
	log.Info("reloaded the config file's services", "services", len(cfg.Services))
}

// sdNotify tells systemd (Type=notify) about the agent's state through the
// socket in $NOTIFY_SOCKET; without one it does nothing.
func sdNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:] // abstract socket
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("dial notify socket: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("write notify socket: %w", err)
	}
	return nil
}
