package election

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sidecarhq/sidecar/fsm"
)

// logBuffer collects log lines, safe for concurrent writers.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startFresh starts an in-memory server with no Raft state and the vote
// gate on, logging into logs.
func startFresh(t *testing.T, id string, tr *raft.InmemTransport, logs *logBuffer) *Server {
	t.Helper()
	cfg := TestServerConfig()
	cfg.Node, cfg.InMemory, cfg.Transport, cfg.GateFresh = id, true, tr, true
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatalf("start %s: %v", id, err)
	}
	t.Cleanup(func() { s.Close() })
	if fresh, _ := s.Fresh(); !fresh {
		t.Fatalf("%s started with no state is not fresh", id)
	}
	return s
}

// A fresh server that bootstraps the cluster founds it: its vote gate
// opens. So does one whose bootstrap finds the configuration already
// arrived from a quicker founder (raft.ErrCantBootstrap, returned): it is
// a founder too. Each says why in its log.
func TestServer_BootstrapCluster_foundersOpenTheirGates(t *testing.T) {
	t.Parallel()
	_, ta := raft.NewInmemTransport("a")
	_, tb := raft.NewInmemTransport("b")
	ta.Connect("b", tb)
	tb.Connect("a", ta)
	var logA, logB logBuffer
	a := startFresh(t, "a", ta, &logA)
	b := startFresh(t, "b", tb, &logB)

	if err := a.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: "a", Address: "a"}}}); err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	if fresh, _ := a.Fresh(); fresh {
		t.Fatal("the founder's vote gate stayed closed")
	}
	if !strings.Contains(logA.String(), "bootstrapped the cluster") {
		t.Fatalf("the founder's log does not say why its gate opened:\n%s", logA.String())
	}
	waitUntil(t, 10*time.Second, "a leading", a.IsLeader)
	if err := a.raft.AddNonvoter("b", "b", 0, 0).Error(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "b to receive the configuration", func() bool {
		return b.raft.LastIndex() > 0 && b.raft.LastIndex() >= a.raft.LastIndex()
	})
	if fresh, _ := b.Fresh(); !fresh {
		t.Fatal("a non-voter that never voted opened its gate")
	}
	err := b.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: "a", Address: "a"}, {Suffrage: raft.Voter, ID: "b", Address: "b"}}})
	if !errors.Is(err, raft.ErrCantBootstrap) {
		t.Fatalf("bootstrap after the configuration arrived: %v, want raft.ErrCantBootstrap", err)
	}
	if fresh, _ := b.Fresh(); fresh {
		t.Fatal("a founder whose bootstrap came second stayed gated")
	}
	if !strings.Contains(logB.String(), "a founder: the bootstrap configuration arrived from another founder first") {
		t.Fatalf("the second founder's log does not say why its gate opened:\n%s", logB.String())
	}
}

// OpenAsFounder opens a fresh server's gate once, and reports whether it
// was closed until then.
func TestServer_OpenAsFounder(t *testing.T) {
	t.Parallel()
	_, tr := raft.NewInmemTransport("c")
	var logs logBuffer
	s := startFresh(t, "c", tr, &logs)
	if !s.OpenAsFounder("counted by the founders") {
		t.Fatal("OpenAsFounder of a gated server reported it open already")
	}
	if fresh, _ := s.Fresh(); fresh {
		t.Fatal("still gated after OpenAsFounder")
	}
	if s.OpenAsFounder("again") {
		t.Fatal("OpenAsFounder of an open gate reported it closed")
	}
	if !strings.Contains(logs.String(), "counted by the founders") {
		t.Fatalf("the log does not say why the gate opened:\n%s", logs.String())
	}
}

// A vote request from a Raft without server IDs names its candidate by the
// address in its header, or else by the legacy field.
func TestCandidateOf(t *testing.T) {
	for _, c := range []struct {
		h    raft.RPCHeader
		want string
	}{
		{raft.RPCHeader{ID: []byte("id"), Addr: []byte("addr")}, "id"},
		{raft.RPCHeader{Addr: []byte("addr")}, "addr"},
		{raft.RPCHeader{}, "legacy"},
	} {
		if got := string(candidateOf(c.h, []byte("legacy"))); got != c.want {
			t.Fatalf("candidateOf(%+v) = %q, want %q", c.h, got, c.want)
		}
	}
}

// A configuration carried by a snapshot decodes when well formed; an
// empty or malformed one is reported as absent, never a panic.
func TestDecodeConfiguration(t *testing.T) {
	conf := raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: "a", Address: "a"}, {Suffrage: raft.Nonvoter, ID: "b", Address: "b"}}}
	got, ok := decodeConfiguration(raft.EncodeConfiguration(conf))
	if !ok || !reflect.DeepEqual(got, conf) {
		t.Fatalf("decode of a configuration: %+v %v, want %+v", got, ok, conf)
	}
	if _, ok := decodeConfiguration(nil); ok {
		t.Fatal("an empty configuration decoded")
	}
	if _, ok := decodeConfiguration([]byte{0xff, 0x00, 0x13}); ok {
		t.Fatal("a malformed configuration decoded")
	}
}

// The change log keeps the latest entries up to its limit: when full it
// drops its oldest quarter, and a stream resuming from an index before
// what it kept is told so (it needs a snapshot), while one resuming from
// a kept index gets every entry after it, in order.
func TestChangeLog_dropsTheOldestQuarterWhenFull(t *testing.T) {
	c := newChangeLog(8)
	for i := uint64(1); i <= 9; i++ {
		c.append(i, []byte{byte(i)})
	}
	// The ninth append found 8 kept: entries 1 and 2 went.
	if c.covers(1) || !c.covers(2) {
		t.Fatalf("covers(1) %v covers(2) %v, want entries after 2 kept only", c.covers(1), c.covers(2))
	}
	if _, _, ok := c.since(1); ok {
		t.Fatal("since(1) answered although entry 2 was dropped")
	}
	out, _, ok := c.since(2)
	if !ok || len(out) != 7 {
		t.Fatalf("since(2): %d entries, ok %v, want 7", len(out), ok)
	}
	for i, e := range out {
		if e.index != uint64(i+3) || !bytes.Equal(e.data, []byte{byte(i + 3)}) {
			t.Fatalf("entry %d: %+v, want index %d", i, e, i+3)
		}
	}
	// A stream that holds entry 5 gets what follows it, not 5 again.
	if out, _, _ := c.since(5); len(out) != 4 || out[0].index != 6 {
		t.Fatalf("since(5): %d entries from %+v, want 4 from index 6", len(out), out)
	}
}

// memSink is a raft.SnapshotSink in memory.
type memSink struct{ bytes.Buffer }

func (*memSink) ID() string    { return "mem" }
func (*memSink) Cancel() error { return nil }
func (*memSink) Close() error  { return nil }

// TestRecordingFSM_streamsEachEntryOnceAndSnapshotsTheRegistry: an entry
// Raft hands the registry again (a replay after an older snapshot) is not
// streamed to clients twice, and the server's snapshot is the registry's.
func TestRecordingFSM_streamsEachEntryOnceAndSnapshotsTheRegistry(t *testing.T) {
	r := &recordingFSM{FSM: fsm.New(), log: newChangeLog(16)}
	var logs []*raft.Log
	for i, name := range []string{"n1", "n2", "n3"} {
		data, err := fsm.Encode(&fsm.RegisterNode{Name: name, Address: "10.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		logs = append(logs, &raft.Log{Index: uint64(i + 1), Term: 1, Type: raft.LogCommand, Data: data})
	}
	for _, l := range append(logs, logs[2]) {
		r.Apply(l)
	}
	if out, _, _ := r.log.since(0); len(out) != 3 {
		t.Fatalf("%d entries streamed for 3 applied (the last twice), want 3", len(out))
	}
	snap, err := r.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	back := fsm.New()
	if err := back.Restore(io.NopCloser(&sink)); err != nil {
		t.Fatal(err)
	}
	if back.Digest() != r.FSM.Digest() || back.Index() != 3 {
		t.Fatalf("the snapshot restores index %d and another registry, want index 3 and the same", back.Index())
	}
}

// A single write (a client from before batches) sent to a follower is
// forwarded to the leader and applied there; a forwarded one reaching a
// follower is refused (no second hop).
func TestServer_singleWriteToAFollowerIsForwarded(t *testing.T) {
	t.Parallel()
	var servers []*Server
	var conf raft.Configuration
	for _, id := range []string{"s0", "s1", "s2"} {
		cfg := TestServerConfig()
		cfg.Node, cfg.InMemory, cfg.RaftAddr = id, true, "127.0.0.1:0"
		cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = 300*time.Millisecond, 300*time.Millisecond, 150*time.Millisecond
		s, err := NewServer(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		servers = append(servers, s)
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: s.Addr()})
	}
	if err := servers[0].raft.BootstrapCluster(conf).Error(); err != nil {
		t.Fatal(err)
	}
	var leader, follower *Server
	waitUntil(t, 10*time.Second, "a leader", func() bool {
		for _, s := range servers {
			if s.IsLeader() {
				leader = s
				return true
			}
		}
		return false
	})
	for _, s := range servers {
		if s != leader {
			follower = s
		}
	}
	// A follower learns the leader from its first heartbeat; before that
	// it answers "no leader", which a client retries.
	waitUntil(t, 10*time.Second, "the follower to know the leader", func() bool {
		_, addr := follower.Leader()
		return addr == leader.Addr()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := newRPCClient()
	defer c.close()
	data, err := fsm.Encode(&fsm.RegisterNode{Name: "old-client", Address: "10.0.0.9"})
	if err != nil {
		t.Fatal(err)
	}
	reply, err := c.call(ctx, string(follower.Addr()), rpcApply, data, false)
	if err != nil {
		t.Fatal(err)
	}
	res, err := reply.result()
	if err != nil || res == nil || res.Index == 0 {
		t.Fatalf("single write through a follower: %+v %v", res, err)
	}
	if _, ok := leader.FSM().Node("old-client"); !ok {
		t.Fatal("the forwarded write is not on the leader")
	}
	data, err = fsm.Encode(&fsm.RegisterNode{Name: "second-hop", Address: "10.0.0.9"})
	if err != nil {
		t.Fatal(err)
	}
	reply, err = c.call(ctx, string(follower.Addr()), rpcApply, data, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reply.result(); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("a forwarded write reaching a follower: %v, want ErrNotLeader", err)
	}
	if _, ok := leader.FSM().Node("second-hop"); ok {
		t.Fatal("a write forwarded twice was applied")
	}
}

// TestNewServer_addressAndTimeoutDefaults: a server advertises its bind
// address (with the port it bound) unless told another, and an apply
// timeout of 0 means the default while another is kept.
func TestNewServer_addressAndTimeoutDefaults(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		advertise, wantHost string
		timeout, want       time.Duration
	}{
		{"", "127.0.0.1", 0, 5 * time.Second},
		{"10.9.8.7:0", "10.9.8.7", 3 * time.Second, 3 * time.Second},
	} {
		cfg := TestServerConfig()
		cfg.Node, cfg.InMemory, cfg.RaftAddr, cfg.AdvertiseAddr = "s0", true, "127.0.0.1:0", c.advertise
		cfg.ApplyTimeout = c.timeout
		s, err := NewServer(cfg)
		if err != nil {
			t.Fatal(err)
		}
		host, port, err := net.SplitHostPort(string(s.Addr()))
		if err != nil || host != c.wantHost || port == "0" {
			t.Errorf("advertise %q: address %q, want %s with the bound port", c.advertise, s.Addr(), c.wantHost)
		}
		if s.cfg.ApplyTimeout != c.want {
			t.Errorf("apply timeout %v: %v, want %v", c.timeout, s.cfg.ApplyTimeout, c.want)
		}
		s.Close()
	}
}

// streamingLeader starts a one-server cluster on loopback TCP (so that
// change streams reach it), with its configuration changed by edit when
// set, and returns it once it leads.
func streamingLeader(t *testing.T, edit func(*ServerConfig)) *Server {
	t.Helper()
	cfg := TestServerConfig()
	cfg.Node, cfg.InMemory, cfg.RaftAddr, cfg.Bootstrap = "s0", true, "127.0.0.1:0", true
	if edit != nil {
		edit(&cfg)
	}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	waitUntil(t, 10*time.Second, "leadership", s.IsLeader)
	return s
}

// A change stream sends each entry as soon as it is applied: with
// heartbeats a minute apart, only that send can bring a copy that resumes
// from its own index up to date (the copy's watchdog reconnects every
// 1.5 s meanwhile, and each new stream resumes with entries, no snapshot).
func TestServeStream_sendsEntriesAtOnce(t *testing.T) {
	t.Parallel()
	s := streamingLeader(t, func(cfg *ServerConfig) { cfg.streamHeartbeat = time.Minute })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := s.Apply(ctx, &fsm.RegisterNode{Name: "before", Address: "10.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	// The copy starts from the server's registry, as after a snapshot.
	var snap bytes.Buffer
	if err := s.FSM().WriteSnapshot(&snap); err != nil {
		t.Fatal(err)
	}
	copyOf := fsm.New()
	if err := copyOf.Restore(io.NopCloser(&snap)); err != nil {
		t.Fatal(err)
	}
	r := NewReplica(copyOf, func() []string { return []string{string(s.Addr())} }, nil)
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	if _, err := s.Apply(ctx, &fsm.RegisterNode{Name: "after", Address: "10.0.0.2"}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the entry in the copy", func() bool { _, ok := copyOf.Node("after"); return ok })
}

type failingCloser struct{ err error }

func (c failingCloser) Close() error { return c.err }

// Close reports the first failure of what it closes (a log file that
// could not be closed) and still closes the rest.
func TestServer_Close_reportsACloseFailure(t *testing.T) {
	t.Parallel()
	cfg := TestServerConfig()
	cfg.Node, cfg.InMemory, cfg.RaftAddr = "s0", true, "127.0.0.1:0"
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	bad := errors.New("close: input/output error")
	s.closer = append(s.closer, failingCloser{bad})
	if err := s.Close(); !errors.Is(err, bad) {
		t.Fatalf("Close: %v, want %v", err, bad)
	}
	// The listener, closed after the failing closer, is closed too.
	if conn, err := net.DialTimeout("tcp", string(s.Addr()), time.Second); err == nil {
		conn.Close()
		t.Fatal("the server's port still accepts connections after Close")
	}
}

// The snapshot encoded for change streams is let go once it is older
// than its TTL, so a large registry's encoding does not stay in memory;
// the next stream encodes a new one.
func TestStreamSnapshot_letGoAfterItsTTL(t *testing.T) {
	t.Parallel()
	cfg := TestServerConfig()
	cfg.Node, cfg.InMemory, cfg.Bootstrap = "s0", true, true
	cfg.streamSnapshotTTL = 50 * time.Millisecond
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	held := func() bool {
		s.snaps.mu.Lock()
		defer s.snaps.mu.Unlock()
		return s.snaps.data != nil
	}
	// That it is shared while fresh: TestStream_manyClientsShareOneSnapshot.
	if _, _, err := s.streamSnapshot(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the snapshot let go", func() bool { return !held() })
}

// One change stream carries entry after entry: it does not end once it
// has sent what was new.
func TestServeStream_staysOpenAcrossEntries(t *testing.T) {
	t.Parallel()
	s := streamingLeader(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := s.Apply(ctx, &fsm.RegisterNode{Name: "first", Address: "10.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	c := newRPCClient()
	defer c.close()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+string(s.Addr())+rpcStream+"?index="+strconv.FormatUint(s.FSM().Index(), 10), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	for i := range 3 {
		res, err := s.Apply(ctx, &fsm.RegisterNode{Name: fmt.Sprint("n", i), Address: "10.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		for seen := uint64(0); seen < res.Index; {
			typ, index, _, err := readFrame(br)
			if err != nil {
				t.Fatalf("the stream ended before entry %d (write %d): %v", res.Index, i+1, err)
			}
			if typ == frameEntry {
				seen = index
			}
		}
	}
}
