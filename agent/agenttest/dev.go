package agenttest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/sidecarhq/sidecar/agent"
)

// Dev is a dev agent started without a testing.TB: for TestMain and for
// Example functions, which have none. Tests should prefer Start, which
// stops the agent with the test and logs to it.
type Dev struct {
	*agent.Agent
	// URL is the base URL of its HTTP API.
	URL    string
	cancel context.CancelFunc
	done   chan error
}

// StartDev runs a dev agent (one in-memory server, every listener on a
// free loopback port, the fast timings of Config) and waits until it is
// ready. A nil logger discards the agent's logs, so that Example output
// stays what the example prints. Stop it with Stop.
func StartDev(log *slog.Logger) (*Dev, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg := Config("dev")
	cfg.Dev, cfg.Server, cfg.BootstrapExpect = true, true, 1
	a, err := agent.New(cfg, log)
	if err != nil {
		return nil, fmt.Errorf("new dev agent: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &Dev{Agent: a, cancel: cancel, done: make(chan error, 1)}
	go func() { d.done <- a.Run(ctx) }()
	// Ten seconds: a dev agent is ready in well under one; the rest is room
	// for a loaded CI machine.
	deadline := time.Now().Add(10 * time.Second)
	for a.HTTPAddr() == "" {
		if time.Now().After(deadline) {
			d.Stop()
			return nil, errors.New("dev agent: HTTP not listening after 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	d.URL = "http://" + a.HTTPAddr()
	hc := &http.Client{Timeout: time.Second}
	defer hc.CloseIdleConnections()
	for {
		resp, err := hc.Get(d.URL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return d, nil
			}
		}
		if time.Now().After(deadline) {
			d.Stop()
			return nil, errors.New("dev agent: not ready after 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop shuts the agent down gracefully and returns what Run returned.
// Call it once.
func (d *Dev) Stop() error {
	d.cancel()
	return <-d.done
}
