// Package agenttest runs in-process agents for tests: a dev agent, or
// clusters of servers and clients on loopback with real Raft transports and
// gossip.
package agenttest

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/agent"
	"github.com/sidecarhq/sidecar/discovery"
	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/election/electiontest"
)

// Agent is a running agent.
type Agent struct {
	*agent.Agent
	// URL is the base URL of its HTTP API.
	URL    string
	t      testing.TB
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// Config returns an agent configuration with fast timings and every
// listener on a free loopback port.
func Config(name string) agent.Config {
	rc := election.TestServerConfig()
	gc := discovery.TestConfig()
	return agent.Config{
		Name: name, BindAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", DNSAddr: "127.0.0.1:0",
		Domain: "sidecar.", DNSTTL: 5 * time.Second, SessionTTL: 5 * time.Second, Raft: &rc, Gossip: &gc,
	}
}

// Run starts an agent in the background; t.Cleanup stops it gracefully.
func Run(t testing.TB, cfg agent.Config) *Agent {
	t.Helper()
	a, err := agent.New(cfg, electiontest.Logger(t, cfg.Name))
	if err != nil {
		t.Fatalf("new agent %s: %v", cfg.Name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &Agent{Agent: a, t: t, cancel: cancel, done: make(chan error, 1)}
	go func() { n.done <- a.Run(ctx) }()
	t.Cleanup(n.Stop)
	deadline := time.Now().Add(5 * time.Second)
	for a.HTTPAddr() == "" {
		if time.Now().After(deadline) {
			t.Fatalf("agent %s: HTTP not listening", cfg.Name)
		}
		time.Sleep(5 * time.Millisecond)
	}
	n.URL = "http://" + a.HTTPAddr()
	return n
}

// Stop shuts the agent down gracefully (leave, resign, release). Safe twice.
func (n *Agent) Stop() {
	n.once.Do(func() {
		n.cancel()
		if err := <-n.done; err != nil {
			n.t.Logf("agent shutdown: %v", err)
		}
	})
}

// Kill stops the agent as a crash would.
func (n *Agent) Kill() {
	n.once.Do(func() {
		n.Agent.Kill()
		n.cancel()
		<-n.done
	})
}

// Ready reports whether /readyz answers 200.
func (n *Agent) Ready() bool {
	resp, err := http.Get(n.URL + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// WaitReady polls /readyz until it answers 200.
func (n *Agent) WaitReady(timeout time.Duration) {
	n.t.Helper()
	WaitFor(n.t, timeout, "agent "+n.Node()+" ready", n.Ready)
}

// WaitFor polls cond until it holds or timeout passes.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Start runs a dev agent (one in-memory server) and waits until it is
// ready.
func Start(t testing.TB, tweak func(*agent.Config)) *Agent {
	t.Helper()
	cfg := Config("dev")
	cfg.Dev, cfg.Server, cfg.BootstrapExpect = true, true, 1
	if tweak != nil {
		tweak(&cfg)
	}
	n := Run(t, cfg)
	n.WaitReady(10 * time.Second)
	return n
}

// Cluster starts n servers that bootstrap together (bootstrap-expect n),
// each with a data dir of its own, joined through the first one's gossip
// address, and waits until all are ready.
func Cluster(t testing.TB, n int, tweak func(*agent.Config)) []*Agent {
	t.Helper()
	var nodes []*Agent
	for i := 0; i < n; i++ {
		cfg := Config(fmt.Sprintf("server-%d", i))
		cfg.Server, cfg.BootstrapExpect, cfg.DataDir = true, n, t.TempDir()
		if i > 0 {
			cfg.Join = []string{nodes[0].Gossip().Addr()}
		}
		if tweak != nil {
			tweak(&cfg)
		}
		nodes = append(nodes, Run(t, cfg))
	}
	for _, a := range nodes {
		a.WaitReady(30 * time.Second)
	}
	return nodes
}

// Join starts one more agent joined to the cluster through seed.
func Join(t testing.TB, seed *Agent, name string, server bool, tweak func(*agent.Config)) *Agent {
	t.Helper()
	cfg := Config(name)
	cfg.Join = []string{seed.Gossip().Addr()}
	if server {
		cfg.Server, cfg.DataDir = true, t.TempDir()
	}
	if tweak != nil {
		tweak(&cfg)
	}
	return Run(t, cfg)
}
