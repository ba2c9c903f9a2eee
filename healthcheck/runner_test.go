package healthcheck_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/sidecarhq/sidecar/fsm"
	"github.com/sidecarhq/sidecar/healthcheck"
)

func TestRunner_HTTP(t *testing.T) {
	ok := newTarget(t, "all good", 200)
	busy := newTarget(t, "slow down", 429)
	broken := newTarget(t, "boom", 500)
	hang, hangRequests := hangingTarget(t)
	loop := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, r.URL.Path, http.StatusFound)
	}))
	t.Cleanup(loop.Close)

	n := &recorder{}
	r := newRunner(t, testConfig(t), n)
	hangCheck := httpCheck("hang", hang.URL)
	hangCheck.Timeout = 50 * ms
	if err := r.Sync([]healthcheck.Instance{{ID: "web-1", Checks: []fsm.Check{
		httpCheck("ok", ok.URL+"/health"),
		httpCheck("busy", busy.URL),
		httpCheck("broken", broken.URL),
		httpCheck("loop", loop.URL+"/x"),
		httpCheck("auth", strings.Replace(ok.URL, "http://", "http://u:secret@", 1)),
		hangCheck,
	}}}); err != nil {
		t.Fatal(err)
	}

	waitStatus(t, r, "ok", fsm.StatusPassing, "HTTP GET "+ok.URL+"/health: 200 OK Output: all good")
	waitStatus(t, r, "busy", fsm.StatusWarning, "429 Too Many Requests Output: slow down")
	waitStatus(t, r, "broken", fsm.StatusCritical, "500 Internal Server Error Output: boom")
	waitStatus(t, r, "loop", fsm.StatusCritical, "stopped after 5 redirects")
	if st := waitStatus(t, r, "auth", fsm.StatusPassing, "HTTP GET http://u:xxxxx@"); strings.Contains(st.Output, "secret") {
		t.Errorf("output %q shows the password", st.Output)
	}
	start := time.Now()
	waitFor(t, 5*time.Second, "two requests to the hanging target", func() bool { return hangRequests() >= 2 })
	waitStatus(t, r, "hang", fsm.StatusCritical, "timed out after 50ms")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("hanging target took %v to be cut twice at a 50ms timeout", d)
	}

	// New checks start critical: broken, loop and hang never changed.
	for id, want := range map[string][]string{
		"ok": {fsm.StatusPassing}, "auth": {fsm.StatusPassing}, "busy": {fsm.StatusWarning},
		"broken": nil, "loop": nil, "hang": nil,
	} {
		if got := n.statuses(id); !slices.Equal(got, want) {
			t.Errorf("%s: notified %v, want %v", id, got, want)
		}
	}
	if c, _ := n.last("ok"); c.Output != "HTTP GET "+ok.URL+"/health: 200 OK Output: all good" {
		t.Errorf("ok: notified output %q", c.Output)
	}
}

func TestRunner_HTTP_outputTruncated(t *testing.T) {
	// 3-byte runes, so the limit falls inside one.
	body := strings.Repeat("€", 1000)
	tg := newTarget(t, body, 200)
	cfg := testConfig(t)
	cfg.OutputLimit = 100
	r := newRunner(t, cfg, &recorder{})
	if err := r.Sync([]healthcheck.Instance{{ID: "web-1", Checks: []fsm.Check{httpCheck("big", tg.URL)}}}); err != nil {
		t.Fatal(err)
	}
	st := waitStatus(t, r, "big", fsm.StatusPassing, "Output: €")
	if len(st.Output) > 100 || len(st.Output) < 97 {
		t.Errorf("output is %d bytes, want 97-100", len(st.Output))
	}
	if !strings.HasSuffix(st.Output, "€") {
		t.Errorf("output %q does not end with a whole rune", st.Output)
	}
}

// TestRunner_HTTP_connectionsReused checks that runs share connections: the
// body is drained and closed, the transport shared.
func TestRunner_HTTP_connectionsReused(t *testing.T) {
	var conns, requests atomic.Int64
	tg := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		requests.Add(1)
		fmt.Fprint(w, strings.Repeat("x", 10000))
	}))
	tg.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	tg.Start()
	t.Cleanup(tg.Close)
	r := newRunner(t, testConfig(t), &recorder{})
	if err := r.Sync([]healthcheck.Instance{{ID: "web-1", Checks: []fsm.Check{
		httpCheck("a", tg.URL), httpCheck("b", tg.URL+"/b"),
	}}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "20 runs", func() bool { return requests.Load() >= 20 })
	if c := conns.Load(); c > 4 {
		t.Errorf("%d connections for %d runs of 2 checks; want them reused", c, requests.Load())
	}
}

func TestRunner_TCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	n := &recorder{}
	r := newRunner(t, testConfig(t), n)
	if err := r.Sync([]healthcheck.Instance{{ID: "db-1", Checks: []fsm.Check{
		{ID: "open", Type: "tcp", TCP: ln.Addr().String(), Interval: 20 * ms, Timeout: 500 * ms},
		{ID: "closed", Type: "tcp", TCP: closedAddr, Interval: 20 * ms, Timeout: 500 * ms},
	}}}); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, r, "open", fsm.StatusPassing, "TCP connect "+ln.Addr().String()+": Success")
	waitStatus(t, r, "closed", fsm.StatusCritical, "connection refused")
	if got := n.statuses("open"); !slices.Equal(got, []string{fsm.StatusPassing}) {
		t.Errorf("open: notified %v", got)
	}
	if got := n.statuses("closed"); got != nil {
		t.Errorf("closed: notified %v, want nothing (it starts critical)", got)
	}
	r.Close()
	ln.Close()
	<-accepted
}

func TestRunner_Exec(t *testing.T) {
	dir := t.TempDir()
	exit0 := writeScript(t, dir, "exit0", "echo fine\nexit 0\n")
	exit1 := writeScript(t, dir, "exit1", "echo degraded >&2\nexit 1\n")
	exit2 := writeScript(t, dir, "exit2", "echo broken\nexit 2\n")
	silent := writeScript(t, dir, "silent", "exit 3\n")
	// A child left behind by a command that exits is killed with its group.
	leaver := writeScript(t, dir, "leaver", "sleep 60 >/dev/null 2>&1 &\necho $! > \"$1\"\necho left\n")
	leftPid := dir + "/left.pid"

	n := &recorder{}
	r := newRunner(t, testConfig(t), n)
	exec := func(id string, argv ...string) fsm.Check {
		return fsm.Check{ID: id, Type: "exec", Exec: argv, Interval: 50 * ms, Timeout: 2000 * ms}
	}
	if err := r.Sync([]healthcheck.Instance{{ID: "job-1", Checks: []fsm.Check{
		exec("e0", exit0), exec("e1", exit1), exec("e2", exit2), exec("e3", silent),
		exec("missing", dir+"/no-such-command"),
		exec("leaver", leaver, leftPid),
	}}}); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, r, "e0", fsm.StatusPassing, "fine\n")
	waitStatus(t, r, "e1", fsm.StatusWarning, "degraded\n")
	waitStatus(t, r, "e2", fsm.StatusCritical, "broken\n")
	waitStatus(t, r, "e3", fsm.StatusCritical, "exit status 3")
	waitStatus(t, r, "missing", fsm.StatusCritical, "no such file or directory")
	waitStatus(t, r, "leaver", fsm.StatusPassing, "left\n")
	pid := readPid(t, leftPid)
	waitFor(t, 5*time.Second, fmt.Sprintf("left-behind child %d killed", pid), func() bool { return processGone(pid) })

	if got := n.statuses("e0"); !slices.Equal(got, []string{fsm.StatusPassing}) {
		t.Errorf("e0: notified %v", got)
	}
	if got := n.statuses("e1"); !slices.Equal(got, []string{fsm.StatusWarning}) {
		t.Errorf("e1: notified %v", got)
	}
}

func TestRunner_Exec_hangKillsGroup(t *testing.T) {
	dir := t.TempDir()
	// The script starts a child that would hang as long, writes both
	// pids, then waits.
	hang := writeScript(t, dir, "hang", "sleep 60 &\necho $! > \"$1/child\"\necho $$ > \"$1/parent\"\necho started\nwait\n")
	r := newRunner(t, testConfig(t), &recorder{})
	start := time.Now()
	if err := r.Sync([]healthcheck.Instance{{ID: "job-1", Checks: []fsm.Check{
		{ID: "hang", Type: "exec", Exec: []string{hang, dir}, Interval: 10 * 1000 * ms, Timeout: 500 * ms},
	}}}); err != nil {
		t.Fatal(err)
	}
	parent, child := readPid(t, dir+"/parent"), readPid(t, dir+"/child")
	if processGone(parent) || processGone(child) {
		t.Fatal("processes gone before the timeout: processGone sees nothing")
	}
	st := waitStatus(t, r, "hang", fsm.StatusCritical, "timed out after 500ms")
	if !strings.Contains(st.Output, "started") {
		t.Errorf("output %q lacks what the script printed", st.Output)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("hung script cut after %v, want about 500ms", d)
	}
	for _, pid := range []int{parent, child} {
		waitFor(t, 5*time.Second, fmt.Sprintf("process %d killed", pid), func() bool { return processGone(pid) })
	}
}

func TestRunner_Exec_closeKillsRun(t *testing.T) {
	dir := t.TempDir()
	hang := writeScript(t, dir, "hang", "sleep 60 &\necho $! > \"$1/child\"\nwait\n")
	r, err := healthcheck.New(testConfig(t), &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Sync([]healthcheck.Instance{{ID: "job-1", Checks: []fsm.Check{
		{ID: "hang", Type: "exec", Exec: []string{hang, dir}, Interval: 60 * 1000 * ms, Timeout: 60 * 1000 * ms},
	}}}); err != nil {
		t.Fatal(err)
	}
	child := readPid(t, dir+"/child")
	start := time.Now()
	r.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v with a hung exec check", d)
	}
	waitFor(t, 5*time.Second, "child killed by Close", func() bool { return processGone(child) })
}

func TestRunner_Exec_disabled(t *testing.T) {
	cfg := testConfig(t)
	cfg.ExecEnabled = false
	r := newRunner(t, cfg, &recorder{})
	err := r.Sync([]healthcheck.Instance{{ID: "job-1", Checks: []fsm.Check{
		{ID: "e", Type: "exec", Exec: []string{"/bin/true"}},
	}}})
	if !errors.Is(err, healthcheck.ErrInvalidCheck) || !strings.Contains(err.Error(), "disabled") {
		t.Fatalf("Sync = %v, want ErrInvalidCheck: disabled", err)
	}
	if _, ok := r.Statuses()["e"]; ok {
		t.Error("disabled exec check runs")
	}
}

func TestRunner_TTL(t *testing.T) {
	n := &recorder{}
	r := newRunner(t, testConfig(t), n)
	ttl := func(id string, d time.Duration) fsm.Check {
		// Thresholds do not apply to TTL checks.
		return fsm.Check{ID: id, Type: "ttl", TTL: int64(d), FailuresBeforeCritical: 3, SuccessBeforePassing: 3}
	}
	if err := r.Sync([]healthcheck.Instance{{ID: "app-1", Checks: []fsm.Check{
		ttl("expires", 100*time.Millisecond),
		ttl("alive", 150*time.Millisecond),
		ttl("other", time.Minute),
	}}, {ID: "web-1", Checks: []fsm.Check{httpCheck("web", "http://127.0.0.1:1/")}}}); err != nil {
		t.Fatal(err)
	}

	t.Run("starts critical", func(t *testing.T) {
		for _, id := range []string{"expires", "alive", "other"} {
			if st := r.Statuses()[id]; st.Status != fsm.StatusCritical {
				t.Errorf("%s: %+v, want critical", id, st)
			}
		}
	})

	t.Run("errors", func(t *testing.T) {
		if err := r.TTLUpdate("nope", fsm.StatusPassing, ""); !errors.Is(err, healthcheck.ErrUnknownCheck) || !errors.Is(err, fsm.ErrUnknownCheck) {
			t.Errorf("unknown check: %v", err)
		}
		if err := r.TTLUpdate("web", fsm.StatusPassing, ""); !errors.Is(err, healthcheck.ErrNotTTL) || !errors.Is(err, fsm.ErrInvalid) {
			t.Errorf("http check: %v", err)
		}
		if err := r.TTLUpdate("other", "fine", ""); !errors.Is(err, fsm.ErrInvalid) {
			t.Errorf("bad status: %v", err)
		}
	})

	t.Run("left to expire", func(t *testing.T) {
		if err := r.TTLUpdate("expires", fsm.StatusPassing, "ok"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		waitFor(t, 5*time.Second, "expiry reported", func() bool { return len(n.statuses("expires")) == 2 })
		if d := time.Since(start); d < 90*time.Millisecond {
			t.Errorf("expired after %v, want 100ms", d)
		}
		if got := n.statuses("expires"); !slices.Equal(got, []string{fsm.StatusPassing, fsm.StatusCritical}) {
			t.Errorf("notified %v", got)
		}
		if c, _ := n.last("expires"); c.Output != "TTL expired (last output before timeout follows): ok" {
			t.Errorf("expiry output %q", c.Output)
		}
	})

	t.Run("kept alive", func(t *testing.T) {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < 40; i++ { // 800ms, five TTLs
			if err := r.TTLUpdate("alive", fsm.StatusPassing, fmt.Sprint("beat ", i)); err != nil {
				t.Fatal(err)
			}
			<-tick.C
		}
		if got := n.statuses("alive"); !slices.Equal(got, []string{fsm.StatusPassing}) {
			t.Errorf("notified %v, want one passing", got)
		}
		if st := r.Statuses()["alive"]; st.Output != "beat 39" {
			t.Errorf("output %q, want the latest note", st.Output)
		}
	})

	t.Run("each update sets its status", func(t *testing.T) {
		for _, s := range []string{fsm.StatusWarning, fsm.StatusWarning, fsm.StatusCritical, fsm.StatusPassing} {
			if err := r.TTLUpdate("other", s, "note"); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 5*time.Second, "update "+s+" reported", func() bool {
				c, ok := n.last("other")
				return ok && c.Status == s
			})
		}
		// warning twice is one change; critical after it is reported
		// although the check started critical.
		want := []string{fsm.StatusWarning, fsm.StatusCritical, fsm.StatusPassing}
		if got := n.statuses("other"); !slices.Equal(got, want) {
			t.Errorf("notified %v, want %v", got, want)
		}
	})
}

// TestRunner_flapping drives a target through a sequence of answers and
// checks that the notifier sees exactly the changes the thresholds allow.
func TestRunner_flapping(t *testing.T) {
	type step struct {
		code int
		want string // status after this answer
	}
	const P, W, C = fsm.StatusPassing, fsm.StatusWarning, fsm.StatusCritical
	steps := []step{
		{200, C}, // 1 success of 2: still critical, as new checks start
		{500, C},
		{200, C},
		{200, P}, // 2 in a row
		{500, P},
		{500, P}, // 2 failures of 3
		{200, P},
		{500, P},
		{500, P},
		{500, C}, // 3 in a row
		{200, C},
		{429, C}, // a warning is a failure: counts towards 3
		{200, C},
		{200, P},
		{429, P},
		{429, P},
		{429, W}, // 3 failures in a row, the latest a warning
		{500, C}, // already failing: follows the latest result
		{429, W},
		{200, W},
		{200, P},
	}
	var codes []int
	var want []string
	prev := C
	for _, s := range steps {
		codes = append(codes, s.code)
		if s.want != prev {
			want = append(want, s.want)
			prev = s.want
		}
	}
	tg := newTarget(t, "", codes...)
	n := &recorder{}
	r := newRunner(t, testConfig(t), n)
	c := httpCheck("flap", tg.URL)
	c.Interval = 5 * ms
	c.SuccessBeforePassing = 2
	c.FailuresBeforeCritical = 3
	if err := r.Sync([]healthcheck.Instance{{ID: "web-1", Checks: []fsm.Check{c}}}); err != nil {
		t.Fatal(err)
	}
	// Runs are sequential: once the target has answered past the
	// sequence, every answer of the sequence has been applied.
	waitFor(t, 10*time.Second, "the sequence answered", func() bool { return tg.requests() > len(codes)+2 })
	if got := n.statuses("flap"); !slices.Equal(got, want) {
		t.Errorf("notified\n %v\nwant\n %v", got, want)
	}
}

func TestRunner_notifiesOnlyChanges(t *testing.T) {
	var n200 atomic.Int64
	// The body changes with every answer: output alone is not reported.
	tg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, "request ", n200.Add(1))
	}))
	t.Cleanup(tg.Close)
	n := &recorder{}
	r := newRunner(t, testConfig(t), n)
	fresh := httpCheck("fresh", tg.URL)
	known := httpCheck("known", tg.URL)
	known.Status = fsm.StatusPassing // what the registry holds after an agent restart
	if err := r.Sync([]healthcheck.Instance{{ID: "web-1", Checks: []fsm.Check{fresh, known}}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "20 runs", func() bool { return n200.Load() >= 20 })
	if got := n.statuses("fresh"); !slices.Equal(got, []string{fsm.StatusPassing}) {
		t.Errorf("fresh: notified %v, want one passing", got)
	}
	if got := n.statuses("known"); got != nil {
		t.Errorf("known: notified %v, want nothing", got)
	}
}

func TestRunner_notifyRetried(t *testing.T) {
	tg := newTarget(t, "", 200)
	n := &recorder{fail: func(_ call, attempt int) error {
		if attempt <= 2 {
			return errors.New("no leader")
		}
		return nil
	}}
	r := newRunner(t, testConfig(t), n)
	if err := r.Sync([]healthcheck.Instance{{ID: "web-1", Checks: []fsm.Check{httpCheck("c", tg.URL)}}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "third attempt", func() bool { return len(n.statuses("c")) >= 3 })
	from := tg.requests()
	waitFor(t, 5*time.Second, "5 more runs", func() bool { return tg.requests() >= from+5 })
	if got := n.statuses("c"); !slices.Equal(got, []string{fsm.StatusPassing, fsm.StatusPassing, fsm.StatusPassing}) {
		t.Errorf("notified %v, want passing tried three times, then nothing", got)
	}
}

func TestRunner_Sync(t *testing.T) {
	a := newTarget(t, "", 200)
	b := newTarget(t, "", 200)
	clock := newTarget(t, "", 200) // a check whose runs show time passing
	var starts atomic.Int64
	cfg := testConfig(t)
	cfg.InitialDelay = func(time.Duration) time.Duration {
		starts.Add(1)
		return 0
	}
	n := &recorder{}
	r := newRunner(t, cfg, n)
	clockCheck := httpCheck("clock", clock.URL)
	sync := func(checks ...fsm.Check) {
		t.Helper()
		if err := r.Sync([]healthcheck.Instance{
			{ID: "clock-1", Checks: []fsm.Check{clockCheck}},
			{ID: "web-1", Checks: checks},
		}); err != nil {
			t.Fatal(err)
		}
	}
	// idle waits for 5 runs of the clock check and reports how many
	// requests tg got meanwhile.
	idle := func(tg *target) int {
		t.Helper()
		before, from := tg.requests(), clock.requests()
		waitFor(t, 5*time.Second, "5 clock runs", func() bool { return clock.requests() >= from+5 })
		return tg.requests() - before
	}

	c := httpCheck("c", a.URL)
	sync(c)
	waitFor(t, 5*time.Second, "check c on a", func() bool { return a.requests() >= 2 })
	waitFor(t, 5*time.Second, "passing reported", func() bool { return len(n.statuses("c")) == 1 })
	waitFor(t, 5*time.Second, "2 checks started", func() bool { return starts.Load() == 2 })

	t.Run("unchanged definition keeps running", func(t *testing.T) {
		same := c
		same.Status, same.Output, same.ModifyIndex, same.Name = fsm.StatusPassing, "old output", 42, "renamed"
		sync(same)
		idle(a)
		if s := starts.Load(); s != 2 {
			t.Errorf("%d checks started, want 2: an unchanged check restarted", s)
		}
		if got := n.statuses("c"); len(got) != 1 {
			t.Errorf("notified %v", got)
		}
	})

	t.Run("registry status differs: reported again", func(t *testing.T) {
		stale := c
		stale.Status = fsm.StatusCritical
		sync(stale)
		waitFor(t, 5*time.Second, "passing reported again", func() bool { return len(n.statuses("c")) == 2 })
		idle(a)
		if s := starts.Load(); s != 2 {
			t.Errorf("%d checks started, want 2", s)
		}
	})

	t.Run("changed definition restarts", func(t *testing.T) {
		moved := c
		moved.HTTP = b.URL
		moved.Status = fsm.StatusPassing
		sync(moved)
		waitFor(t, 5*time.Second, "3 checks started", func() bool { return starts.Load() == 3 })
		waitFor(t, 5*time.Second, "check c on b", func() bool { return b.requests() >= 2 })
		if got := idle(a); got != 0 {
			t.Errorf("a got %d requests after the check moved to b", got)
		}
		c = moved
	})

	t.Run("moved to another instance restarts", func(t *testing.T) {
		if err := r.Sync([]healthcheck.Instance{
			{ID: "clock-1", Checks: []fsm.Check{clockCheck}},
			{ID: "web-2", Checks: []fsm.Check{c}},
		}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "4 checks started", func() bool { return starts.Load() == 4 })
		if st := r.Statuses()["c"]; st.Instance != "web-2" {
			t.Errorf("state %+v, want instance web-2", st)
		}
	})

	t.Run("removed instance stops", func(t *testing.T) {
		sync()
		if _, ok := r.Statuses()["c"]; ok {
			t.Error("removed check still listed")
		}
		idle(b) // a run in flight at Sync may still land
		if got := idle(b); got != 0 {
			t.Errorf("b got %d requests after the check was removed", got)
		}
	})

	t.Run("invalid checks are refused, the rest run", func(t *testing.T) {
		err := r.Sync([]healthcheck.Instance{
			{ID: "clock-1", Checks: []fsm.Check{clockCheck}},
			{ID: "web-1", Checks: []fsm.Check{
				{ID: "bad-type", Type: "ping"},
				{ID: "bad-url", Type: "http", HTTP: "ftp://x"},
				{ID: "bad-tcp", Type: "tcp", TCP: "nohost"},
				{ID: "no-argv", Type: "exec"},
				{ID: "no-ttl", Type: "ttl"},
				{ID: "", Type: "ttl", TTL: int64(time.Second)},
				{ID: "clock", Type: "ttl", TTL: int64(time.Second)},
				c,
			}},
		})
		for _, id := range []string{"bad-type", "bad-url", "bad-tcp", "no-argv", "no-ttl", `""`, `"clock" of instance "web-1": id used twice`} {
			if err == nil || !strings.Contains(err.Error(), id) {
				t.Errorf("Sync error %v does not mention %s", err, id)
			}
		}
		if !errors.Is(err, healthcheck.ErrInvalidCheck) || !errors.Is(err, fsm.ErrInvalid) {
			t.Errorf("Sync error %v is not ErrInvalidCheck", err)
		}
		got := r.Statuses()
		if len(got) != 2 || got["c"].Type != "http" || got["clock"].Instance != "clock-1" {
			t.Errorf("running %v, want clock and c", got)
		}
	})
}

// slowNotifier takes a while to return even once its context is done, and
// records whether two calls for one check ever overlapped.
type slowNotifier struct {
	mu       sync.Mutex
	inFlight map[string]int
	overlap  bool
	calls    int
}

func (s *slowNotifier) UpdateCheck(ctx context.Context, checkID, _, _ string) error {
	s.mu.Lock()
	s.calls++
	s.inFlight[checkID]++
	if s.inFlight[checkID] > 1 {
		s.overlap = true
	}
	s.mu.Unlock()
	<-ctx.Done()
	time.Sleep(50 * time.Millisecond) // a write that was already under way
	s.mu.Lock()
	s.inFlight[checkID]--
	s.mu.Unlock()
	return ctx.Err()
}

// TestRunner_Sync_restartWaitsForPrevious checks that a restarted check
// does not report while the previous one of its id is still reporting.
func TestRunner_Sync_restartWaitsForPrevious(t *testing.T) {
	a := newTarget(t, "", 200)
	b := newTarget(t, "", 200)
	n := &slowNotifier{inFlight: map[string]int{}}
	r := newRunner(t, testConfig(t), n)
	count := func() int {
		n.mu.Lock()
		defer n.mu.Unlock()
		return n.calls
	}
	c := httpCheck("c", a.URL)
	for i := 1; i <= 3; i++ {
		if err := r.Sync([]healthcheck.Instance{{ID: "web-1", Checks: []fsm.Check{c}}}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, fmt.Sprint("report ", i), func() bool { return count() == i })
		if c.HTTP == a.URL {
			c.HTTP = b.URL
		} else {
			c.HTTP = a.URL
		}
	}
	r.Close()
	if n.overlap {
		t.Error("two reports of one check overlapped")
	}
}

// TestRunner_concurrentUse exercises every method at once, for the race
// detector.
func TestRunner_concurrentUse(t *testing.T) {
	tg := newTarget(t, "", 200, 500)
	r := newRunner(t, testConfig(t), &deregRecorder{})
	defs := [][]fsm.Check{
		{httpCheck("h", tg.URL), {ID: "t", Type: "ttl", TTL: int64(50 * time.Millisecond), DeregisterCriticalAfter: 10 * ms}},
		{{ID: "h", Type: "tcp", TCP: tg.Listener.Addr().String(), Interval: 5 * ms}, {ID: "t", Type: "ttl", TTL: int64(time.Second)}},
		nil,
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 3; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				switch g {
				case 0:
					r.Sync([]healthcheck.Instance{{ID: "web-1", Checks: defs[i%len(defs)]}})
				case 1:
					r.TTLUpdate("t", statusesCycle[i%3], "note")
				case 2:
					r.Statuses()
				}
				time.Sleep(time.Millisecond)
			}
		}()
	}
	time.Sleep(300 * time.Millisecond) // the length of the exercise
	close(stop)
	wg.Wait()
}

var statusesCycle = []string{fsm.StatusPassing, fsm.StatusWarning, fsm.StatusCritical}

func TestRunner_deregisterCritical(t *testing.T) {
	broken := newTarget(t, "", 500)
	ok := newTarget(t, "", 200)
	n := &deregRecorder{}
	r := newRunner(t, testConfig(t), n)
	dead := httpCheck("dead", broken.URL)
	dead.DeregisterCriticalAfter = 100 * ms
	alive := httpCheck("alive", ok.URL)
	alive.DeregisterCriticalAfter = 100 * ms
	// Fails twice in three: critical from time to time, never for 100ms
	// without a break.
	flappy := newTarget(t, "", 500, 200, 500, 500, 200, 500, 500, 200, 500, 500, 200, 500, 500, 200, 500, 500, 200, 500, 500, 200, 200)
	flap := httpCheck("flap", flappy.URL)
	flap.DeregisterCriticalAfter = 100 * ms
	flap.Interval = 15 * ms
	start := time.Now()
	if err := r.Sync([]healthcheck.Instance{
		{ID: "web-dead", Checks: []fsm.Check{dead}},
		{ID: "web-alive", Checks: []fsm.Check{alive}},
		{ID: "web-flap", Checks: []fsm.Check{flap}},
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "deregistration", func() bool { return len(n.deregistered()) > 0 })
	if d := time.Since(start); d < 90*time.Millisecond {
		t.Errorf("deregistered after %v, want 100ms", d)
	}
	waitFor(t, 5*time.Second, "flapping sequence answered", func() bool { return flappy.requests() > 22 })
	from := broken.requests()
	waitFor(t, 5*time.Second, "10 more runs", func() bool { return broken.requests() >= from+10 })
	if got := n.deregistered(); !slices.Equal(got, []string{"web-dead"}) {
		t.Errorf("deregistered %v, want web-dead once", got)
	}

	t.Run("without Deregisterer", func(t *testing.T) {
		r := newRunner(t, testConfig(t), &recorder{})
		if err := r.Sync([]healthcheck.Instance{{ID: "web-dead", Checks: []fsm.Check{dead}}}); err != nil {
			t.Fatal(err)
		}
		from := broken.requests()
		waitFor(t, 5*time.Second, "10 runs", func() bool { return broken.requests() >= from+10 })
	})
}

func TestRunner_metrics(t *testing.T) {
	ok := newTarget(t, "", 200)
	busy := newTarget(t, "", 429)
	reg := prometheus.NewRegistry()
	cfg := testConfig(t)
	cfg.Registerer = reg
	r := newRunner(t, cfg, &recorder{})
	if err := r.Sync([]healthcheck.Instance{{ID: "web-1", Checks: []fsm.Check{
		httpCheck("ok", ok.URL), httpCheck("ok2", ok.URL), httpCheck("busy", busy.URL),
		{ID: "tcp", Type: "tcp", TCP: "127.0.0.1:1", Interval: 20 * ms},
		{ID: "ttl", Type: "ttl", TTL: int64(time.Minute)},
	}}}); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, r, "ok", fsm.StatusPassing, "")
	waitStatus(t, r, "ok2", fsm.StatusPassing, "")
	waitStatus(t, r, "busy", fsm.StatusWarning, "")
	waitStatus(t, r, "tcp", fsm.StatusCritical, "TCP connect")

	gather := func() (map[string]float64, map[string]uint64) {
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		gauges, counts := map[string]float64{}, map[string]uint64{}
		for _, f := range families {
			for _, m := range f.GetMetric() {
				label := m.GetLabel()[0].GetValue()
				switch f.GetName() {
				case "sidecar_checks":
					gauges[label] = m.GetGauge().GetValue()
				case "sidecar_check_duration_seconds":
					counts[label] = m.GetHistogram().GetSampleCount()
				}
			}
		}
		problems, err := promlint.NewWithMetricFamilies(families).Lint()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("metric %s: %s", p.Metric, p.Text)
		}
		return gauges, counts
	}
	gauges, counts := gather()
	if want := map[string]float64{"passing": 2, "warning": 1, "critical": 2}; !mapsEqual(gauges, want) {
		t.Errorf("sidecar_checks = %v, want %v", gauges, want)
	}
	if counts["http"] < 3 || counts["tcp"] < 1 || counts["ttl"] != 0 || counts["exec"] != 0 {
		t.Errorf("sidecar_check_duration_seconds counts = %v", counts)
	}
	if err := r.Sync(nil); err != nil {
		t.Fatal(err)
	}
	gauges, _ = gather()
	if want := map[string]float64{"passing": 0, "warning": 0, "critical": 0}; !mapsEqual(gauges, want) {
		t.Errorf("after removing all: sidecar_checks = %v, want %v", gauges, want)
	}

	if _, err := healthcheck.New(cfg, &recorder{}); err == nil {
		t.Error("a second Runner on the same registerer was accepted")
	}
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestRunner_Close(t *testing.T) {
	hang, hangRequests := hangingTarget(t)
	r, err := healthcheck.New(testConfig(t), &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	c := httpCheck("hang", hang.URL)
	c.Timeout = int64(time.Minute)
	if err := r.Sync([]healthcheck.Instance{{ID: "web-1", Checks: []fsm.Check{
		c, {ID: "ttl", Type: "ttl", TTL: int64(time.Minute)},
	}}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "request in flight", func() bool { return hangRequests() >= 1 })
	start := time.Now()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v with a request in flight", d)
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := r.Sync(nil); !errors.Is(err, healthcheck.ErrClosed) {
		t.Errorf("Sync after Close = %v", err)
	}
	if err := r.TTLUpdate("ttl", fsm.StatusPassing, ""); !errors.Is(err, healthcheck.ErrClosed) {
		t.Errorf("TTLUpdate after Close = %v", err)
	}
	if got := r.Statuses(); len(got) != 0 {
		t.Errorf("Statuses after Close = %v", got)
	}
}

func TestNew_config(t *testing.T) {
	for name, mod := range map[string]func(*healthcheck.Config){
		"zero interval":     func(c *healthcheck.Config) { c.Interval = 0 },
		"zero timeout":      func(c *healthcheck.Config) { c.Timeout = 0 },
		"zero min interval": func(c *healthcheck.Config) { c.MinInterval = 0 },
		"min > interval":    func(c *healthcheck.Config) { c.MinInterval = c.Interval + 1 },
		"no output":         func(c *healthcheck.Config) { c.OutputLimit = 0 },
		"output > registry": func(c *healthcheck.Config) { c.OutputLimit = fsm.MaxOutputLen + 1 },
	} {
		cfg := healthcheck.DefaultConfig()
		mod(&cfg)
		if _, err := healthcheck.New(cfg, &recorder{}); !errors.Is(err, healthcheck.ErrConfig) {
			t.Errorf("%s: New = %v, want ErrConfig", name, err)
		}
	}
	if _, err := healthcheck.New(healthcheck.DefaultConfig(), nil); !errors.Is(err, healthcheck.ErrConfig) {
		t.Errorf("nil notifier: New = %v, want ErrConfig", err)
	}
	r, err := healthcheck.New(healthcheck.DefaultConfig(), &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
}

// TestRunner_defaults checks the effective interval and timeout of a check
// defined without them, through the initial delay the Runner asks for and
// the timeout it reports.
func TestRunner_defaults(t *testing.T) {
	hang, _ := hangingTarget(t)
	var asked atomic.Int64
	cfg := testConfig(t)
	cfg.Interval = 200 * time.Millisecond
	cfg.Timeout = time.Hour // capped at the interval
	cfg.MinInterval = 100 * time.Millisecond
	cfg.InitialDelay = func(iv time.Duration) time.Duration {
		asked.Store(int64(iv))
		return -time.Hour // clamped to 0
	}
	r := newRunner(t, cfg, &recorder{})
	if err := r.Sync([]healthcheck.Instance{{ID: "web-1", Checks: []fsm.Check{
		{ID: "c", Type: "http", HTTP: hang.URL},
	}}}); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, r, "c", fsm.StatusCritical, "timed out after 200ms")
	if got := time.Duration(asked.Load()); got != 200*time.Millisecond {
		t.Errorf("interval %v, want the default 200ms", got)
	}
	if err := r.Sync([]healthcheck.Instance{{ID: "web-1", Checks: []fsm.Check{
		{ID: "c", Type: "http", HTTP: hang.URL, Interval: ms},
	}}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "restart", func() bool { return asked.Load() == int64(100*time.Millisecond) })
}

// SyncInstance changes one instance's checks and leaves every other
// instance's alone; RemoveInstance stops one instance's checks;
// RegistryStatus makes a check report again what the registry lost.
func TestRunner_SyncInstance(t *testing.T) {
	a := newTarget(t, "", 200)
	b := newTarget(t, "", 200)
	var starts atomic.Int64
	cfg := testConfig(t)
	cfg.InitialDelay = func(time.Duration) time.Duration { starts.Add(1); return 0 }
	n := &recorder{}
	r := newRunner(t, cfg, n)
	other := httpCheck("other", b.URL)
	if err := r.SyncInstance(healthcheck.Instance{ID: "api-1", Checks: []fsm.Check{other}}); err != nil {
		t.Fatal(err)
	}
	c := httpCheck("c", a.URL)
	if err := r.SyncInstance(healthcheck.Instance{ID: "web-1", Checks: []fsm.Check{c}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "both checks passing", func() bool {
		return len(n.statuses("c")) == 1 && len(n.statuses("other")) == 1
	})

	// The same definition again: nothing restarts.
	if err := r.SyncInstance(healthcheck.Instance{ID: "web-1", Checks: []fsm.Check{c}}); err != nil {
		t.Fatal(err)
	}
	// A check id another instance runs is refused; the instance's other
	// checks still run.
	ttl := fsm.Check{ID: "t", Type: "ttl", TTL: int64(time.Minute)}
	err := r.SyncInstance(healthcheck.Instance{ID: "web-1", Checks: []fsm.Check{c, ttl, httpCheck("other", a.URL)}})
	if !errors.Is(err, healthcheck.ErrInvalidCheck) || !strings.Contains(err.Error(), `used by instance "api-1"`) {
		t.Fatalf("a check id of another instance: %v", err)
	}
	if st := r.Statuses(); len(st) != 3 || st["other"].Instance != "api-1" || st["t"].Instance != "web-1" {
		t.Fatalf("running %v", st)
	}
	if s := starts.Load(); s != 2 { // TTL checks do not run, so they take no initial delay
		t.Fatalf("%d checks started, want 2 (an unchanged check restarted)", s)
	}

	// The registry lost the status (a restore): reported again.
	r.RegistryStatus("c", fsm.StatusCritical)
	waitFor(t, 5*time.Second, "passing reported again", func() bool { return len(n.statuses("c")) == 2 })

	// Dropping a check from the instance stops only it.
	if err := r.SyncInstance(healthcheck.Instance{ID: "web-1", Checks: []fsm.Check{ttl}}); err != nil {
		t.Fatal(err)
	}
	if st := r.Statuses(); len(st) != 2 || st["c"].Type != "" {
		t.Fatalf("running after dropping c: %v", st)
	}
	r.RemoveInstance("web-1")
	if st := r.Statuses(); len(st) != 1 || st["other"].Instance != "api-1" {
		t.Fatalf("running after removing web-1: %v", st)
	}
	before, fromB := a.requests(), b.requests()
	waitFor(t, 5*time.Second, "other keeps running", func() bool { return b.requests() >= fromB+3 })
	if got := a.requests() - before; got > 1 { // one run may have been in flight
		t.Fatalf("a got %d requests after web-1's checks stopped", got)
	}
}
