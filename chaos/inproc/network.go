// Package inproc is the in-process layer of the fault-injection suite: 3 or
// 5 election.Server on real Raft and raft-boltdb in temporary dirs, linked
// by a transport that drops, delays and cuts links one way, with clients
// writing through their home server like sidecar agents do.
package inproc

import (
	"errors"
	"fmt"
	"io"
	"math/rand"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// errUnreachable is what a send over a cut, lossy or dead link returns.
var errUnreachable = errors.New("chaos: link down")

// Network decides, for each message from one node to another, whether it
// arrives and how late. Links are directed: a cut from a to b loses a's
// requests to b and b's answers to a.
type Network struct {
	mu       sync.Mutex
	rng      *rand.Rand
	cut      map[[2]string]bool
	down     map[string]bool
	loss     float64
	maxDelay time.Duration
}

// NewNetwork returns a network where every message arrives at once.
func NewNetwork(seed int64) *Network {
	return &Network{rng: rand.New(rand.NewSource(seed)), cut: map[[2]string]bool{}, down: map[string]bool{}}
}

// Cut stops messages from a to b (one way).
func (n *Network) Cut(from, to string) {
	n.mu.Lock()
	n.cut[[2]string{from, to}] = true
	n.mu.Unlock()
}

// SetDown marks a node crashed (or back): nothing reaches it or leaves it.
func (n *Network) SetDown(node string, down bool) {
	n.mu.Lock()
	n.down[node] = down
	n.mu.Unlock()
}

// SetLoss drops each message with probability p.
func (n *Network) SetLoss(p float64) {
	n.mu.Lock()
	n.loss = p
	n.mu.Unlock()
}

// SetDelay delays each message by up to d.
func (n *Network) SetDelay(d time.Duration) {
	n.mu.Lock()
	n.maxDelay = d
	n.mu.Unlock()
}

// Heal removes every cut, loss and delay (crashed nodes stay down).
func (n *Network) Heal() {
	n.mu.Lock()
	n.cut = map[[2]string]bool{}
	n.loss, n.maxDelay = 0, 0
	n.mu.Unlock()
}

// Deliver decides the fate of one message from a to b: it sleeps its delay
// and reports whether it arrives.
func (n *Network) Deliver(from, to string) bool {
	n.mu.Lock()
	ok := from == to || !(n.cut[[2]string{from, to}] || n.down[from] || n.down[to] || n.loss > 0 && n.rng.Float64() < n.loss)
	var d time.Duration
	if n.maxDelay > 0 && from != to {
		d = time.Duration(n.rng.Int63n(int64(n.maxDelay)))
	}
	n.mu.Unlock()
	if d > 0 {
		time.Sleep(d)
	}
	return ok
}

// transport is a node's raft.Transport: the network's decisions on top of a
// real transport (raft's in-memory one, or its NetworkTransport over
// loopback TCP, with TLS or without; see stream.go). A request crosses
// from->to, its answer to->from: a message the network drops is never
// handed to the transport below, a lost answer is discarded after the
// request really crossed it. So a fault acts on whole Raft messages, as a
// cut link does, while a delivered one crosses TLS in full.
type transport struct {
	net   *Network
	self  string
	inner innerTransport
}

// innerTransport is what raft's InmemTransport and NetworkTransport both
// are: the wrapper offers pre-vote and Close, so the one below must too.
type innerTransport interface {
	raft.Transport
	raft.WithPreVote
	raft.WithClose
}

var (
	_ raft.Transport   = (*transport)(nil)
	_ raft.WithPreVote = (*transport)(nil)
	_ raft.WithClose   = (*transport)(nil)
)

func (t *transport) call(target raft.ServerAddress, f func() error) error {
	if !t.net.Deliver(t.self, string(target)) {
		return fmt.Errorf("send to %s: %w", target, errUnreachable)
	}
	if err := f(); err != nil {
		return err
	}
	if !t.net.Deliver(string(target), t.self) {
		return fmt.Errorf("answer from %s: %w", target, errUnreachable)
	}
	return nil
}

func (t *transport) Consumer() <-chan raft.RPC          { return t.inner.Consumer() }
func (t *transport) LocalAddr() raft.ServerAddress      { return t.inner.LocalAddr() }
func (t *transport) SetHeartbeatHandler(func(raft.RPC)) {}
func (t *transport) EncodePeer(id raft.ServerID, a raft.ServerAddress) []byte {
	return t.inner.EncodePeer(id, a)
}
func (t *transport) DecodePeer(b []byte) raft.ServerAddress { return t.inner.DecodePeer(b) }

// Close closes the transport below and, for a NetworkTransport, its pooled
// connections (election.Server.Close does that only for a NetworkTransport
// of its own).
func (t *transport) Close() error {
	err := t.inner.Close()
	if nt, ok := t.inner.(*raft.NetworkTransport); ok {
		nt.CloseStreams()
	}
	return err
}

// AppendEntriesPipeline is not supported, so that every append goes
// through the network's decisions one by one.
func (t *transport) AppendEntriesPipeline(raft.ServerID, raft.ServerAddress) (raft.AppendPipeline, error) {
	return nil, raft.ErrPipelineReplicationNotSupported
}

func (t *transport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	return t.call(target, func() error { return t.inner.AppendEntries(id, target, args, resp) })
}

func (t *transport) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	return t.call(target, func() error { return t.inner.RequestVote(id, target, args, resp) })
}

func (t *transport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	return t.call(target, func() error { return t.inner.RequestPreVote(id, target, args, resp) })
}

func (t *transport) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	return t.call(target, func() error { return t.inner.InstallSnapshot(id, target, args, resp, data) })
}

func (t *transport) TimeoutNow(id raft.ServerID, target raft.ServerAddress, args *raft.TimeoutNowRequest, resp *raft.TimeoutNowResponse) error {
	return t.call(target, func() error { return t.inner.TimeoutNow(id, target, args, resp) })
}
