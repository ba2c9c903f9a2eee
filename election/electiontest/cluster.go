// Package electiontest runs in-process Raft clusters of election.Server on
// raft's in-memory transport, for tests.
package electiontest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/fsm"
)

// Cluster is n servers connected by in-memory transports.
type Cluster struct {
	t       testing.TB
	Servers []*election.Server
	Trans   []*raft.InmemTransport
}

// Logger returns a logger writing to t.Log, tagged with the node. Lines
// logged after the test ended (raft's connection goroutines outlive Close)
// are dropped, since t.Log would panic on them.
func Logger(t testing.TB, node string) *slog.Logger {
	w := &tLogWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo})).With("node", node)
}

type tLogWriter struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *tLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// NewCluster starts n in-memory servers with fast timings and waits for a
// leader. They are closed by t.Cleanup.
func NewCluster(t testing.TB, n int, tweak func(*election.ServerConfig)) *Cluster {
	t.Helper()
	c := &Cluster{t: t}
	var servers []raft.Server
	for i := 0; i < n; i++ {
		addr, tr := raft.NewInmemTransport(raft.ServerAddress(fmt.Sprintf("s%d", i)))
		c.Trans = append(c.Trans, tr)
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(fmt.Sprintf("s%d", i)), Address: addr})
	}
	for i := range c.Trans {
		for j := range c.Trans {
			if i != j {
				c.Trans[i].Connect(c.Trans[j].LocalAddr(), c.Trans[j])
			}
		}
	}
	for i := 0; i < n; i++ {
		cfg := election.TestServerConfig()
		cfg.Node = fmt.Sprintf("s%d", i)
		cfg.InMemory = true
		cfg.Transport = c.Trans[i]
		cfg.Bootstrap = i == 0
		cfg.BootstrapServers = servers
		cfg.Logger = Logger(t, cfg.Node)
		if tweak != nil {
			tweak(&cfg)
		}
		s, err := election.NewServer(cfg)
		if err != nil {
			t.Fatalf("start server %d: %v", i, err)
		}
		c.Servers = append(c.Servers, s)
		t.Cleanup(func() { s.Close() })
	}
	c.WaitLeader(10 * time.Second)
	return c
}

// WaitLeader polls until one live server leads and returns it.
func (c *Cluster) WaitLeader(timeout time.Duration) *election.Server {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if s := c.Leader(); s != nil {
			return s
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.t.Fatalf("no leader within %v", timeout)
	return nil
}

// Leader returns the server that leads now, or nil.
func (c *Cluster) Leader() *election.Server {
	for _, s := range c.Servers {
		if s.Raft().State() == raft.Leader {
			return s
		}
	}
	return nil
}

// Backend sends every write to whichever server leads, retrying through
// leader changes until the context ends, like a client that follows the
// leader.
func (c *Cluster) Backend() election.Backend { return leaderBackend{c} }

type leaderBackend struct{ c *Cluster }

func retryable(err error) bool {
	return errors.Is(err, election.ErrNotLeader) || errors.Is(err, election.ErrShutdown)
}

func (b leaderBackend) Apply(ctx context.Context, cmd fsm.Command) (*fsm.Result, error) {
	for {
		if s := b.c.Leader(); s != nil {
			res, err := s.Apply(ctx, cmd)
			if !retryable(err) {
				return res, err
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %v", election.ErrNotLeader, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// ReadIndex implements election.ReadIndexer: the leader's read index.
func (b leaderBackend) ReadIndex(ctx context.Context) (uint64, error) {
	for {
		if s := b.c.Leader(); s != nil {
			idx, err := s.ReadIndex(ctx)
			if !retryable(err) {
				return idx, err
			}
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%w: %v", election.ErrNotLeader, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (b leaderBackend) KeepAlive(ctx context.Context, id string) (time.Duration, error) {
	for {
		if s := b.c.Leader(); s != nil {
			ttl, err := s.KeepAlive(ctx, id)
			if !retryable(err) {
				return ttl, err
			}
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%w: %v", election.ErrNotLeader, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}
