package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// testLogger logs to t.Log, tagged with the node, until the test ends
// (memberlist goroutines may still log while winding down, and t.Log after
// the test would panic). DISCOVERY_DEBUG=1 shows debug lines. It is
// discoverytest.Logger, which this package's internal tests cannot import.
func testLogger(t testing.TB, node string) *slog.Logger {
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

// newNode starts a Gossip named name with TestConfig, changed by opts, and
// shuts it down at the end of the test. It does not call Start.
func newNode(t testing.TB, name string, opts ...func(*Config)) *Gossip {
	t.Helper()
	cfg := TestConfig()
	cfg.Name = name
	cfg.Logger = testLogger(t, name)
	cfg.Meta = Meta{Role: RoleClient, HTTPAddr: "127.0.0.1:7080", DNSAddr: "127.0.0.1:7053",
		Tags: map[string]string{"node": name}}
	for _, o := range opts {
		o(&cfg)
	}
	g, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", name, err)
	}
	t.Cleanup(func() {
		if err := g.Shutdown(); err != nil {
			t.Errorf("Shutdown(%s): %v", name, err)
		}
	})
	return g
}

func joining(addrs ...string) func(*Config) {
	return func(c *Config) { c.Join = addrs }
}

// start calls Start with a context that ends with the test.
func start(t testing.TB, g *Gossip) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := g.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
}

// cluster starts n nodes n0..n(n-1); all but the first join the first.
// Servers n0..n2 (when present) announce Raft addresses.
func cluster(t testing.TB, n int, opts ...func(*Config)) []*Gossip {
	t.Helper()
	nodes := make([]*Gossip, 0, n)
	for i := range n {
		name := fmt.Sprintf("n%d", i)
		o := append([]func(*Config){func(c *Config) {
			if i < 3 {
				c.Meta.Role = RoleServer
				c.Meta.RaftAddr = fmt.Sprintf("127.0.0.1:%d", 17947+i)
				c.Meta.BootstrapExpect = 3
			}
		}}, opts...)
		if i > 0 {
			o = append(o, joining(nodes[0].Addr()))
		}
		g := newNode(t, name, o...)
		start(t, g)
		nodes = append(nodes, g)
	}
	return nodes
}

// waitFor polls cond every 5ms until it holds, failing the test after
// timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	begin := time.Now()
	deadline := begin.Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(begin)
}

// statusOf returns the status g sees for name ("" if unknown).
func statusOf(g *Gossip, name string) Status {
	m, ok := g.Member(name)
	if !ok {
		return ""
	}
	return m.Status
}

// allSee waits until every node in nodes sees every name in names with
// status st.
func allSee(t testing.TB, timeout time.Duration, nodes []*Gossip, st Status, names ...string) time.Duration {
	t.Helper()
	return waitFor(t, timeout, fmt.Sprintf("all to see %v as %s", names, st), func() bool {
		for _, g := range nodes {
			for _, n := range names {
				if statusOf(g, n) != st {
					return false
				}
			}
		}
		return true
	})
}

// eventLog records a node's events until its Events channel closes.
type eventLog struct {
	mu   sync.Mutex
	evs  []Event
	done chan struct{}
}

func recordEvents(t testing.TB, g *Gossip) *eventLog {
	l := &eventLog{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for ev := range g.Events() {
			l.mu.Lock()
			l.evs = append(l.evs, ev)
			l.mu.Unlock()
		}
	}()
	return l
}

// of returns the events about member name.
func (l *eventLog) of(name string) []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Event
	for _, ev := range l.evs {
		if ev.Member.Name == name {
			out = append(out, ev)
		}
	}
	return out
}

// types returns the types of the events about member name.
func (l *eventLog) types(name string) []EventType {
	var out []EventType
	for _, ev := range l.of(name) {
		out = append(out, ev.Type)
	}
	return out
}

func (l *eventLog) has(name string, typ EventType) bool {
	for _, ev := range l.of(name) {
		if ev.Type == typ {
			return true
		}
	}
	return false
}
