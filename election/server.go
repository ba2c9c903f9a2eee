// Package election runs sidecar's Raft server and builds leases, locks and
// elections on the registry it replicates: the leader tracks lease deadlines
// in memory (keepalives never touch the log) and commits an expiry when one
// passes; sessions keep this sidecar's leases alive and tell, from the send
// time of the last acknowledged keepalive, how long a hold is surely live.
package election

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/fsm"
	"github.com/sidecarhq/sidecar/internal/logadapt"
	"github.com/sidecarhq/sidecar/raftlog"
)

// Errors of the server.
var (
	// ErrNotLeader: this server is not the Raft leader; the caller retries
	// on the leader.
	ErrNotLeader = errors.New("election: not the raft leader")
	// ErrUnknownOutcome: leadership was lost while an entry was in flight;
	// it may or may not have been committed.
	ErrUnknownOutcome = errors.New("election: leadership lost, outcome unknown")
	// ErrShutdown: the server is closing.
	ErrShutdown = errors.New("election: server shut down")
	// ErrPermissionDenied: with TLS, the peer's certificate does not allow
	// the request (a restore from a client certificate); with ACLs, the
	// leader refused the token a write came with.
	ErrPermissionDenied = errors.New("election: permission denied")
	// ErrDiskFull: the leader's disk has no room for more of the Raft log;
	// the write changed nothing and may be retried once space is freed.
	ErrDiskFull = errors.New("election: disk full")
)

// ServerConfig configures a Raft server. Start from DefaultServerConfig.
type ServerConfig struct {
	// Node is the node name, used as the Raft server ID.
	Node string
	// DataDir holds the Raft log (raft-log/) and snapshots; unused with
	// InMemory.
	DataDir string
	// LogSegmentSize is the size of each Raft log segment file, allocated
	// ahead (and one spare); 0: 64 MiB.
	LogSegmentSize int64
	// LogBeforeSync, when set, runs before each background sync of the
	// leader's log (raftlog.Options.BeforeSync): tests hold syncs with it.
	LogBeforeSync func(stop <-chan struct{})
	// StoreFatal is told when the Raft log fails in a way the server cannot
	// recover from (a damaged entry, a failed write or fsync): the agent
	// stops. Nil: the store only refuses further writes.
	StoreFatal func(error)
	// InMemory keeps log, stable store and snapshots in memory (--dev, tests).
	InMemory bool
	// RaftAddr is the TCP address Raft listens on; AdvertiseAddr, when set,
	// is the one peers dial.
	RaftAddr      string
	AdvertiseAddr string
	// Transport replaces the TCP transport (tests use raft's in-memory one).
	Transport raft.Transport
	// TLS, when set, secures the Raft/RPC port and this server's dials to
	// other servers (see TLS); nil keeps them in plain text.
	TLS TLS
	// Bootstrap makes this server bootstrap a cluster of BootstrapServers
	// (itself alone when empty) if it holds no Raft state yet.
	Bootstrap        bool
	BootstrapServers []raft.Server
	// GateFresh: a server that starts with no Raft state and does not
	// bootstrap neither votes nor stands for election until a leader has
	// promoted it to voter (fresh.go). The agent sets it; in-memory test
	// clusters, whose followers all start empty, leave it off.
	GateFresh bool

	// Raft timings. The leader lease must stay below the heartbeat timeout:
	// a deposed leader then steps down before a successor can be elected,
	// so it never acknowledges a keepalive after the successor restarted
	// every lease's TTL.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	SnapshotThreshold  uint64
	// SnapshotAdaptAbove: once the registry holds more records than this,
	// the snapshot threshold follows its size (adaptSnapshots); 0: 8192.
	SnapshotAdaptAbove uint64
	SnapshotInterval   time.Duration
	TrailingLogs       uint64
	// ApplyTimeout bounds one write when the caller's context has no
	// deadline.
	ApplyTimeout time.Duration

	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Now is the clock of lease deadlines; tests may replace it.
	Now func() time.Time

	// streamHeartbeat: how often an idle change stream says it is alive;
	// 0: streamHeartbeat. The tests lengthen it to show what is sent
	// without waiting for one.
	streamHeartbeat time.Duration
	// streamSnapshotTTL: how long an encoded snapshot serves new change
	// streams; 0: streamSnapshotTTL.
	streamSnapshotTTL time.Duration
	// nudgeHold: how long a leader-fed writer's nudge is held back; 0:
	// nudgeLater. The tests lengthen it to see which writes are held.
	nudgeHold time.Duration
}

func (c *ServerConfig) nudgeLater() time.Duration { return cmp.Or(c.nudgeHold, nudgeLater) }

// DefaultServerConfig returns the production settings.
func DefaultServerConfig() ServerConfig {
	return ServerConfig{
		// Under a third of raft's WAN-safe 1s defaults: sidecar runs on
		// LANs, where a follower that heard nothing for 300 ms has lost its
		// leader, and with pre-vote a flapping link cannot force needless
		// elections; a leader kill costs about one election timeout (plus
		// its randomisation) of writes.
		HeartbeatTimeout:   300 * time.Millisecond,
		ElectionTimeout:    300 * time.Millisecond,
		LeaderLeaseTimeout: 150 * time.Millisecond,
		// Followers learn of commits within this, so their local copies
		// (and DNS) lag the leader by at most about this much.
		CommitTimeout: 20 * time.Millisecond, // equivalent mutant: a tuning constant
		// Snapshot after this many entries: a registry snapshot is small,
		// and a short log makes restarts fast.
		SnapshotThreshold: 8192,
		SnapshotInterval:  30 * time.Second, // equivalent mutant: a tuning constant
		// Entries kept after a snapshot so a briefly lagging follower
		// catches up from the log instead of a snapshot.
		TrailingLogs: 10240,
		ApplyTimeout: 5 * time.Second, // equivalent mutant: a tuning constant
	}
}

// TestServerConfig returns fast timings for in-process tests.
func TestServerConfig() ServerConfig {
	c := DefaultServerConfig()
	c.HeartbeatTimeout = 50 * time.Millisecond
	c.ElectionTimeout = 50 * time.Millisecond
	// As long as the heartbeat timeout: at half of it, leaders of a
	// loaded -race run stepped down while backfilling their followers.
	c.LeaderLeaseTimeout = 50 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
	c.SnapshotInterval = 100 * time.Millisecond
	c.ApplyTimeout = 2 * time.Second // equivalent mutant: a test timing
	// Tests start many servers at once: small log segments.
	c.LogSegmentSize = 4 << 20
	return c
}

// Server is one Raft voter holding the registry.
type Server struct {
	cfg    ServerConfig
	log    *slog.Logger
	fsm    *fsm.FSM
	raft   *raft.Raft
	trans  raft.Transport
	closer []io.Closer
	// room says whether the Raft log has room for a client's write (nil in
	// memory).
	room   func() error
	leases *leaseTracker
	m      *serverMetrics

	// changes feeds clients' change streams; rpc forwards to the leader;
	// rpcSrv serves the internal RPC on the Raft port.
	changes *changeLog
	snaps   streamSnapshots
	rpc     *rpcClient
	mux     *muxListener
	rpcSrv  *http.Server
	// aclr holds an aclBox: the resolver the leader checks tokens with.
	aclr atomic.Value
	// gate keeps a fresh server out of elections until promoted; nil
	// unless it started fresh with GateFresh (fresh.go).
	gate *voteGate

	notify      chan bool
	nudge       chan struct{} // nudge.go
	nudgeLater  chan struct{}
	writing     atomic.Int64 // writes on their way into the log (nudge.go)
	nudgeUrgent atomic.Bool  // a write whose writer is not leader-fed left its nudge to another
	stop        chan struct{}
	wg          sync.WaitGroup
	closeOnce   sync.Once
	closeErr    error
}

// NewServer opens the stores, starts Raft and, when asked and no state
// exists, bootstraps the cluster. On error everything opened is closed.
func NewServer(cfg ServerConfig) (s *Server, err error) {
	if cfg.Node == "" {
		return nil, errors.New("election: server needs a node name")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.streamHeartbeat <= 0 {
		cfg.streamHeartbeat = streamHeartbeat
	}
	if cfg.streamSnapshotTTL <= 0 {
		cfg.streamSnapshotTTL = streamSnapshotTTL
	}
	if cfg.ApplyTimeout <= 0 {
		cfg.ApplyTimeout = 5 * time.Second
	}
	cfg.TLS = orNil(cfg.TLS)
	s = &Server{
		cfg:        cfg,
		log:        cfg.Logger.With("component", "raft-server"),
		fsm:        fsm.New(),
		notify:     make(chan bool, 16),
		nudge:      make(chan struct{}, 1),
		nudgeLater: make(chan struct{}, 1),
		stop:       make(chan struct{}),
		// Entries kept for clients that resume their stream: a few seconds
		// of heavy writes, or hours of a quiet registry.
		changes: newChangeLog(16384),
		rpc:     newRPCClientTLS(cfg.TLS),
	}
	// Every error return sets the named result s to nil before deferred
	// calls run: hold on to the server to close what it opened.
	opened := s
	defer func() {
		if err != nil {
			for i := len(opened.closer) - 1; i >= 0; i-- {
				opened.closer[i].Close()
			}
		}
	}()

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.Node)
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.CommitTimeout
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	// At least a snapshot's worth of log stays behind each snapshot.
	// hashicorp/raft has a follower install any snapshot its leader sends,
	// also one older than the follower's own; the follower then applies the
	// entries after it from its own log, and panics ("log not found") if
	// its own snapshot already truncated them. A leader's latest snapshot
	// lags its log by about the threshold (plus what is written until the
	// next snapshot check), so keeping at least that many entries keeps
	// them in all but extreme cases. (Found by make chaos, which draws
	// small values; the defaults, 8192 and 10240, already satisfy it.)
	rc.TrailingLogs = max(cfg.TrailingLogs, cfg.SnapshotThreshold)
	rc.NotifyCh = s.notify
	// BatchApplyCh stays off: with it, an Apply enqueued just before Raft
	// shuts down waits forever (its future is in a buffer nobody drains and
	// knows nothing of the shutdown; the in-process chaos run hung on one).
	// Concurrent writes are still written and fsynced together: the leader
	// loop gathers every Apply ready to send into one append batch.
	rc.BatchApplyCh = false
	rc.Logger = logadapt.Hclog(cfg.Logger, "raft")
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("raft config: %w", err)
	}

	var (
		wal    *raftlog.Store
		logs   raft.LogStore
		stable raft.StableStore
		snaps  raft.SnapshotStore
	)
	if cfg.InMemory {
		mem := raft.NewInmemStore()
		logs, stable, snaps = mem, mem, newMemSnapshots()
	} else {
		if cfg.DataDir == "" {
			return nil, errors.New("election: server needs a data dir unless in memory")
		}
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("create data dir: %w", err)
		}
		walDir := filepath.Join(cfg.DataDir, "raft-log")
		if err := raftlog.MigrateBolt(filepath.Join(cfg.DataDir, "raft.db"), walDir, s.log); err != nil {
			return nil, err
		}
		var err error
		wal, err = raftlog.Open(walDir, raftlog.Options{Logger: s.log, Fatal: cfg.StoreFatal, SegmentSize: cfg.LogSegmentSize, BeforeSync: cfg.LogBeforeSync})
		if err != nil {
			return nil, fmt.Errorf("open raft log: %w", err)
		}
		s.closer = append(s.closer, wal)
		s.room = wal.Room
		// The cache keeps recent entries out of file reads when followers
		// catch up.
		cached, err := raft.NewLogCache(512, wal)
		if err != nil {
			return nil, fmt.Errorf("raft log cache: %w", err)
		}
		logs, stable = cached, wal
		snaps, err = raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, rc.Logger)
		if err != nil {
			return nil, fmt.Errorf("open snapshot store: %w", err)
		}
	}

	s.trans = cfg.Transport
	if s.trans == nil {
		if cfg.InMemory && cfg.RaftAddr == "" {
			_, s.trans = raft.NewInmemTransport(raft.ServerAddress(cfg.Node))
		} else {
			adv := cfg.AdvertiseAddr
			if adv == "" {
				adv = cfg.RaftAddr
			}
			advAddr, err := net.ResolveTCPAddr("tcp", adv)
			if err != nil {
				return nil, fmt.Errorf("raft advertise address %q: %w", adv, err)
			}
			ln, err := net.Listen("tcp", cfg.RaftAddr)
			if err != nil {
				return nil, fmt.Errorf("listen raft %s: %w", cfg.RaftAddr, err)
			}
			if advAddr.Port == 0 {
				advAddr.Port = ln.Addr().(*net.TCPAddr).Port
			}
			if advAddr.IP.IsUnspecified() {
				ln.Close()
				return nil, errNoAdvertise
			}
			s.mux = newMux(ln, cfg.TLS, s.log)
			s.closer = append(s.closer, s.mux)
			s.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
				Stream:  &raftStream{subListener: s.mux.raft, advertise: advAddr, tls: cfg.TLS},
				MaxPool: 3,
				Timeout: 10 * time.Second,
				Logger:  rc.Logger,
			})
			s.closer = append(s.closer, s.trans.(io.Closer))
		}
	}

	if cfg.Bootstrap {
		has, err := raft.HasExistingState(logs, stable, snaps)
		if err != nil {
			return nil, fmt.Errorf("inspect raft state: %w", err)
		}
		if !has {
			servers := cfg.BootstrapServers
			if len(servers) == 0 {
				servers = []raft.Server{{Suffrage: raft.Voter, ID: rc.LocalID, Address: s.trans.LocalAddr()}}
			}
			if err := raft.BootstrapCluster(rc, logs, stable, snaps, s.trans, raft.Configuration{Servers: servers}); err != nil {
				return nil, fmt.Errorf("bootstrap raft: %w", err)
			}
		}
	}

	rf := &recordingFSM{FSM: s.fsm, log: s.changes}
	if wal != nil {
		rf.durable = wal.WaitDurable
	}
	f, trans, err := s.gateFresh(rf, logs, stable, snaps)
	if err != nil {
		return nil, err
	}
	if wal != nil {
		trans = newCommitClampTransport(trans, wal.Durable)
	}
	r, err := newRaft(rc, f, logs, stable, snaps, trans)
	if err != nil {
		return nil, fmt.Errorf("start raft: %w", err)
	}
	s.raft = r
	if wal != nil {
		// The leader's log write overlaps its replication (durable.go).
		// Raft calls the store from its own goroutine, which also sets its
		// state: a follower's append (its acknowledgement) is never
		// deferred.
		wal.DeferSyncWhile(func() bool { return r.State() == raft.Leader })
	}
	s.leases = newLeaseTracker(s)
	s.m = newServerMetrics(cfg.Registerer, s)
	s.freshStarted()

	if s.mux != nil {
		// equivalent mutant: the header timeout is a tuning constant
		s.rpcSrv = &http.Server{Handler: s.rpcHandler(), ReadHeaderTimeout: 10 * time.Second, ConnContext: withPeerIdentity}
		go s.rpcSrv.Serve(s.mux.rpc)
	}
	s.wg.Add(3)
	go s.watchLeadership()
	go s.adaptSnapshots()
	go s.runNudges()
	s.log.Info("raft server started", "node", cfg.Node, "addr", s.trans.LocalAddr(), "in_memory", cfg.InMemory,
		"heartbeat_timeout", cfg.HeartbeatTimeout, "election_timeout", cfg.ElectionTimeout,
		"snapshot_threshold", cfg.SnapshotThreshold)
	return s, nil
}

// newRaft is raft.NewRaft with its panics (a log entry missing behind the
// snapshot it could restore, for one) turned into errors, so that the
// stores opened for it are closed again and the data dir can be reopened.
func newRaft(rc *raft.Config, f raft.FSM, logs raft.LogStore, stable raft.StableStore, snaps raft.SnapshotStore, trans raft.Transport) (r *raft.Raft, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("raft refused its stored state: %v", p)
		}
	}()
	return raft.NewRaft(rc, f, logs, stable, snaps, trans)
}

// FSM is the registry this server applies to.
func (s *Server) FSM() *fsm.FSM { return s.fsm }

// Raft exposes the Raft node for membership changes and tests.
func (s *Server) Raft() *raft.Raft { return s.raft }

// Addr is the Raft address peers reach this server at.
func (s *Server) Addr() raft.ServerAddress { return s.trans.LocalAddr() }

// IsLeader reports whether this server is the Raft leader.
func (s *Server) IsLeader() bool { return s.raft.State() == raft.Leader }

// Leader returns the leader's node name and Raft address, empty if none.
func (s *Server) Leader() (string, raft.ServerAddress) {
	addr, id := s.raft.LeaderWithID()
	return string(id), addr
}

func (s *Server) timeout(ctx context.Context) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		// equivalent mutant: the timeout only bounds the wait to enter Raft's queue; at d == 0 either answer is as short
		if d := time.Until(dl); d > 0 {
			return d
		}
		return time.Millisecond
	}
	return s.cfg.ApplyTimeout
}

// Apply commits a command of the server's own (a lease's expiry) through
// Raft and returns what applying it produced. A command the registry
// refused returns its result and an error wrapping the fsm sentinel. Such
// commands may use the room the log keeps for Raft's own entries when the
// disk is full.
func (s *Server) Apply(ctx context.Context, cmd fsm.Command) (*fsm.Result, error) {
	data, err := fsm.Encode(cmd)
	if err != nil {
		return nil, err
	}
	return s.apply(ctx, data, false)
}

// ApplyEncoded is Apply for a client's write, already encoded (local or
// forwarded). On a full disk it is refused with ErrDiskFull before it
// reaches Raft: a leader whose log write failed would step down, and be
// elected again, over and over.
func (s *Server) ApplyEncoded(ctx context.Context, data []byte) (*fsm.Result, error) {
	return s.apply(ctx, data, true)
}

func (s *Server) apply(ctx context.Context, data []byte, client bool) (*fsm.Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if client && s.room != nil && s.IsLeader() {
		if err := s.room(); err != nil {
			s.m.diskFullRefusals.Inc()
			return nil, fmt.Errorf("%w: %v", ErrDiskFull, err)
		}
	}
	start := time.Now()
	s.beginWrite()
	f := s.raft.Apply(data, s.timeout(ctx))
	err := f.Error()
	s.endWrite(leaderFed(ctx))
	if err != nil {
		return nil, mapRaftError(err)
	}
	s.m.applyDuration.Observe(time.Since(start).Seconds())
	res, ok := f.Response().(*fsm.Result)
	if !ok {
		return nil, fmt.Errorf("election: unexpected apply response %T", f.Response())
	}
	if res.Err != nil {
		return res, res.Err
	}
	return res, nil
}

// DiskFull returns an error wrapping ErrDiskFull while the Raft log's disk
// has no room for clients' writes.
func (s *Server) DiskFull() error {
	if s.room == nil {
		return nil
	}
	if err := s.room(); err != nil {
		return fmt.Errorf("%w: %v", ErrDiskFull, err)
	}
	return nil
}

func mapRaftError(err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return fmt.Errorf("%w: %v", ErrNotLeader, err)
	case errors.Is(err, raft.ErrLeadershipLost):
		return fmt.Errorf("%w: %v", ErrUnknownOutcome, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrShutdown
	}
	return fmt.Errorf("raft apply: %w", err)
}

// ConsistentRead returns once this server's registry reflects every write
// acknowledged before the call: it confirms leadership with a quorum and
// waits until the commit index seen before that is applied. Raft's applied
// index is the one to wait on: no-op and configuration entries never reach
// the registry, so its own index may stay below the commit index.
func (s *Server) ConsistentRead(ctx context.Context) error {
	if bugReadSkipsLeaderCheck {
		return nil
	}
	if !s.IsLeader() {
		return ErrNotLeader
	}
	// A new leader's commit index may lag entries its predecessor
	// acknowledged until an entry of its own term commits: the lease
	// tracker's barrier, which starts every term, makes sure it does not.
	if err := s.leases.waitReady(ctx); err != nil {
		return err
	}
	readIndex := s.raft.CommitIndex()
	// The same quorum round keepalives wait for: it begins after the read
	// index was taken, and concurrent reads and keepalives share it.
	if err := s.leases.confirmLeader(ctx); err != nil {
		return err
	}
	for s.raft.AppliedIndex() < readIndex {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.stop:
			return ErrShutdown
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// ReadIndex is the index a copy of the registry must reach to reflect every
// write acknowledged before the call (this server must lead): see
// ConsistentRead.
func (s *Server) ReadIndex(ctx context.Context) (uint64, error) { return s.readIndex(ctx) }

// KeepAlive restarts a lease's full TTL. Only the leader tracks deadlines;
// a keepalive writes nothing to the log. The caller in ctx (acl.NewContext;
// none for the sidecar's own) must own the lease (see mayKeepAlive).
func (s *Server) KeepAlive(ctx context.Context, id string) (time.Duration, error) {
	if err := s.mayKeepAlive(ctx, id); err != nil {
		return 0, fmt.Errorf("keepalive: %w", err)
	}
	return s.leases.keepAlive(ctx, id)
}

// LeaseRemaining tells, on the leader, how long until a lease's deadline.
func (s *Server) LeaseRemaining(id string) (time.Duration, bool) {
	return s.leases.remaining(id)
}

// Status describes this server's Raft state.
func (s *Server) Status() api.Status {
	stats := s.raft.Stats()
	var term uint64
	fmt.Sscan(stats["term"], &term)
	leader, _ := s.Leader()
	st := api.Status{
		Node:         s.cfg.Node,
		Role:         "server",
		Leader:       leader,
		Term:         term,
		CommitIndex:  s.raft.CommitIndex(),
		AppliedIndex: s.raft.AppliedIndex(),
		Peers:        []string{},
	}
	if f := s.raft.GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			st.Peers = append(st.Peers, string(srv.ID))
		}
	}
	return st
}

// SaveSnapshot writes the current registry in the snapshot format.
func (s *Server) SaveSnapshot(w io.Writer) error {
	return s.fsm.WriteSnapshot(w)
}

// restoreIndexGap is how far past the last Raft index a user's restore is
// placed: far more entries than a leader appends while a restore waits for
// its turn in Raft's loop.
const restoreIndexGap = 1 << 16

// RestoreSnapshot replaces the registry of the whole cluster with a saved
// one. The file is checked in full first: Raft cannot take back a restore
// its state machine fails on.
func (s *Server) RestoreSnapshot(ctx context.Context, r io.Reader) error {
	// The user's file is read from disk twice (checksum, then decode) and
	// the reindexed registry goes back to disk for Raft: never the whole
	// file in memory more than once (SPEC: Limits).
	in, err := spool(r)
	if err != nil {
		return err
	}
	defer in.Close()
	if !s.IsLeader() {
		return ErrNotLeader
	}
	// Raft gives the restore the index max(meta.Index, last index) + 1.
	// Asking for an index well past the last one makes that exactly at, and
	// the registry is reindexed to it, so every replica takes the restore as
	// newer than what it holds (fsm.FSM.RestoreNewer); the gap leaves room
	// for entries appended before Raft's loop takes the restore.
	at := s.raft.LastIndex() + restoreIndexGap
	out, err := tempFile()
	if err != nil {
		return err
	}
	defer out.Close()
	bw := bufio.NewWriter(out)
	// ReindexTo checks the snapshot in full before a byte of it is used.
	// equivalent mutant: at-1 is past every entry before the restore too (the gap); at+1 is Raft's own index for it
	if err := fsm.ReindexTo(bw, in, at+1); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("restore: write reindexed snapshot: %w", err)
	}
	size, err := out.Seek(0, io.SeekCurrent)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if _, err := out.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("restore: rewind: %w", err)
	}
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Size: size, Index: at}
	if err := s.raft.Restore(meta, out, s.timeout(ctx)); err != nil {
		return fmt.Errorf("raft restore: %w", mapRaftError(err))
	}
	// Leases of the restored registry start their full TTL now.
	s.leases.resetAll()
	return nil
}

// tempFile is a temporary file removed once closed (on Linux at once: it
// lives on as long as it is open).
func tempFile() (*os.File, error) {
	f, err := os.CreateTemp("", "sidecar-restore-*")
	if err != nil {
		return nil, fmt.Errorf("restore: temporary file: %w", err)
	}
	os.Remove(f.Name())
	return f, nil
}

// spool returns r as a file to read from its start: r itself when it is a
// file already, else a temporary copy.
func spool(r io.Reader) (*os.File, error) {
	if f, ok := r.(*os.File); ok {
		if _, err := f.Seek(0, io.SeekCurrent); err == nil {
			dup, err := os.Open(f.Name())
			if err == nil {
				return dup, nil
			}
		}
	}
	f, err := tempFile()
	if err != nil {
		return nil, err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return nil, fmt.Errorf("restore: spool snapshot: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("restore: rewind: %w", err)
	}
	return f, nil
}

// TransferLeadership hands leadership to another voter (graceful shutdown).
func (s *Server) TransferLeadership() error {
	if !s.IsLeader() {
		return nil
	}
	if err := s.raft.LeadershipTransfer().Error(); err != nil {
		return fmt.Errorf("leadership transfer: %w", err)
	}
	return nil
}

// Close stops Raft and closes the stores. Safe to call twice.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		if s.rpcSrv != nil {
			s.rpcSrv.Close()
		}
		s.rpc.close()
		if s.leases != nil {
			// equivalent mutant: how long Close waits for a leader check is a tuning bound
			s.leases.stopLeaderChecks(2*s.cfg.LeaderLeaseTimeout + s.cfg.HeartbeatTimeout)
		}
		if err := s.raft.Shutdown().Error(); err != nil {
			s.closeErr = fmt.Errorf("raft shutdown: %w", err)
		}
		if nt, ok := s.trans.(*raft.NetworkTransport); ok {
			nt.CloseStreams()
		}
		s.wg.Wait()
		for i := len(s.closer) - 1; i >= 0; i-- {
			if err := s.closer[i].Close(); err != nil && s.closeErr == nil {
				s.closeErr = err
			}
		}
		s.m.unregister()
	})
	return s.closeErr
}

// watchLeadership runs leader-only work (the lease tracker) from raft's
// ordered notifications.
func (s *Server) watchLeadership() {
	defer s.wg.Done()
	var term *leaderTerm
	defer func() { term.end() }()
	for {
		select {
		case <-s.stop:
			return
		case leader := <-s.notify:
			term.end()
			term = nil
			if !leader {
				s.log.Info("lost raft leadership")
				continue
			}
			s.log.Info("became raft leader")
			term = startLeaderTerm(s.leases.lead)
		}
	}
}

// leaderTerm is leader-only work running for one term of leadership.
type leaderTerm struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func startLeaderTerm(work func(context.Context)) *leaderTerm {
	ctx, cancel := context.WithCancel(context.Background())
	t := &leaderTerm{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(t.done)
		work(ctx)
	}()
	return t
}

func (t *leaderTerm) end() {
	if t == nil {
		return
	}
	t.cancel()
	<-t.done
}
