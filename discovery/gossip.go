package discovery

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/sidecarhq/sidecar/internal/logadapt"
)

var (
	// ErrShutdown is returned by calls on a Gossip after Shutdown.
	ErrShutdown = errors.New("discovery: shut down")
	// ErrLeft is returned by Join and UpdateMeta after Leave: a node that
	// left stays out until it is shut down and started anew.
	ErrLeft = errors.New("discovery: left the cluster")
)

// Gossip is this node's membership in the cluster: a memberlist instance,
// the table of members as this node sees them (with failed and left
// members kept for Config.ReapAfter), and the stream of changes to it.
//
// All methods are safe for concurrent use.
type Gossip struct {
	cfg  Config
	log  *slog.Logger
	ml   *memberlist.Memberlist
	boot string // random per New; see wireMeta
	addr string // advertised gossip ip:port
	port int    // bound gossip port

	meta  atomic.Pointer[[]byte] // encoded local Meta, for NodeMeta
	bcast *memberlist.TransmitLimitedQueue

	mu      sync.Mutex // guards members, changes and changed
	members map[string]*memberState
	// changes counts the member table's changes; changed is closed at the
	// next one (Changes).
	changes  uint64
	changed  chan struct{}
	numAlive atomic.Int64 // alive members in the table, this node included

	events *eventQueue
	out    chan Event
	m      *metrics

	// lifeMu orders Leave and Shutdown (exclusive) against UpdateMeta
	// (shared): memberlist must not see an UpdateNode after Leave, nor a
	// Leave after Shutdown.
	lifeMu sync.RWMutex
	left   atomic.Bool
	closed atomic.Bool
	stop   chan struct{}

	joinMu     sync.Mutex
	started    bool
	cancelJoin context.CancelFunc
	joined     chan struct{}
	joinedOnce sync.Once

	// keyring is nil when gossip is not encrypted. keyQueue feeds
	// keyringLoop the requests of other members; pending routes answers to
	// the operations of this node waiting for them; keyOpMu runs those
	// operations one at a time.
	keyring   *localKeyring
	keyQueue  chan keyringRequest
	pendingMu sync.Mutex
	pending   map[string]chan keyringResponse
	keyOpMu   sync.Mutex

	wg sync.WaitGroup
}

// memberState is a table entry: the Member and the bookkeeping behind its
// Status.
type memberState struct {
	m       Member
	boot    string // from its meta; "" when undecodable
	metaErr string // last meta decode error, to log it once
	leaving bool   // a leave intent for this boot was received
}

// New validates cfg, starts memberlist listening on cfg.BindAddr and
// returns the Gossip. It does not contact anyone: call Start (or Join).
// On error nothing is left running.
func New(cfg Config) (*Gossip, error) {
	mc, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	boot := newBootID()
	metaBytes, err := encodeMeta(cfg.Meta, boot)
	if err != nil {
		return nil, err
	}
	kr, err := openKeyring(cfg.KeyringFile, cfg.EncryptKey, log.With("component", "gossip"))
	if err != nil {
		return nil, err
	}
	if kr != nil {
		mc.Keyring = kr.ring
		// Keyring requests are trusted because only a holder of a key can
		// seal a message this node accepts: never let clear text in.
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	}
	cfg.Join = slices.Clone(cfg.Join)
	cfg.EncryptKey = nil // held by the keyring only
	cfg.Memberlist = nil
	g := &Gossip{
		cfg:     cfg,
		log:     log.With("component", "gossip"),
		boot:    boot,
		members: make(map[string]*memberState),
		events:  newEventQueue(cfg.EventQueueSize),
		out:     make(chan Event),
		stop:    make(chan struct{}),
		joined:  make(chan struct{}),

		keyring:  kr,
		keyQueue: make(chan keyringRequest, keyringQueueSize),
		pending:  make(map[string]chan keyringResponse),
	}
	g.meta.Store(&metaBytes)
	g.m = newMetrics(g)
	g.bcast = &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return int(g.numAlive.Load()) },
		RetransmitMult: mc.RetransmitMult,
	}
	mc.Delegate = gossipDelegate{g}
	mc.Events = eventDelegate{g}
	mc.Logger = logadapt.StdLogger(log.With("component", "memberlist"))

	if cfg.wrapTransport != nil {
		nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
			BindAddrs: []string{mc.BindAddr}, BindPort: mc.BindPort,
			Logger: logadapt.StdLogger(log.With("component", "memberlist")),
		})
		if err != nil {
			return nil, fmt.Errorf("discovery: listen on %s: %w", cfg.BindAddr, err)
		}
		if mc.BindPort == 0 {
			mc.BindPort = nt.GetAutoBindPort()
			mc.AdvertisePort = mc.BindPort
		}
		mc.Transport = cfg.wrapTransport(nt)
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("discovery: start memberlist on %s: %w", cfg.BindAddr, err)
	}
	g.ml = ml
	g.port = mc.BindPort // memberlist stored the bound port when 0 was asked
	g.addr = net.JoinHostPort(mc.AdvertiseAddr, fmt.Sprint(mc.AdvertisePort))
	if err := g.m.register(cfg.Registerer); err != nil {
		_ = ml.Shutdown()
		return nil, err
	}
	g.wg.Add(4)
	go g.deliverEvents()
	go g.reapLoop()
	go g.reconnectLoop()
	go g.keyringLoop()
	g.log.Info("gossip listening", "name", cfg.Name, "bind", net.JoinHostPort(mc.BindAddr, fmt.Sprint(g.port)),
		"advertise", g.addr, "encrypted", kr != nil, "role", cfg.Meta.Role)
	return g, nil
}

func newBootID() string {
	var b [8]byte
	_, _ = crand.Read(b[:]) // never fails (crypto/rand panics instead)
	return hex.EncodeToString(b[:])
}

// Addr returns the advertised gossip "ip:port": what other nodes pass to
// --join to reach this one.
func (g *Gossip) Addr() string { return g.addr }

// Port returns the gossip port bound (UDP and TCP), useful when BindAddr
// asked for port 0.
func (g *Gossip) Port() int { return g.port }

// Start joins Config.Join in the background: it retries with backoff
// (Config.JoinRetryInterval doubling to JoinRetryMax) until one of them
// answers, ctx ends, or Leave or Shutdown is called. Failures are logged
// (the first and every tenth at warn, the others at debug), the success at
// info. Joined tells when it succeeded; without Join addresses this node
// is a cluster of its own and Joined is closed at once.
//
// Start may be called once.
func (g *Gossip) Start(ctx context.Context) error {
	g.joinMu.Lock()
	defer g.joinMu.Unlock()
	switch {
	case g.closed.Load():
		return ErrShutdown
	case g.left.Load():
		return ErrLeft
	case g.started:
		return errors.New("discovery: already started")
	}
	g.started = true
	if len(g.cfg.Join) == 0 {
		g.markJoined()
		return nil
	}
	jctx, cancel := context.WithCancel(ctx)
	g.cancelJoin = cancel
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		defer cancel()
		if _, err := g.Join(jctx, g.cfg.Join); err != nil {
			g.log.Debug("stopped joining", "err", err)
		}
	}()
	return nil
}

// Join contacts addrs ("host:port", names are resolved on every attempt)
// and merges state with every one that answers. It retries with backoff
// until at least one answers, and returns how many did. It returns early
// with ctx's error (wrapping it) when ctx ends, ErrShutdown or ErrLeft.
// Contacting one address is not interruptible: it can take memberlist's
// TCPTimeout (10s by default) when the address does not answer at all.
func (g *Gossip) Join(ctx context.Context, addrs []string) (int, error) {
	if len(addrs) == 0 {
		return 0, errors.New("discovery: join: no addresses")
	}
	delay := g.cfg.JoinRetryInterval
	for attempt := 1; ; attempt++ {
		if g.closed.Load() {
			return 0, ErrShutdown
		}
		if g.left.Load() {
			return 0, ErrLeft
		}
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("discovery: join %s: %w", strings.Join(addrs, ","), err)
		}
		n, err := g.joinOnce(ctx, addrs)
		if n > 0 && g.NumMembers() < 2 {
			// Only this node answered (its own address is in the list,
			// or behind a name such as a Kubernetes headless Service):
			// that is no cluster yet, so keep trying in the background.
			n, err = 0, errors.New("only this node answered")
		}
		if n > 0 {
			g.markJoined()
			g.log.Info("joined cluster", "contacted", n, "attempts", attempt, "members", g.NumMembers())
			if err != nil {
				g.log.Debug("some join addresses did not answer", "err", oneLine(err))
			}
			return n, nil
		}
		wait := jitter(delay)
		level := slog.LevelDebug
		if attempt == 1 || attempt%10 == 0 {
			level = slog.LevelWarn
		}
		g.log.Log(ctx, level, "join failed, will retry", "addrs", addrs, "attempt", attempt,
			"retry_in", wait.Round(time.Millisecond), "err", oneLine(err))
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return 0, fmt.Errorf("discovery: join %s: %w (last error: %s)", strings.Join(addrs, ","), ctx.Err(), oneLine(err))
		case <-g.stop:
			t.Stop()
			return 0, ErrShutdown
		}
		delay = min(2*delay, g.cfg.JoinRetryMax)
	}
}

// joinOnce tries each address in turn (memberlist.Join would too), so that
// ctx and Shutdown are noticed between addresses.
func (g *Gossip) joinOnce(ctx context.Context, addrs []string) (int, error) {
	n := 0
	var errs []error
	for _, a := range addrs {
		if ctx.Err() != nil || g.closed.Load() || g.left.Load() {
			break
		}
		k, err := g.ml.Join([]string{a})
		n += k
		if err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 && n == 0 {
		errs = append(errs, errors.New("interrupted"))
	}
	return n, errors.Join(errs...)
}

// jitter spreads d by ±20%.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// oneLine flattens memberlist's multi-line multierror texts for logs.
func oneLine(err error) string {
	if err == nil {
		return ""
	}
	return strings.Join(strings.Fields(err.Error()), " ")
}

// Joined is closed once a Join (or Start's background join) succeeded, or
// at Start when Config.Join is empty: the node is then part of a cluster.
func (g *Gossip) Joined() <-chan struct{} { return g.joined }

func (g *Gossip) markJoined() { g.joinedOnce.Do(func() { close(g.joined) }) }

func (g *Gossip) stopJoin() {
	g.joinMu.Lock()
	defer g.joinMu.Unlock()
	if g.cancelJoin != nil {
		g.cancelJoin()
	}
}

// Members returns every member this node knows, itself included, sorted by
// name: alive ones, and failed or left ones until they are reaped. The
// result is a copy.
func (g *Gossip) Members() []Member {
	g.mu.Lock()
	out := make([]Member, 0, len(g.members))
	for _, ms := range g.members {
		out = append(out, ms.snapshot())
	}
	g.mu.Unlock()
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Changes returns how many times the member table has changed (a join,
// failure, leave, meta update or reap) and a channel closed at the next
// change: what a blocking read of the members waits on.
func (g *Gossip) Changes() (uint64, <-chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.changed == nil {
		g.changed = make(chan struct{})
	}
	return g.changes, g.changed
}

// Member returns the member called name, if known.
func (g *Gossip) Member(name string) (Member, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	ms, ok := g.members[name]
	if !ok {
		return Member{}, false
	}
	return ms.snapshot(), true
}

// LocalMember returns this node as the others see it (its Status turns
// "left" after Leave).
func (g *Gossip) LocalMember() Member {
	m, _ := g.Member(g.cfg.Name)
	return m
}

// NumMembers returns the number of alive members, this node included.
func (g *Gossip) NumMembers() int { return int(g.numAlive.Load()) }

// Events returns the channel of membership changes, in the order this node
// saw them. There is one channel per Gossip, closed by Shutdown (events
// not yet received are then discarded); read it from one goroutine.
//
// memberlist is never blocked by a slow reader: events wait in a queue of
// up to Config.EventQueueSize. If the queue is full, it is emptied and
// replaced by one EventResync, after which events continue; a reader that
// gets EventResync rebuilds its view from Members. Since Members can then
// already show changes whose events follow, a reader should apply events
// idempotently (e.g. "member X is now failed", not "one more failure").
//
// The first event is the local node's own EventJoin.
func (g *Gossip) Events() <-chan Event { return g.out }

// UpdateMeta replaces this node's Meta and gossips it; the others see an
// EventUpdate. The new Meta is in effect at once (LocalMember, push/pull
// syncs); UpdateMeta then waits until the update was broadcast, at most
// Config.BroadcastTimeout, or until ctx ends. An error other than a
// validation error, ErrShutdown or ErrLeft leaves the update in effect and
// spreading.
func (g *Gossip) UpdateMeta(ctx context.Context, meta Meta) error {
	b, err := encodeMeta(meta, g.boot)
	if err != nil {
		return err
	}
	g.lifeMu.RLock()
	if g.closed.Load() {
		g.lifeMu.RUnlock()
		return ErrShutdown
	}
	if g.left.Load() {
		g.lifeMu.RUnlock()
		return ErrLeft
	}
	g.meta.Store(&b)
	res := make(chan error, 1)
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		defer g.lifeMu.RUnlock()
		res <- g.ml.UpdateNode(g.cfg.BroadcastTimeout)
	}()
	select {
	case err := <-res:
		if err != nil {
			return fmt.Errorf("discovery: update meta: %w", err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("discovery: update meta: %w", ctx.Err())
	}
}

// Leave leaves the cluster gracefully, so that the others mark this node
// "left" (EventLeave) rather than "failed". It first gossips a leave intent
// and waits until it was broadcast (at most half of timeout and
// BroadcastTimeout), then has memberlist broadcast its leave and waits for
// that within the rest of timeout. Background joining stops.
//
// Gossip keeps running after Leave, answering probes and spreading the
// leave, until Shutdown; call Shutdown next. A timeout ≤ 0 does not wait
// (the leave is then best effort, spreading only until Shutdown). An error
// means the wait timed out: the leave was still started. Leave is
// idempotent (a second call returns nil at once); after Shutdown it
// returns ErrShutdown.
func (g *Gossip) Leave(timeout time.Duration) error {
	g.lifeMu.Lock()
	defer g.lifeMu.Unlock()
	if g.closed.Load() {
		return ErrShutdown
	}
	if g.left.Swap(true) {
		return nil
	}
	g.stopJoin()
	deadline := time.Now().Add(timeout)

	g.mu.Lock()
	if self := g.members[g.cfg.Name]; self != nil {
		self.leaving = true
	}
	g.mu.Unlock()
	if g.numAlive.Load() > 1 && timeout > 0 {
		sent := make(chan struct{})
		g.bcast.QueueBroadcast(newIntentBroadcast(intentMsg{Name: g.cfg.Name, Boot: g.boot}, sent))
		t := time.NewTimer(min(timeout/2, g.cfg.BroadcastTimeout))
		select {
		case <-sent:
		case <-t.C:
			g.log.Debug("leave intent not fully broadcast in time")
		}
		t.Stop()
	} else {
		// Still gossip it: memberlist waits for nothing, but the intent
		// may yet go out before Shutdown.
		g.bcast.QueueBroadcast(newIntentBroadcast(intentMsg{Name: g.cfg.Name, Boot: g.boot}, nil))
	}

	wait := time.Until(deadline)
	if wait <= 0 {
		wait = time.Nanosecond // memberlist's 0 would wait forever
	}
	// memberlist's Leave only fails when its wait times out; the leave is
	// queued and spreads until Shutdown either way.
	if err := g.ml.Leave(wait); err != nil && timeout > 0 {
		return fmt.Errorf("discovery: leave: %w", err)
	}
	g.log.Info("left the cluster")
	return nil
}

// Shutdown stops gossip at once, without leaving: the others detect the
// silence and mark this node failed, unless Leave was called first. It
// closes Events, stops background work, waits for it (a join attempt to an
// address that does not answer can hold it up to memberlist's TCPTimeout,
// an UpdateMeta in flight up to BroadcastTimeout) and unregisters the
// metrics. It is idempotent.
func (g *Gossip) Shutdown() error {
	g.lifeMu.Lock()
	if g.closed.Swap(true) {
		g.lifeMu.Unlock()
		return nil
	}
	close(g.stop)
	g.stopJoin()
	err := g.ml.Shutdown()
	g.events.close()
	g.lifeMu.Unlock()
	g.wg.Wait()
	g.m.unregister()
	g.log.Info("gossip shut down")
	if err != nil {
		return fmt.Errorf("discovery: shutdown: %w", err)
	}
	return nil
}

// deliverEvents moves queued events to the Events channel, in order.
func (g *Gossip) deliverEvents() {
	defer g.wg.Done()
	defer close(g.out)
	for {
		ev, ok := g.events.pop(g.stop)
		if !ok {
			return
		}
		select {
		case g.out <- ev:
		case <-g.stop:
			return
		}
	}
}

// reapLoop drops failed and left members after ReapAfter. It checks ten
// times per ReapAfter (at most once a minute), so a member goes at most
// 10% (or a minute) late.
func (g *Gossip) reapLoop() {
	defer g.wg.Done()
	every := min(max(g.cfg.ReapAfter/10, 10*time.Millisecond), time.Minute)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-g.stop:
			return
		case now := <-t.C:
			g.reap(now)
		}
	}
}

// reconnectLoop contacts one random failed member every
// ReconnectInterval (see Config.ReconnectInterval).
func (g *Gossip) reconnectLoop() {
	defer g.wg.Done()
	if g.cfg.ReconnectInterval <= 0 {
		return
	}
	t := time.NewTicker(g.cfg.ReconnectInterval)
	defer t.Stop()
	for {
		select {
		case <-g.stop:
			return
		case <-t.C:
		}
		if g.left.Load() {
			continue
		}
		var failed []Member
		g.mu.Lock()
		for name, ms := range g.members {
			if name != g.cfg.Name && ms.m.Status == StatusFailed {
				failed = append(failed, ms.m)
			}
		}
		g.mu.Unlock()
		if len(failed) == 0 {
			continue
		}
		m := failed[rand.IntN(len(failed))]
		addr := net.JoinHostPort(m.Addr, fmt.Sprint(m.Port))
		// The exchange tells the member it was declared failed, so it
		// refutes with a new incarnation that reaches everyone.
		if _, err := g.ml.Join([]string{addr}); err != nil {
			g.log.Debug("reconnect to failed member", "member", m.Name, "addr", addr, "err", oneLine(err))
		} else {
			g.log.Info("reconnected to failed member", "member", m.Name, "addr", addr)
		}
	}
}

func (g *Gossip) reap(now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	reaped := false
	for name, ms := range g.members {
		if name == g.cfg.Name || ms.m.Status == StatusAlive || ms.m.Status == StatusSuspect {
			continue
		}
		if now.Sub(ms.m.Since) < g.cfg.ReapAfter {
			continue
		}
		delete(g.members, name)
		reaped = true
		g.log.Info("member reaped", "member", name, "status", ms.m.Status, "since", ms.m.Since)
		g.emitLocked(Event{Type: EventReap, Member: ms.snapshot()})
	}
	if reaped {
		g.recountLocked()
	}
}

func (ms *memberState) snapshot() Member {
	m := ms.m
	m.Meta = m.Meta.clone()
	m.Boot = ms.boot
	return m
}

// emitLocked queues ev for Events; g.mu is held, which orders events as the
// table changes.
func (g *Gossip) emitLocked(ev Event) {
	g.changes++
	if g.changed != nil {
		close(g.changed)
	}
	g.changed = make(chan struct{})
	dropped := g.events.push(ev)
	if dropped > 0 {
		g.m.dropped.Add(float64(dropped))
		g.m.events.WithLabelValues(EventResync.String()).Inc()
		g.log.Warn("event queue full: events dropped, readers must resync", "dropped", dropped)
	}
	g.m.events.WithLabelValues(ev.Type.String()).Inc()
}

// recountLocked refreshes numAlive and the members gauge.
func (g *Gossip) recountLocked() {
	counts := map[Status]int{StatusAlive: 0, StatusSuspect: 0, StatusFailed: 0, StatusLeft: 0}
	for _, ms := range g.members {
		counts[ms.m.Status]++
	}
	for st, n := range counts {
		g.m.members.WithLabelValues(string(st)).Set(float64(n))
	}
	g.numAlive.Store(int64(counts[StatusAlive] + counts[StatusSuspect]))
}
