package test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/api"
)

// The crash-point durability test: sidecar processes die by SIGKILL at the
// named points of the write path (internal/crashpoint, SIDECAR_CRASHPOINT),
// crashesPerPoint times per point with the n-th hit drawn from a seeded
// random range, while writers register instances through them; each
// crashed process is started again on the same data dir without the crash
// point, and every registration that was answered 200 must be there.
//
//   - raft-log-appended: a one-server cluster (its own quorum) dies with a
//     batch of entries appended and not yet applied (a leader's sync of
//     them may still be under way: raftlog defers it);
//   - snapshot-write: the same, with a snapshot every 16 entries, dies half
//     way through writing one;
//   - localstate-written: a client agent of a 3-server cluster dies with a
//     registration in its local state and not yet in Raft;
//   - snapshot-install: a follower of that cluster, started on an empty data
//     dir, dies half way through installing the snapshot its leader sent.
//
// It runs only with SIDECAR_CRASHPOINTS=1 (make crashpoints; 30-60 s on 2
// busy cores). SIDECAR_CRASHPOINTS_SEED=N repeats a run's draws;
// SIDECAR_CRASHPOINTS_POINTS=a,b runs only those points;
// SIDECAR_CRASHPOINTS_BUG=ackbeforecommit asks the opposite: the binary
// carries the bug switch chaosbug_ackbeforecommit (agent/bugs_off.go) and
// the test passes only if it finds acknowledged registrations lost (make
// crashpoints-bug); each point then stops at its first crash that lost one.
func TestCrashPoints(t *testing.T) {
	if os.Getenv("SIDECAR_CRASHPOINTS") == "" {
		t.Skip("SIDECAR_CRASHPOINTS=1 runs it (make crashpoints)")
	}
	seed := time.Now().UnixNano()
	if s := os.Getenv("SIDECAR_CRASHPOINTS_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseInt(s, 10, 64); err != nil {
			t.Fatalf("SIDECAR_CRASHPOINTS_SEED: %v", err)
		}
	}
	bug := os.Getenv("SIDECAR_CRASHPOINTS_BUG")
	want := func(point string) bool {
		only := os.Getenv("SIDECAR_CRASHPOINTS_POINTS")
		return only == "" || slices.Contains(strings.Split(only, ","), point)
	}
	t.Logf("seed %d (SIDECAR_CRASHPOINTS_SEED=%d repeats the draws)", seed, seed)
	rng := rand.New(rand.NewSource(seed))

	var results []*crashResult
	run := func(point string, f func(t *testing.T, r *crashResult)) {
		if !want(point) {
			return
		}
		r := &crashResult{point: point, bug: bug != ""}
		results = append(results, r)
		started := time.Now()
		t.Run(point, func(t *testing.T) { f(t, r) })
		r.took = time.Since(started)
	}
	// Each point draws from its own generator, so that leaving one out
	// does not change the others' draws.
	draw := func() *rand.Rand { return rand.New(rand.NewSource(rng.Int63())) }
	rl, sw, lw, si := draw(), draw(), draw(), draw()
	run("raft-log-appended", func(t *testing.T, r *crashResult) {
		// A fresh server makes 6 or 7 appends of its own before it is
		// ready: from 10 on, the crash lands among the writes.
		crashOneServer(t, rl, r, 10, 60)
	})
	run("snapshot-write", func(t *testing.T, r *crashResult) {
		// A snapshot of more than 4 KiB reaches the point twice: once its
		// first 4 KiB are written, and once the rest is, before the sink is
		// closed; n up to 6 lands in the first three snapshots.
		crashOneServer(t, sw, r, 1, 6, "--snapshot-threshold", "16", "--snapshot-interval", "100ms")
	})
	if want("localstate-written") || want("snapshot-install") {
		started := time.Now()
		cl := newCrashCluster(t)
		t.Logf("3 servers and a client ready in %v", time.Since(started).Round(100*time.Millisecond))
		run("localstate-written", func(t *testing.T, r *crashResult) {
			crashClient(t, cl, lw, r, 8, 60)
		})
		run("snapshot-install", func(t *testing.T, r *crashResult) {
			// The restore reads the snapshot (200 or more instances) with
			// io.ReadAll, in more than 8 pieces.
			crashInstall(t, cl, si, r, 1, 8)
		})
	}

	lost := 0
	for _, r := range results {
		t.Log(r)
		lost += r.lost
	}
	switch {
	case bug == "":
	case t.Failed():
		t.Logf("bug switch %s: the run failed before it could tell", bug)
	case lost == 0:
		t.Errorf("bug switch %s not detected: no acknowledged registration lost", bug)
	default:
		t.Logf("bug switch %s detected: %d acknowledged registrations lost", bug, lost)
	}
}

// crashesPerPoint is how many times each point kills a process.
const crashesPerPoint = 5

type crashResult struct {
	point                string
	crashes, acked, lost int
	earlyCrashes         int // before the process was ready: no write at stake
	took                 time.Duration
	bug                  bool
	firstLost, lostWhere string
	crashAt              []int
}

// done reports whether the point crashed its processes enough: with a bug
// switch, the first loss is enough.
func (r *crashResult) done() bool {
	return r.crashes >= crashesPerPoint || r.bug && r.lost > 0
}

func (r *crashResult) String() string {
	s := fmt.Sprintf("CRASHPOINT %-18s crashes %d (n=%v, %d before ready), acknowledged writes %d, lost %d, %v",
		r.point, r.crashes, r.crashAt, r.earlyCrashes, r.acked, r.lost, r.took.Round(100*time.Millisecond))
	if r.lost > 0 {
		s += fmt.Sprintf(" (e.g. %s, missing on %s)", r.firstLost, r.lostWhere)
	}
	return s
}

// crashNode is one agent process, started again on the same data dir and
// addresses after each death.
type crashNode struct {
	name string
	url  string
	args []string
	p    *proc
	// point is what the running process is armed with, for the log.
	point string
}

func newCrashNode(t *testing.T, name string, server bool, dataDir, join string, extra ...string) *crashNode {
	httpAddr := freeAddr(t)
	n := &crashNode{name: name, url: "http://" + httpAddr}
	n.args = []string{"agent", "--name", name, "--data-dir", dataDir, "--http-addr", httpAddr,
		"--dns-addr", freeAddr(t), "--bind-addr", freeAddr(t), "--advertise-addr", "127.0.0.1", "--log-level", "warn"}
	if server {
		n.args = append(n.args, "--server", "--raft-addr", freeAddr(t))
	}
	if join != "" {
		n.args = append(n.args, "--join", join)
	}
	n.args = append(n.args, extra...)
	// The node outlives the subtest that started it last: it is killed at
	// the end of the test that made it.
	t.Cleanup(func() {
		if n.p == nil {
			return
		}
		n.p.kill9()
		if t.Failed() {
			t.Logf("output of %s (SIDECAR_CRASHPOINT %q):\n%s", n.name, n.point, lastLines(n.p.output.String(), 30))
		}
	})
	return n
}

func (n *crashNode) gossip() string {
	return n.args[slices.Index(n.args, "--bind-addr")+1]
}

// setDataDir points the next start at another data dir.
func (n *crashNode) setDataDir(dir string) {
	n.args[slices.Index(n.args, "--data-dir")+1] = dir
}

// start runs the agent, armed with SIDECAR_CRASHPOINT=point:hit unless
// point is "".
func (n *crashNode) start(t *testing.T, point string, hit int) {
	t.Helper()
	cmd := exec.Command(binary, n.args...)
	cmd.Env = os.Environ()
	if point != "" {
		cmd.Env = append(cmd.Env, fmt.Sprintf("SIDECAR_CRASHPOINT=%s:%d", point, hit))
	}
	p := &proc{cmd: cmd, output: &bytes.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.output, p.output
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	n.p, n.point = p, point
}

func (n *crashNode) dead() bool {
	select {
	case <-n.p.done:
		return true
	default:
		return false
	}
}

// waitReady waits until /readyz answers 200; false when the process died
// first.
func (n *crashNode) waitReady(t *testing.T, timeout time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if n.dead() {
			return false
		}
		if code, _ := crashCall("GET", n.url+"/readyz", ""); code == 200 {
			return true
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready within %v:\n%s", n.name, timeout, lastLines(n.p.output.String(), 30))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends a process gracefully (SIGTERM), or kills it after 10 s.
func (n *crashNode) stop() {
	n.p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.p.done:
	case <-time.After(10 * time.Second):
		n.p.kill9()
	}
}

// waitCrash waits for the armed process to die and fails the test unless
// it died of SIGKILL: a point never reached must not pass.
func (n *crashNode) waitCrash(t *testing.T, point string, hit int, timeout time.Duration) {
	t.Helper()
	select {
	case <-n.p.done:
	case <-time.After(timeout):
		t.Fatalf("%s did not reach crash point %s:%d within %v", n.name, point, hit, timeout)
	}
	ws, ok := n.p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("%s armed with %s:%d ended with %v, not by SIGKILL at the point:\n%s",
			n.name, point, hit, n.p.cmd.ProcessState, lastLines(n.p.output.String(), 30))
	}
}

func crashCall(method, url, body string) (int, []byte) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return 0, nil
	}
	resp, err := crashHTTP.Do(req)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// crashHTTP bounds every request (an agent that hangs is not an answer)
// and keeps the writers' connections open: a crashed agent is started
// again on the same ports, which connections made and dropped at every
// write could take meanwhile as their local ports.
var crashHTTP = &http.Client{
	Timeout:   10 * time.Second,
	Transport: &http.Transport{MaxIdleConnsPerHost: 16},
}

// registrations register unique instances of one service from a few
// goroutines and remember every one answered 200.
type registrations struct {
	service string
	seq     atomic.Int64
	mu      sync.Mutex
	acked   []string
	stop    chan struct{}
	wg      sync.WaitGroup
}

func newRegistrations(service string) *registrations {
	return &registrations{service: service}
}

// run starts one writer per URL; urls may repeat.
func (w *registrations) run(urls ...string) {
	w.stop = make(chan struct{})
	for _, url := range urls {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for {
				select {
				case <-w.stop:
					return
				default:
				}
				n := w.seq.Add(1)
				id := fmt.Sprintf("%s-%d", w.service, n)
				body := fmt.Sprintf(`{"id":%q,"name":%q,"address":"10.0.0.1","port":%d}`, id, w.service, 1+n%60000)
				if code, _ := crashCall("PUT", url+"/v1/services", body); code == 200 {
					w.mu.Lock()
					w.acked = append(w.acked, id)
					w.mu.Unlock()
				} else {
					time.Sleep(20 * time.Millisecond) // refused or dead: do not spin
				}
			}
		}()
	}
}

// halt stops the writers and waits for the writes in flight.
func (w *registrations) halt() {
	close(w.stop)
	w.wg.Wait()
}

func (w *registrations) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

func (w *registrations) snapshot() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.acked)
}

// waitAcked waits until n more registrations were acknowledged, or the
// process they go through died.
func (w *registrations) waitAcked(n int, died <-chan struct{}, timeout time.Duration) {
	target := w.count() + n
	deadline := time.After(timeout)
	for w.count() < target {
		select {
		case <-died:
			return
		case <-deadline:
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// missing reads the service (GET url) until every acknowledged id is
// there or the deadline passed; it returns the ids still missing.
func missing(t *testing.T, url string, acked []string, deadline time.Time) []string {
	t.Helper()
	for {
		var gone []string
		code, body := crashCall("GET", url, "")
		var list []api.Instance
		if code == 200 && json.Unmarshal(body, &list) == nil {
			have := make(map[string]bool, len(list))
			for _, in := range list {
				have[in.ID] = true
			}
			for _, id := range acked {
				if !have[id] {
					gone = append(gone, id)
				}
			}
			if len(gone) == 0 {
				return nil
			}
		} else {
			gone = acked // no answer: nothing is shown to be there
		}
		if time.Now().After(deadline) {
			t.Logf("GET %s: %d, %d of %d acknowledged missing", url, code, len(gone), len(acked))
			return gone
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// reader names where a check reads the service: a node's own copy, or a
// consistent read through the leader.
type reader struct {
	name, url  string
	consistent bool
}

// check counts what the readers lack of the acknowledged registrations.
// Without a bug switch a loss fails the test.
func (r *crashResult) check(t *testing.T, service string, acked []string, readers ...reader) {
	t.Helper()
	lost := map[string]bool{}
	// SPEC: an agent puts the registry right within 5 s of its restart.
	deadline := time.Now().Add(5 * time.Second)
	// Every reader in turn until it has them all (or the deadline), then
	// each once more: a later read must not lose what an earlier one saw
	// (a restarted agent's copy may lag its own deregistration).
	for _, rd := range append(slices.Clone(readers), readers...) {
		url, name := rd.url+"/v1/services/"+service, rd.name
		if rd.consistent {
			url, name = url+"?consistent", name+" (consistent read)"
		}
		for _, id := range missing(t, url, acked, deadline) {
			if !lost[id] {
				lost[id] = true
				if r.firstLost == "" {
					r.firstLost, r.lostWhere = id, name
				}
			}
		}
	}
	// Counted once per id over the whole point: an id lost at one crash
	// stays lost at the next check.
	before := r.lost
	r.lost = max(r.lost, len(lost))
	r.acked = len(acked)
	t.Logf("crash %d at %s:%d: %d acknowledged so far, %d missing", r.crashes, r.point, r.crashAt[len(r.crashAt)-1], len(acked), len(lost))
	if r.lost > before && !r.bug {
		t.Errorf("crash %d at %s: %d acknowledged registrations lost (of %d), e.g. %s missing on %s",
			r.crashes, r.point, len(lost), len(acked), r.firstLost, r.lostWhere)
	}
}

// crashOneServer crashes a one-server cluster at r.point crashesPerPoint
// times, the n-th hit drawn from [lo, hi], with 4 writers through it.
func crashOneServer(t *testing.T, rng *rand.Rand, r *crashResult, lo, hi int, extra ...string) {
	s := newCrashNode(t, "s1", true, t.TempDir(), "", append([]string{"--bootstrap-expect", "1"}, extra...)...)
	w := newRegistrations(strings.ReplaceAll(r.point, "-", ""))
	for !r.done() {
		hit := lo + rng.Intn(hi-lo+1)
		r.crashAt = append(r.crashAt, hit)
		s.start(t, r.point, hit)
		if s.waitReady(t, 30*time.Second) {
			w.run(s.url, s.url, s.url, s.url)
			s.waitCrash(t, r.point, hit, 30*time.Second)
			w.halt()
		} else {
			s.waitCrash(t, r.point, hit, 30*time.Second) // dead already
			r.earlyCrashes++
		}
		r.crashes++
		s.start(t, "", 0)
		if !s.waitReady(t, 30*time.Second) {
			t.Fatalf("s1 died when started again after crash %d:\n%s", r.crashes, lastLines(s.p.output.String(), 30))
		}
		r.check(t, w.service, w.snapshot(), reader{name: "s1 (restarted)", url: s.url})
		s.stop()
	}
}

// crashCluster is 3 servers and a client, on loopback.
type crashCluster struct {
	servers []*crashNode
	client  *crashNode
}

func newCrashCluster(t *testing.T) *crashCluster {
	c := &crashCluster{}
	var seed string
	for i := 1; i <= 3; i++ {
		s := newCrashNode(t, fmt.Sprintf("s%d", i), true, t.TempDir(), seed, "--bootstrap-expect", "3")
		if seed == "" {
			seed = s.gossip()
		}
		s.start(t, "", 0)
		c.servers = append(c.servers, s)
	}
	c.client = newCrashNode(t, "c1", false, t.TempDir(), seed, "--session-ttl", "2s")
	c.client.start(t, "", 0)
	for _, n := range append(slices.Clone(c.servers), c.client) {
		if !n.waitReady(t, 60*time.Second) {
			t.Fatalf("%s died while the cluster formed:\n%s", n.name, n.p.output)
		}
	}
	return c
}

// leader is the server every live server names as the Raft leader.
func (c *crashCluster) leader(t *testing.T) *crashNode {
	t.Helper()
	var found *crashNode
	waitUntil(t, 20*time.Second, "a leader", func() bool {
		found = nil
		for _, s := range c.servers {
			if s.dead() {
				continue
			}
			var st api.Status
			if code, body := crashCall("GET", s.url+"/v1/status", ""); code != 200 || json.Unmarshal(body, &st) != nil {
				return false
			} else if st.Leader == s.name {
				found = s
			}
		}
		return found != nil
	})
	return found
}

// crashClient crashes the client agent at localstate-written, with 4
// writers through it, and reads back from it and from a server.
func crashClient(t *testing.T, c *crashCluster, rng *rand.Rand, r *crashResult, lo, hi int) {
	cl := c.client
	cl.stop() // started unarmed with the cluster
	w := newRegistrations("localstate")
	for !r.done() {
		hit := lo + rng.Intn(hi-lo+1)
		r.crashAt = append(r.crashAt, hit)
		cl.start(t, r.point, hit)
		if cl.waitReady(t, 30*time.Second) {
			w.run(cl.url, cl.url, cl.url, cl.url)
			cl.waitCrash(t, r.point, hit, 30*time.Second)
			w.halt()
		} else {
			cl.waitCrash(t, r.point, hit, 30*time.Second) // dead already
			r.earlyCrashes++
		}
		r.crashes++
		cl.start(t, "", 0)
		if !cl.waitReady(t, 30*time.Second) {
			t.Fatalf("c1 died when started again after crash %d", r.crashes)
		}
		r.check(t, w.service, w.snapshot(), reader{name: "c1 (restarted)", url: cl.url},
			reader{name: c.servers[1].name, url: c.servers[1].url, consistent: true})
		if !r.done() {
			cl.stop()
		}
	}
}

// restoreOwnSnapshot saves the registry (GET /v1/snapshot) and restores
// it (PUT): the registry is unchanged, and every server's log has a gap
// that a server lacking entries from before the restore can only cross by
// installing a snapshot its leader sends. The snapshot is saved from the
// leader's own copy once that holds every acknowledged registration (a
// leader that just lost its place may lag).
func (c *crashCluster) restoreOwnSnapshot(t *testing.T, acked []string) {
	t.Helper()
	var snap []byte
	waitUntil(t, 20*time.Second, "a snapshot holding every acknowledged registration", func() bool {
		code, b := crashCall("GET", c.leader(t).url+"/v1/snapshot", "")
		if code != 200 {
			return false
		}
		for _, id := range acked {
			if !bytes.Contains(b, []byte(strconv.Quote(id))) {
				return false
			}
		}
		snap = b
		return true
	})
	if code, body := crashCall("PUT", c.leader(t).url+"/v1/snapshot", string(snap)); code != 200 {
		t.Fatalf("restore snapshot: %d %s", code, body)
	}
}

// crashInstall crashes a follower half way through installing a snapshot
// its leader sent. The follower starts on an empty data dir, so that the
// only snapshot it restores is one it received (a restart restores the
// server's own latest snapshot, which reaches the same point). The leader
// sends a snapshot to a follower that lacks entries its log no longer
// holds: a restore of the registry's own snapshot (PUT /v1/snapshot) leaves
// such a gap in every server's log at once, far cheaper than the 10,240
// entries a leader keeps behind each snapshot of its own.
func crashInstall(t *testing.T, c *crashCluster, rng *rand.Rand, r *crashResult, lo, hi int) {
	w := newRegistrations("install")
	cl := c.client.url
	leader := c.leader(t)
	followers := slices.DeleteFunc(slices.Clone(c.servers), func(s *crashNode) bool { return s == leader })
	w.run(cl, cl, cl, cl)
	w.waitAcked(200, nil, 30*time.Second)
	w.halt()
	c.restoreOwnSnapshot(t, w.snapshot())
	for !r.done() {
		f := followers[r.crashes%2]
		other := followers[(r.crashes+1)%2]
		f.p.kill9()
		f.setDataDir(t.TempDir())
		w.run(cl, cl, cl, cl)
		hit := lo + rng.Intn(hi-lo+1)
		r.crashAt = append(r.crashAt, hit)
		f.start(t, r.point, hit)
		f.waitCrash(t, r.point, hit, 30*time.Second)
		r.crashes++
		f.start(t, "", 0)
		if !f.waitReady(t, 30*time.Second) {
			t.Fatalf("%s died when started again after crash %d", f.name, r.crashes)
		}
		w.halt()
		r.check(t, w.service, w.snapshot(), reader{name: f.name + " (restarted)", url: f.url},
			reader{name: other.name, url: other.url}, reader{name: other.name, url: other.url, consistent: true})
	}
}

// A server moved to a new data dir adopts the instances the registry holds
// for its node. When its first start on that dir dies before its join got
// there (here at snapshot-install, while it catches up; any kill does),
// local.db exists but is empty: the adoption is recorded in local.db
// (localstate Adopted), not inferred from a new file, so the next start
// still adopts them and anti-entropy keeps the acknowledged registrations.
// (Found by this suite: inferred from a new file, they were deregistered.)
func TestCrashPoints_newDataDirFirstStartDies_keepsRegistrations(t *testing.T) {
	if os.Getenv("SIDECAR_CRASHPOINTS") == "" {
		t.Skip("SIDECAR_CRASHPOINTS=1 runs the crash-point tests (make crashpoints)")
	}
	c := newCrashCluster(t)
	s := c.servers[2]
	if code, body := crashCall("PUT", s.url+"/v1/services", `{"id":"kept-1","name":"kept","port":1}`); code != 200 {
		t.Fatalf("register through %s: %d %s", s.name, code, body)
	}
	// A server on an empty data dir is then sent a snapshot.
	c.restoreOwnSnapshot(t, []string{"kept-1"})
	s.p.kill9()
	s.setDataDir(t.TempDir())
	s.start(t, "snapshot-install", 1)
	s.waitCrash(t, "snapshot-install", 1, 30*time.Second)
	s.start(t, "", 0)
	if !s.waitReady(t, 30*time.Second) {
		t.Fatalf("%s died when started again", s.name)
	}
	r := &crashResult{point: "snapshot-install on a new data dir", crashes: 1, crashAt: []int{1}}
	r.check(t, "kept", []string{"kept-1"}, reader{name: s.name, url: s.url}, reader{name: c.servers[0].name, url: c.servers[0].url, consistent: true})
}
