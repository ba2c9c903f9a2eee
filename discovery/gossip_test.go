package discovery

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// patience bounds every wait for a condition: far above what the
// conditions take (milliseconds to a few seconds), so that a loaded machine
// (CI, -race, a VM that stalls for seconds) does not fail the tests.
const patience = 30 * time.Second

func names(ms []Member) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Name)
	}
	return out
}

func testClusterForms(t *testing.T, n int) {
	nodes := cluster(t, n)
	var want []string
	for i := range n {
		want = append(want, fmt.Sprintf("n%d", i))
	}
	took := allSee(t, patience, nodes, StatusAlive, want...)
	t.Logf("%d members converged in %v", n, took)
	for _, g := range nodes {
		<-g.Joined()
		if got := names(g.Members()); !slices.Equal(got, want) {
			t.Fatalf("%s: members %v, want %v", g.LocalMember().Name, got, want)
		}
		if g.NumMembers() != n {
			t.Errorf("%s: NumMembers %d, want %d", g.LocalMember().Name, g.NumMembers(), n)
		}
		for i, m := range g.Members() {
			peer := nodes[i]
			if m.Addr != "127.0.0.1" || m.Port != peer.Port() || net.JoinHostPort(m.Addr, strconv.Itoa(m.Port)) != peer.Addr() {
				t.Errorf("%s sees %s at %s:%d, want %s", g.LocalMember().Name, m.Name, m.Addr, m.Port, peer.Addr())
			}
			want := peer.LocalMember().Meta
			if !reflect.DeepEqual(m.Meta, want) {
				t.Errorf("%s sees meta of %s %+v, want %+v", g.LocalMember().Name, m.Name, m.Meta, want)
			}
			if m.Meta.Version != MetaVersion || m.Meta.Tags["node"] != m.Name {
				t.Errorf("%s: bad meta %+v", m.Name, m.Meta)
			}
			if wantServer := i < 3; m.Meta.IsServer() != wantServer || (wantServer && m.Meta.RaftAddr == "") {
				t.Errorf("%s: role %q raft %q", m.Name, m.Meta.Role, m.Meta.RaftAddr)
			}
		}
	}
}

func TestGossip_cluster_3(t *testing.T) { t.Parallel(); testClusterForms(t, 3) }
func TestGossip_cluster_5(t *testing.T) { t.Parallel(); testClusterForms(t, 5) }

func TestGossip_Start_retriesUntilSeedIsUp(t *testing.T) {
	t.Parallel()
	// A port nobody listens on yet, for the seed to take later.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	seedAddr := l.Addr().String()
	l.Close()

	var failures atomic.Int32
	b := newNode(t, "b", joining(seedAddr), func(c *Config) {
		c.Logger = slogCounting(c.Logger, "join failed, will retry", &failures)
	})
	start(t, b)
	waitFor(t, patience, "join failures", func() bool { return failures.Load() >= 3 })
	select {
	case <-b.Joined():
		t.Fatal("joined without a seed")
	default:
	}

	seed := newNode(t, "seed", func(c *Config) { c.BindAddr = seedAddr })
	start(t, seed)
	select {
	case <-b.Joined():
	case <-time.After(patience):
		t.Fatal("b did not join once the seed was up")
	}
	allSee(t, patience, []*Gossip{seed, b}, StatusAlive, "seed", "b")
	t.Logf("joined after %d failed attempts", failures.Load())
}

func TestGossip_Join_contextEnds(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	a := newNode(t, "a")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	n, err := a.Join(ctx, []string{dead})
	if n != 0 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Join = %d, %v; want 0, deadline exceeded", n, err)
	}
	if _, err := a.Join(context.Background(), nil); err == nil {
		t.Fatal("Join without addresses succeeded")
	}
}

func TestGossip_encryption(t *testing.T) {
	t.Parallel()
	key := bytes.Repeat([]byte{7}, KeySize)
	other := bytes.Repeat([]byte{8}, KeySize)
	withKey := func(k []byte) func(*Config) { return func(c *Config) { c.EncryptKey = k } }

	a := newNode(t, "a", withKey(key))
	start(t, a)
	b := newNode(t, "b", withKey(key), joining(a.Addr()))
	start(t, b)
	allSee(t, patience, []*Gossip{a, b}, StatusAlive, "a", "b")

	for _, tc := range []struct {
		name string
		key  []byte
	}{{"wrongkey", other}, {"nokey", nil}} {
		c := newNode(t, tc.name, withKey(tc.key))
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		n, err := c.Join(ctx, []string{a.Addr()})
		cancel()
		if n != 0 || err == nil {
			t.Errorf("%s: Join = %d, %v; want failure", tc.name, n, err)
		}
		if got := names(c.Members()); !slices.Equal(got, []string{tc.name}) {
			t.Errorf("%s sees %v", tc.name, got)
		}
	}
	for _, g := range []*Gossip{a, b} {
		if got := names(g.Members()); !slices.Equal(got, []string{"a", "b"}) {
			t.Errorf("%s sees %v, want [a b]", g.LocalMember().Name, got)
		}
	}
}

func TestGossip_Leave_seenAsLeft(t *testing.T) {
	t.Parallel()
	nodes := cluster(t, 3)
	logs := []*eventLog{recordEvents(t, nodes[0]), recordEvents(t, nodes[1])}
	allSee(t, patience, nodes, StatusAlive, "n0", "n1", "n2")

	begin := time.Now()
	if err := nodes[2].Leave(5 * time.Second); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	if err := nodes[2].Leave(5 * time.Second); err != nil {
		t.Fatalf("second Leave: %v", err)
	}
	if st := nodes[2].LocalMember().Status; st != StatusLeft {
		t.Errorf("leaver sees itself %s", st)
	}
	if err := nodes[2].Shutdown(); err != nil {
		t.Fatal(err)
	}
	allSee(t, patience, nodes[:2], StatusLeft, "n2")
	t.Logf("leave seen by all %v after Leave began", time.Since(begin))
	for i, l := range logs {
		waitFor(t, patience, "EventLeave", func() bool { return l.has("n2", EventLeave) })
		if l.has("n2", EventFail) {
			t.Errorf("n%d got a Fail event for n2: %v", i, l.of("n2"))
		}
	}
	// Stays left: it is not probed, so it never turns failed.
	if n := nodes[0].NumMembers(); n != 2 {
		t.Errorf("NumMembers %d after leave, want 2", n)
	}
	if err := nodes[2].Leave(5 * time.Second); !errors.Is(err, ErrShutdown) {
		t.Errorf("Leave after Shutdown: %v", err)
	}
}

// measureFailure kills the last node of a cluster of n built with opts and
// returns how long until the first and until every other node saw it
// failed.
func measureFailure(t *testing.T, n int, opts ...func(*Config)) (first, everywhere time.Duration) {
	nodes := cluster(t, n, opts...)
	var all []string
	for i := range n {
		all = append(all, fmt.Sprintf("n%d", i))
	}
	allSee(t, patience, nodes, StatusAlive, all...)
	logs := make([]*eventLog, n-1)
	for i := range logs {
		logs[i] = recordEvents(t, nodes[i])
	}
	victim := nodes[n-1]
	begin := time.Now()
	if err := victim.Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, patience, "a node to see the failure", func() bool {
		for _, g := range nodes[:n-1] {
			if statusOf(g, all[n-1]) == StatusFailed {
				return true
			}
		}
		return false
	})
	first = time.Since(begin)
	allSee(t, patience, nodes[:n-1], StatusFailed, all[n-1])
	took := time.Since(begin)
	for i, l := range logs {
		waitFor(t, patience, "EventFail", func() bool { return l.has(all[n-1], EventFail) })
		if l.has(all[n-1], EventLeave) {
			t.Errorf("n%d got a Leave event for a killed node", i)
		}
	}
	for _, g := range nodes[:n-1] {
		if g.NumMembers() != n-1 {
			t.Errorf("NumMembers %d, want %d", g.NumMembers(), n-1)
		}
	}
	return first, took
}

func TestGossip_Shutdown_seenAsFailed(t *testing.T) {
	t.Parallel()
	for _, n := range []int{3, 5} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			t.Parallel()
			first, took := measureFailure(t, n)
			t.Logf("TestConfig, %d members: killed member failed on one member after %v, on all after %v", n, first, took)
			if took > 10*time.Second {
				t.Errorf("failure detection took %v", took)
			}
		})
	}
}

// TestGossip_Shutdown_seenAsFailed_defaultTimings measures detection with
// DefaultConfig's memberlist timings (on loopback, so without network
// latency).
func TestGossip_Shutdown_seenAsFailed_defaultTimings(t *testing.T) {
	if testing.Short() {
		t.Skip("takes seconds")
	}
	t.Parallel()
	defaults := func(c *Config) { c.Memberlist = DefaultConfig().Memberlist }
	for _, n := range []int{3, 5} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			t.Parallel()
			first, took := measureFailure(t, n, defaults)
			t.Logf("DefaultConfig, %d members: killed member failed on one member after %v, on all after %v", n, first, took)
			if took > 15*time.Second {
				t.Errorf("failure detection took %v", took)
			}
		})
	}
}

func TestGossip_UpdateMeta_propagates(t *testing.T) {
	t.Parallel()
	nodes := cluster(t, 3)
	allSee(t, patience, nodes, StatusAlive, "n0", "n1", "n2")
	logs := recordEvents(t, nodes[0])

	meta := nodes[2].LocalMember().Meta
	meta.HTTPAddr = "127.0.0.1:9999"
	meta.Tags = map[string]string{"zone": "b"}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := nodes[2].UpdateMeta(ctx, meta); err != nil {
		t.Fatalf("UpdateMeta: %v", err)
	}
	if got := nodes[2].LocalMember().Meta; !reflect.DeepEqual(got, meta) {
		t.Errorf("local meta %+v, want %+v", got, meta)
	}
	waitFor(t, patience, "meta everywhere", func() bool {
		for _, g := range nodes {
			m, _ := g.Member("n2")
			if !reflect.DeepEqual(m.Meta, meta) || m.Status != StatusAlive {
				return false
			}
		}
		return true
	})
	waitFor(t, patience, "EventUpdate", func() bool {
		evs := logs.of("n2")
		return len(evs) > 0 && evs[len(evs)-1].Type == EventUpdate && evs[len(evs)-1].Member.Meta.HTTPAddr == "127.0.0.1:9999"
	})

	big := Meta{Role: RoleServer, Tags: map[string]string{"x": string(bytes.Repeat([]byte{'a'}, MaxMetaSize))}}
	if err := nodes[2].UpdateMeta(ctx, big); !errors.Is(err, ErrMetaTooLarge) {
		t.Errorf("UpdateMeta(too large) = %v", err)
	}
	if err := nodes[2].Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := nodes[2].UpdateMeta(ctx, meta); !errors.Is(err, ErrLeft) {
		t.Errorf("UpdateMeta after Leave = %v, want ErrLeft", err)
	}
	if _, err := nodes[2].Join(ctx, []string{nodes[0].Addr()}); !errors.Is(err, ErrLeft) {
		t.Errorf("Join after Leave = %v, want ErrLeft", err)
	}
}

func TestGossip_Events_inOrder(t *testing.T) {
	t.Parallel()
	a := newNode(t, "a")
	la := recordEvents(t, a)
	start(t, a)
	b := newNode(t, "b", joining(a.Addr()))
	start(t, b)
	allSee(t, patience, []*Gossip{a, b}, StatusAlive, "a", "b")

	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		m := b.LocalMember().Meta
		m.HTTPAddr = fmt.Sprintf("127.0.0.1:%d", 9000+i)
		if err := b.UpdateMeta(ctx, m); err != nil {
			t.Fatal(err)
		}
		waitFor(t, patience, "update", func() bool {
			m, _ := a.Member("b")
			return m.Meta.HTTPAddr == fmt.Sprintf("127.0.0.1:%d", 9000+i)
		})
	}
	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, patience, "fail event", func() bool { return la.has("b", EventFail) })

	want := []EventType{EventJoin, EventUpdate, EventUpdate, EventUpdate, EventFail}
	if got := la.types("b"); !slices.Equal(got, want) {
		t.Fatalf("events about b: %v, want %v", la.of("b"), want)
	}
	for i, ev := range la.of("b")[1:4] {
		if w := fmt.Sprintf("127.0.0.1:%d", 9001+i); ev.Member.Meta.HTTPAddr != w {
			t.Errorf("update %d carries %s, want %s", i, ev.Member.Meta.HTTPAddr, w)
		}
	}
	if got := la.types("a"); !slices.Equal(got, []EventType{EventJoin}) || la.of("a")[0].Member.Status != StatusAlive {
		t.Errorf("events about a itself: %v", la.of("a"))
	}
}

// A member that failed and comes back (same name and address, new run) is
// alive again, with its new meta, and a later graceful leave of the new
// run is "left".
func TestGossip_rejoinAfterFailure(t *testing.T) {
	t.Parallel()
	a := newNode(t, "a")
	la := recordEvents(t, a)
	start(t, a)
	b := newNode(t, "b", joining(a.Addr()))
	start(t, b)
	allSee(t, patience, []*Gossip{a}, StatusAlive, "b")
	bAddr := b.Addr()
	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}
	allSee(t, patience, []*Gossip{a}, StatusFailed, "b")

	b2 := newNode(t, "b", joining(a.Addr()), func(c *Config) {
		c.BindAddr = bAddr
		c.Meta.HTTPAddr = "127.0.0.1:8888"
	})
	start(t, b2)
	waitFor(t, patience, "b back", func() bool {
		m, _ := a.Member("b")
		return m.Status == StatusAlive && m.Meta.HTTPAddr == "127.0.0.1:8888"
	})
	if err := b2.Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	allSee(t, patience, []*Gossip{a}, StatusLeft, "b")
	want := []EventType{EventJoin, EventFail, EventJoin, EventLeave}
	waitFor(t, patience, "events", func() bool { return slices.Equal(la.types("b"), want) })
}

func TestGossip_reap(t *testing.T) {
	t.Parallel()
	reapAfter := 300 * time.Millisecond
	a := newNode(t, "a", func(c *Config) { c.ReapAfter = reapAfter })
	la := recordEvents(t, a)
	start(t, a)
	b := newNode(t, "b", joining(a.Addr()))
	start(t, b)
	c := newNode(t, "c", joining(a.Addr()))
	start(t, c)
	// c too must know the others: a leave before its own join finished
	// has nobody to gossip its intent to, and a then sees c fail.
	allSee(t, patience, []*Gossip{a, c}, StatusAlive, "a", "b", "c")

	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := c.Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Shutdown(); err != nil {
		t.Fatal(err)
	}
	allSee(t, patience, []*Gossip{a}, StatusLeft, "c")
	allSee(t, patience, []*Gossip{a}, StatusFailed, "b")
	failedAt, _ := a.Member("b")
	waitFor(t, patience, "reap", func() bool { return slices.Equal(names(a.Members()), []string{"a"}) })
	if held := time.Since(failedAt.Since); held < reapAfter {
		t.Errorf("reaped after %v, before ReapAfter %v", held, reapAfter)
	}
	waitFor(t, patience, "reap events", func() bool { return la.has("b", EventReap) && la.has("c", EventReap) })
	for _, n := range []string{"b", "c"} {
		evs := la.of(n)
		if last := evs[len(evs)-1]; last.Type != EventReap {
			t.Errorf("last event of %s: %v", n, last)
		}
	}
}

// A leave intent that arrives after the member was declared failed turns
// it "left"; one of another run of the node, or malformed, is ignored.
func TestGossip_leaveIntent_afterFailure(t *testing.T) {
	t.Parallel()
	a := newNode(t, "a")
	la := recordEvents(t, a)
	start(t, a)
	b := newNode(t, "b", joining(a.Addr()))
	start(t, b)
	allSee(t, patience, []*Gossip{a}, StatusAlive, "b")
	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}
	allSee(t, patience, []*Gossip{a}, StatusFailed, "b")

	d := gossipDelegate{a}
	d.NotifyMsg(newIntentBroadcast(intentMsg{Name: "b", Boot: "0123456789abcdef"}, nil).Message())
	d.NotifyMsg([]byte{msgLeaveIntent, '{'})
	d.NotifyMsg([]byte{99, 1, 2})
	if st := statusOf(a, "b"); st != StatusFailed {
		t.Fatalf("stale or bad intent changed b to %s", st)
	}
	// b's real intent, as a push/pull sync from a third node carries it.
	third := &Gossip{members: map[string]*memberState{"b": {boot: b.boot, leaving: true}}}
	d.MergeRemoteState(gossipDelegate{third}.LocalState(false), false)
	if st := statusOf(a, "b"); st != StatusLeft {
		t.Fatalf("b is %s after its intent arrived, want left", st)
	}
	waitFor(t, patience, "events", func() bool {
		return slices.Equal(la.types("b"), []EventType{EventJoin, EventFail, EventLeave})
	})
	if got := d.LocalState(false); !bytes.Contains(got, []byte(b.boot)) {
		t.Errorf("a does not pass b's intent on: %q", got)
	}
}

func TestGossip_lifecycle(t *testing.T) {
	t.Parallel()
	a := newNode(t, "a")
	start(t, a)
	select {
	case <-a.Joined():
	default:
		t.Error("Joined not closed for a node without Join addresses")
	}
	if err := a.Start(context.Background()); err == nil {
		t.Error("second Start succeeded")
	}
	if err := a.Leave(0); err != nil { // alone: nothing to wait for
		t.Errorf("Leave alone: %v", err)
	}
	if err := a.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := a.Shutdown(); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	if ev, ok := <-a.Events(); ok {
		t.Errorf("Events open after Shutdown: %v", ev)
	}
	if err := a.UpdateMeta(context.Background(), Meta{}); !errors.Is(err, ErrShutdown) {
		t.Errorf("UpdateMeta after Shutdown: %v", err)
	}
	if _, err := a.Join(context.Background(), []string{"127.0.0.1:1"}); !errors.Is(err, ErrShutdown) {
		t.Errorf("Join after Shutdown: %v", err)
	}
	if err := a.Start(context.Background()); !errors.Is(err, ErrShutdown) {
		t.Errorf("Start after Shutdown: %v", err)
	}
}

// Shutdown stops a background join that is still retrying.
func TestGossip_Shutdown_stopsJoining(t *testing.T) {
	t.Parallel()
	a := newNode(t, "a", joining("127.0.0.1:1"))
	start(t, a)
	if err := a.Shutdown(); err != nil {
		t.Fatal(err)
	}
}

func TestNew_rejectsBadConfig(t *testing.T) {
	t.Parallel()
	busy := newNode(t, "busy")
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want error
	}{
		{"no name", func(c *Config) { c.Name = "" }, ErrConfig},
		{"bind host name", func(c *Config) { c.BindAddr = "localhost:0" }, ErrConfig},
		{"bind no port", func(c *Config) { c.BindAddr = "127.0.0.1" }, ErrConfig},
		{"advertise with port", func(c *Config) { c.AdvertiseAddr = "127.0.0.1:7946" }, ErrConfig},
		{"advertise unspecified", func(c *Config) { c.AdvertiseAddr = "0.0.0.0" }, ErrConfig},
		{"join without port", func(c *Config) { c.Join = []string{"10.0.0.1"} }, ErrConfig},
		{"key of no AES size", func(c *Config) { c.EncryptKey = make([]byte, 20) }, ErrConfig},
		{"keyring timeout", func(c *Config) { c.KeyringTimeout = 0 }, ErrConfig},
		{"retry", func(c *Config) { c.JoinRetryMax = c.JoinRetryInterval / 2 }, ErrConfig},
		{"reap", func(c *Config) { c.ReapAfter = 0 }, ErrConfig},
		{"queue", func(c *Config) { c.EventQueueSize = 0 }, ErrConfig},
		{"probe timeout", func(c *Config) { c.Memberlist.ProbeTimeout = c.Memberlist.ProbeInterval }, ErrConfig},
		{"meta", func(c *Config) { c.Meta.Tags = map[string]string{"x": string(make([]byte, 600))} }, ErrMetaTooLarge},
		{"port in use", func(c *Config) { c.BindAddr = busy.Addr() }, nil},
	} {
		cfg := TestConfig()
		cfg.Name = "x"
		tc.mod(&cfg)
		g, err := New(cfg)
		if err == nil {
			g.Shutdown()
			t.Errorf("%s: New succeeded", tc.name)
			continue
		}
		if tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestGossip_metrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	a := newNode(t, "a", func(c *Config) { c.Registerer = reg })
	start(t, a)
	b := newNode(t, "b", joining(a.Addr()))
	start(t, b)
	allSee(t, patience, []*Gossip{a}, StatusAlive, "a", "b")
	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}
	allSee(t, patience, []*Gossip{a}, StatusFailed, "b")

	if got := testutil.ToFloat64(a.m.members.WithLabelValues("alive")); got != 1 {
		t.Errorf("alive gauge %v", got)
	}
	if got := testutil.ToFloat64(a.m.members.WithLabelValues("failed")); got != 1 {
		t.Errorf("failed gauge %v", got)
	}
	if got := testutil.ToFloat64(a.m.events.WithLabelValues("join")); got != 2 {
		t.Errorf("join events %v", got)
	}
	if got := testutil.ToFloat64(a.m.events.WithLabelValues("fail")); got != 1 {
		t.Errorf("fail events %v", got)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
	n, err := testutil.GatherAndCount(reg)
	if err != nil || n == 0 {
		t.Fatalf("gathered %d, %v", n, err)
	}
	// A second Gossip on the same registry is refused, and leaves the
	// first one's metrics registered.
	_, err = New(func() Config {
		c := TestConfig()
		c.Name, c.Registerer = "dup", reg
		return c
	}())
	if err == nil {
		t.Fatal("duplicate registration accepted")
	}
	if n2, _ := testutil.GatherAndCount(reg); n2 != n {
		t.Errorf("metrics %d after failed New, want %d", n2, n)
	}
	a.Shutdown()
	if n, _ := testutil.GatherAndCount(reg); n != 0 {
		t.Errorf("%d metrics still registered after Shutdown", n)
	}
}

func TestEventQueue_overflowResyncs(t *testing.T) {
	q := newEventQueue(3)
	stop := make(chan struct{})
	ev := func(i int) Event { return Event{Type: EventUpdate, Member: Member{Name: strconv.Itoa(i)}} }
	dropped := 0
	for i := range 5 {
		dropped += q.push(ev(i))
	}
	// 0 1 2 fill it; 3 drops three for [resync 3]; 4 fits.
	if dropped != 3 {
		t.Errorf("dropped %d, want 3", dropped)
	}
	var got []string
	for range 3 {
		e, ok := q.pop(stop)
		if !ok {
			t.Fatal("pop failed")
		}
		got = append(got, e.String())
	}
	want := []string{"resync", "update 3 ()", "update 4 ()"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	close(stop)
	if _, ok := q.pop(stop); ok {
		t.Error("pop on an empty stopped queue returned an event")
	}
}

// Nobody reading Events never blocks memberlist: a cluster forms with a
// one-event queue, and its readers get a resync.
func TestGossip_Events_slowReaderNeverBlocks(t *testing.T) {
	t.Parallel()
	nodes := cluster(t, 4, func(c *Config) { c.EventQueueSize = 1 })
	allSee(t, patience, nodes, StatusAlive, "n0", "n1", "n2", "n3")
	timeout := time.After(patience)
	for {
		select {
		case ev := <-nodes[0].Events():
			if ev.Type == EventResync {
				return
			}
		case <-timeout:
			t.Fatal("no resync event")
		}
	}
}

// slogCounting returns l, counting the records (of any level) whose
// message is msg.
func slogCounting(l *slog.Logger, msg string, n *atomic.Int32) *slog.Logger {
	return slog.New(countingHandler{l.Handler(), msg, n})
}

type countingHandler struct {
	slog.Handler
	msg string
	n   *atomic.Int32
}

func (h countingHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h countingHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.n.Add(1)
	}
	if !h.Handler.Enabled(ctx, r.Level) {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h countingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return countingHandler{h.Handler.WithAttrs(as), h.msg, h.n}
}

func (h countingHandler) WithGroup(name string) slog.Handler {
	return countingHandler{h.Handler.WithGroup(name), h.msg, h.n}
}

// A join list holding this node's own address (as a Kubernetes headless
// Service does) is no cluster: Join keeps trying until another node answers.
func TestGossip_Join_selfIsNotACluster(t *testing.T) {
	t.Parallel()
	a := newNode(t, "a")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if n, err := a.Join(ctx, []string{a.Addr()}); n != 0 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Join of only itself = %d, %v; want 0 and the deadline", n, err)
	}
	b := newNode(t, "b")
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if n, err := a.Join(ctx2, []string{a.Addr(), b.Addr()}); n == 0 || err != nil {
		t.Fatalf("Join with another node = %d, %v", n, err)
	}
	if a.NumMembers() != 2 {
		t.Fatalf("a sees %d members, want 2", a.NumMembers())
	}
}

// Changes counts the member table's changes and closes its channel at the
// next one: a join wakes a waiter, and the count grows.
func TestGossip_Changes(t *testing.T) {
	t.Parallel()
	nodes := cluster(t, 1)
	n0 := nodes[0]
	count, ch := n0.Changes()
	g := newNode(t, "late", joining(n0.Addr()))
	start(t, g)
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("a join did not close the Changes channel")
	}
	if after, _ := n0.Changes(); after <= count {
		t.Fatalf("changes %d after a join, want more than %d", after, count)
	}
}
