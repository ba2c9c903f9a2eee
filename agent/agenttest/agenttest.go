// Package agenttest runs in-process dev agents for tests.
package agenttest

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/agent"
	"github.com/sidecarhq/sidecar/discovery"
	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/election/electiontest"
)

// Agent is a running dev agent.
type Agent struct {
	*agent.Agent
	// URL is the base URL of its HTTP API.
	URL string
}

// Start runs a dev agent (one in-memory server, HTTP on a free loopback
// port, fast Raft timings) until the test ends, and waits until it is ready.
func Start(t testing.TB, tweak func(*agent.Config)) *Agent {
	t.Helper()
	rc := election.TestServerConfig()
	gc := discovery.TestConfig()
	cfg := agent.Config{Gossip: &gc,
		Name: "dev", Dev: true, Server: true, BootstrapExpect: 1,
		BindAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", DNSAddr: "127.0.0.1:0",
		Domain: "sidecar.", DNSTTL: 5 * time.Second, SessionTTL: 5 * time.Second, Raft: &rc,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	a, err := agent.New(cfg, electiontest.Logger(t, cfg.Name))
	if err != nil {
		t.Fatalf("new agent: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent shutdown: %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if addr := a.HTTPAddr(); addr != "" {
			if resp, err := http.Get("http://" + addr + "/readyz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return &Agent{Agent: a, URL: "http://" + addr}
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("agent not ready within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
