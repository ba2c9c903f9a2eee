// Package discoverytest runs in-process gossip clusters of
// discovery.Gossip on loopback, for tests, and checks for goroutine leaks
// with the patience memberlist needs.
package discoverytest

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sidecarhq/sidecar/discovery"
	"github.com/sidecarhq/sidecar/internal/hangwatch"
)

// Patience bounds every wait of this package: far above what the
// conditions take on a healthy machine (milliseconds to a second with
// discovery.TestConfig), so that a loaded one (CI, -race, a VM stalling for
// seconds) does not fail tests.
const Patience = 30 * time.Second

// LeakPatience is how long VerifyTestMain and VerifyNone wait for
// goroutines to end. memberlist's Shutdown returns while some of its
// goroutines still finish work in flight, each bounded by a timer: a probe
// waits for its ack timeout (ProbeInterval × Lifeguard's multiplier, at
// most 3.2s with discovery.DefaultConfig), a TCP fallback ping for the
// probe's deadline, and a push/pull stream accepted from a peer for
// TCPTimeout (10s by default). goleak's own retries (about half a second)
// are too short for them; they are waited for rather than ignored, so a
// goroutine that never ends still fails the check.
const LeakPatience = 15 * time.Second

// VerifyTestMain is goleak.VerifyTestMain with LeakPatience: call it from
// TestMain of any package whose tests run a discovery.Gossip.
func VerifyTestMain(m *testing.M, opts ...goleak.Option) {
	hangwatch.Start()
	code := m.Run()
	if code == 0 {
		if err := findLeaks(opts...); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: Errors on successful test run: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// VerifyNone is goleak.VerifyNone with LeakPatience.
func VerifyNone(t testing.TB, opts ...goleak.Option) {
	t.Helper()
	if err := findLeaks(opts...); err != nil {
		t.Error(err)
	}
}

func findLeaks(opts ...goleak.Option) error {
	deadline := time.Now().Add(LeakPatience)
	for {
		err := goleak.Find(opts...)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Logger returns a logger writing to t.Log, tagged with the node, that
// falls silent when the test ends (memberlist goroutines may still log
// while they wind down, and t.Log after the test panics).
// DISCOVERY_DEBUG=1 in the environment shows debug lines.
func Logger(t testing.TB, node string) *slog.Logger {
	w := &tWriter{t: t}
	t.Cleanup(w.stop)
	level := slog.LevelInfo
	if os.Getenv("DISCOVERY_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})).With("node", node)
}

type tWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *tWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// Config returns discovery.TestConfig for node name, logging to t.
func Config(t testing.TB, name string) discovery.Config {
	c := discovery.TestConfig()
	c.Name = name
	c.Logger = Logger(t, name)
	return c
}

// Start creates and starts a Gossip from cfg, shut down when the test
// ends. It does not wait for the join.
func Start(t testing.TB, cfg discovery.Config) *discovery.Gossip {
	t.Helper()
	g, err := discovery.New(cfg)
	if err != nil {
		t.Fatalf("discovery.New(%s): %v", cfg.Name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		if err := g.Shutdown(); err != nil {
			t.Errorf("Shutdown(%s): %v", cfg.Name, err)
		}
	})
	if err := g.Start(ctx); err != nil {
		t.Fatalf("Start(%s): %v", cfg.Name, err)
	}
	return g
}

// NewCluster starts n members named node0..node<n-1> with Config, all but
// the first joining the first, and waits until each sees all n alive.
// tweak, if not nil, adjusts member i's Config (e.g. its Meta) before it
// starts. Members are shut down when the test ends.
func NewCluster(t testing.TB, n int, tweak func(i int, c *discovery.Config)) []*discovery.Gossip {
	t.Helper()
	var nodes []*discovery.Gossip
	var names []string
	for i := range n {
		name := fmt.Sprintf("node%d", i)
		cfg := Config(t, name)
		if i > 0 {
			cfg.Join = []string{nodes[0].Addr()}
		}
		if tweak != nil {
			tweak(i, &cfg)
		}
		nodes = append(nodes, Start(t, cfg))
		names = append(names, name)
	}
	WaitStatus(t, nodes, discovery.StatusAlive, names...)
	return nodes
}

// WaitStatus waits until every node in nodes sees every member named with
// status st, failing the test after Patience.
func WaitStatus(t testing.TB, nodes []*discovery.Gossip, st discovery.Status, members ...string) {
	t.Helper()
	WaitFor(t, fmt.Sprintf("%v to be %s everywhere", members, st), func() bool {
		for _, g := range nodes {
			for _, name := range members {
				if m, ok := g.Member(name); !ok || m.Status != st {
					return false
				}
			}
		}
		return true
	})
}

// WaitFor polls cond every 5ms until it holds, failing the test after
// Patience.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", Patience, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
