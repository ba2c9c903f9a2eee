package healthcheck_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sidecarhq/sidecar/fsm"
	"github.com/sidecarhq/sidecar/healthcheck"
)

func TestMain(m *testing.M) {
	if os.Getenv(benchServerEnv) != "" {
		// The test binary re-executed as BenchmarkHTTPChecks500's target.
		serveBenchTarget()
		return
	}
	goleak.VerifyTestMain(m)
}

// call is one UpdateCheck a recorder received.
type call struct {
	ID, Status, Output string
}

// recorder is a Notifier that records its calls. fail, when set, decides
// whether a call fails (it is still recorded).
type recorder struct {
	mu    sync.Mutex
	calls []call
	fail  func(c call, attempt int) error
}

func (r *recorder) UpdateCheck(_ context.Context, checkID, status, output string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := call{checkID, status, output}
	r.calls = append(r.calls, c)
	if r.fail != nil {
		return r.fail(c, len(r.calls))
	}
	return nil
}

// statuses returns the statuses reported for a check, in order.
func (r *recorder) statuses(id string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, c := range r.calls {
		if c.ID == id {
			out = append(out, c.Status)
		}
	}
	return out
}

func (r *recorder) last(id string) (call, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.calls) - 1; i >= 0; i-- {
		if r.calls[i].ID == id {
			return r.calls[i], true
		}
	}
	return call{}, false
}

// deregRecorder is a recorder that also records DeregisterCritical.
type deregRecorder struct {
	recorder
	dmu    sync.Mutex
	deregs []string
}

func (d *deregRecorder) DeregisterCritical(_ context.Context, instanceID string) error {
	d.dmu.Lock()
	defer d.dmu.Unlock()
	d.deregs = append(d.deregs, instanceID)
	return nil
}

func (d *deregRecorder) deregistered() []string {
	d.dmu.Lock()
	defer d.dmu.Unlock()
	return slices.Clone(d.deregs)
}

// testConfig is TestConfig logging to t.
func testConfig(t testing.TB) healthcheck.Config {
	cfg := healthcheck.TestConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return cfg
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// newRunner returns a Runner closed when the test ends.
func newRunner(t testing.TB, cfg healthcheck.Config, n healthcheck.Notifier) *healthcheck.Runner {
	t.Helper()
	r, err := healthcheck.New(cfg, n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitStatus waits until the check has the status and its output contains
// want.
func waitStatus(t testing.TB, r *healthcheck.Runner, id, status, want string) healthcheck.State {
	t.Helper()
	var st healthcheck.State
	waitFor(t, 5*time.Second, fmt.Sprintf("check %s %s with output %q", id, status, want), func() bool {
		st = r.Statuses()[id]
		return st.Status == status && strings.Contains(st.Output, want)
	})
	return st
}

const ms = int64(time.Millisecond)

func httpCheck(id, url string) fsm.Check {
	return fsm.Check{ID: id, Type: "http", HTTP: url, Interval: 20 * ms, Timeout: 500 * ms}
}

// target is an HTTP server answering each request with the next code of
// codes, then the last one forever, and counting requests.
type target struct {
	*httptest.Server
	mu    sync.Mutex
	codes []int
	body  string
	n     int
}

func newTarget(t testing.TB, body string, codes ...int) *target {
	tg := &target{codes: codes, body: body}
	tg.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		tg.mu.Lock()
		code := tg.codes[min(tg.n, len(tg.codes)-1)]
		tg.n++
		tg.mu.Unlock()
		w.WriteHeader(code)
		fmt.Fprint(w, tg.body)
	}))
	t.Cleanup(tg.Close)
	return tg
}

func (tg *target) requests() int {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return tg.n
}

// hangingTarget answers nothing until the client goes away (or the test
// ends), counting requests.
func hangingTarget(t testing.TB) (*httptest.Server, func() int) {
	var (
		mu sync.Mutex
		n  int
	)
	release := make(chan struct{})
	s := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		mu.Unlock()
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() {
		close(release)
		s.Close()
	})
	return s, func() int {
		mu.Lock()
		defer mu.Unlock()
		return n
	}
}

// writeScript writes an executable sh script into dir.
func writeScript(t testing.TB, dir, name, body string) string {
	t.Helper()
	path := dir + "/" + name
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// readPid reads a pid a script wrote, waiting for the file to be complete.
func readPid(t testing.TB, path string) int {
	t.Helper()
	var pid int
	waitFor(t, 5*time.Second, "pid file "+path, func() bool {
		b, err := os.ReadFile(path)
		if err != nil || !bytes.HasSuffix(b, []byte("\n")) {
			return false
		}
		_, err = fmt.Sscanf(string(b), "%d", &pid)
		return err == nil
	})
	return pid
}

// processGone reports whether pid has ended: it no longer exists, or it is
// a zombie waiting for a reaper (in a container, pid 1 may never reap the
// orphans it inherits).
func processGone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	// pid (comm) S ...: the state follows the last ')'.
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && (b[i+2] == 'Z' || b[i+2] == 'X')
}
