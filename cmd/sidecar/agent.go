package main

import (
	"context"
	"io"

	"github.com/sidecarhq/sidecar/agent"
)

// runAgent turns the parsed configuration into an agent and runs it until
// ctx ends (SIGINT/SIGTERM); it returns the process exit code.
func runAgent(ctx context.Context, cfg *Config, stdout, stderr io.Writer) int {
	log := newLogger(cfg, stderr)
	attrs := make([]any, 0, len(cfg.Banner()))
	for _, a := range cfg.Banner() {
		attrs = append(attrs, a)
	}
	log.Info("sidecar agent starting", attrs...)

	ac := agent.Config{
		Name: cfg.Name, DataDir: cfg.DataDir, Server: cfg.Server, BootstrapExpect: cfg.BootstrapExpect, Dev: cfg.Dev,
		BindAddr: cfg.BindAddr, AdvertiseAddr: cfg.AdvertiseAddr, RaftAddr: cfg.RaftAddr,
		HTTPAddr: cfg.HTTPAddr, DNSAddr: cfg.DNSAddr, Domain: cfg.Domain, Recursors: cfg.Recursors, DNSTTL: cfg.DNSTTL,
		SessionTTL: cfg.SessionTTL, SnapshotThreshold: cfg.SnapshotThreshold, SnapshotInterval: cfg.SnapshotInterval,
		Services: cfg.Services, Join: cfg.Join, EncryptKey: cfg.EncryptKey,
	}
	for _, e := range cfg.Elections {
		ac.Elections = append(ac.Elections, agent.Election{Name: e.Name, Candidate: e.Candidate, Value: e.Value, Service: e.Service})
	}
	a, err := agent.New(ac, log)
	if err != nil {
		log.Error("agent failed to start", "err", err)
		return 1
	}
	if err := a.Run(ctx); err != nil {
		log.Error("agent stopped with error", "err", err)
		return 1
	}
	log.Info("agent stopped")
	return 0
}
