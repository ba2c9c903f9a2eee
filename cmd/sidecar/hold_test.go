package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sidecarhq/sidecar/api"
)

// syncBuffer is a bytes.Buffer safe for the command's output copier and
// sidecar's own messages writing at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// holdAgent fakes the agent's connection-bound hold routes: each hold
// request gets the lines sent on lines (closing lines ends the response,
// which the client sees as a broken stream), and the moment the client goes
// away is reported on released.
type holdAgent struct {
	lines    chan string
	body     chan []byte
	released chan struct{}
	// onRelease runs when the client goes away, before released closes.
	onRelease func()
}

func newHoldAgent(t *testing.T, status int) *holdAgent {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	// Registered first, so it runs after the server is closed.
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	ha := &holdAgent{lines: make(chan string, 16), body: make(chan []byte, 1), released: make(chan struct{})}
	handler := func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		ha.body <- b
		if status != http.StatusOK {
			w.WriteHeader(status)
			io.WriteString(w, `{"error":"refused for the test"}`)
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		defer func() {
			if ha.onRelease != nil {
				ha.onRelease()
			}
			close(ha.released)
		}()
		for {
			select {
			case l, ok := <-ha.lines:
				if !ok {
					return
				}
				io.WriteString(w, l+"\n")
				w.(http.Flusher).Flush()
			case <-r.Context().Done():
				return
			}
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/locks/{name}", handler)
	mux.HandleFunc("PUT /v1/elections/{name}/campaign", handler)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Setenv("SIDECAR_HTTP_ADDR", srv.Listener.Addr().String())
	return ha
}

func (ha *holdAgent) waitReleased(t *testing.T) {
	t.Helper()
	select {
	case <-ha.released:
	case <-time.After(5 * time.Second):
		t.Fatal("the hold was not released")
	}
}

// waitFile polls for a file the command creates to say it runs.
func waitFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s never appeared", path)
}

type heldRun struct {
	code           int
	stdout, stderr *syncBuffer
	elapsed        time.Duration
}

// runHeldCLI runs sidecar in-process in the background; the result arrives
// on the returned channel.
func runHeldCLI(ctx context.Context, args ...string) <-chan heldRun {
	done := make(chan heldRun, 1)
	go func() {
		r := heldRun{stdout: &syncBuffer{}, stderr: &syncBuffer{}}
		start := time.Now()
		r.code = run(ctx, args, strings.NewReader(""), r.stdout, r.stderr)
		r.elapsed = time.Since(start)
		done <- r
	}()
	return done
}

func waitRun(t *testing.T, done <-chan heldRun) heldRun {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("sidecar did not exit")
		return heldRun{}
	}
}

func TestLock_runsCommandWithToken(t *testing.T) {
	ha := newHoldAgent(t, http.StatusOK)
	ha.lines <- `{"held":false,"holder":{"node":"n2"}}`
	ha.lines <- `{"held":true,"token":42}`
	r := waitRun(t, runHeldCLI(context.Background(), "lock", "job", "--ttl", "5s", "--value", "me", "--",
		"sh", "-c", `echo "$SIDECAR_FENCING_TOKEN $SIDECAR_LOCK"; exit 3`))
	if r.code != 3 {
		t.Errorf("exit code %d, want the command's 3 (stderr %q)", r.code, r.stderr)
	}
	if r.stdout.String() != "42 job\n" {
		t.Errorf("command printed %q, want \"42 job\\n\"", r.stdout)
	}
	want := "sidecar: waiting for lock job (held by n2)\nsidecar: holding lock job, token 42\n"
	if r.stderr.String() != want {
		t.Errorf("stderr %q, want %q", r.stderr, want)
	}
	ha.waitReleased(t)
	var req api.LockRequest
	if err := json.Unmarshal(<-ha.body, &req); err != nil {
		t.Fatal(err)
	}
	if req.Hold != api.HoldConnection || req.TTL != "5s" || req.Value != "me" {
		t.Errorf("request %+v", req)
	}
}

func TestElect_runsCommandWithToken(t *testing.T) {
	ha := newHoldAgent(t, http.StatusOK)
	ha.lines <- `{"leader":false,"current":{"candidate":"other","node":"n2"}}`
	ha.lines <- `{"leader":true,"token":9,"expires_in":"10s"}`
	r := waitRun(t, runHeldCLI(context.Background(), "elect", "primary", "--value", "10.0.0.1:5432", "--service", "db-1", "--",
		"sh", "-c", `echo "$SIDECAR_FENCING_TOKEN $SIDECAR_ELECTION $SIDECAR_CANDIDATE"`))
	if r.code != 0 {
		t.Errorf("exit code %d (stderr %q)", r.code, r.stderr)
	}
	host, _ := os.Hostname()
	candidate := fmt.Sprintf("%s-%d", host, os.Getpid())
	if want := "9 primary " + candidate + "\n"; r.stdout.String() != want {
		t.Errorf("command printed %q, want %q", r.stdout, want)
	}
	if want := "sidecar: waiting for election primary (held by other)\nsidecar: leading election primary, token 9\n"; r.stderr.String() != want {
		t.Errorf("stderr %q, want %q", r.stderr, want)
	}
	ha.waitReleased(t)
	var req api.CampaignRequest
	if err := json.Unmarshal(<-ha.body, &req); err != nil {
		t.Fatal(err)
	}
	if req.Hold != api.HoldConnection || req.Candidate != candidate || req.Value != "10.0.0.1:5432" || req.Service != "db-1" {
		t.Errorf("request %+v", req)
	}
}

// loopCmd is a command that says it started by creating dir/started and
// then runs until signalled; trap decides what SIGTERM does.
func loopCmd(dir, trap string) []string {
	return []string{"sh", "-c", fmt.Sprintf(`%s; touch %s/started; while :; do sleep 0.05; done`, trap, dir)}
}

func TestLock_lostStopsCommand(t *testing.T) {
	tests := []struct {
		name string
		lose func(ha *holdAgent)
		want string
	}{
		{"agent says not held", func(ha *holdAgent) { ha.lines <- `{"held":false}` }, "the agent reports it is no longer held"},
		{"token changes", func(ha *holdAgent) { ha.lines <- `{"held":true,"token":8}` }, "fencing token changed from 7 to 8"},
		{"stream ends", func(ha *holdAgent) { close(ha.lines) }, "connection to the agent broke"},
		{"error line", func(ha *holdAgent) { ha.lines <- `{"error":"lease expired"}` }, "the agent ended the hold: lease expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ha := newHoldAgent(t, http.StatusOK)
			dir := t.TempDir()
			ha.lines <- `{"held":true,"token":7}`
			ha.lines <- `{"held":true,"token":7}` // a repeat changes nothing
			args := append([]string{"lock", "job", "--"}, loopCmd(dir, `trap "echo stopped; exit 0" TERM`)...)
			done := runHeldCLI(context.Background(), args...)
			waitFile(t, filepath.Join(dir, "started"))
			tt.lose(ha)
			r := waitRun(t, done)
			if r.code != exitFailure {
				t.Errorf("exit code %d, want 1 although the command exited 0", r.code)
			}
			if !strings.Contains(r.stdout.String(), "stopped") {
				t.Errorf("command was not sent SIGTERM: stdout %q", r.stdout)
			}
			if r.elapsed >= killGrace {
				t.Errorf("took %v; SIGTERM should have stopped it", r.elapsed)
			}
			// The shell may add its own "Terminated" for the killed sleep.
			lines := strings.Split(strings.TrimSpace(r.stderr.String()), "\n")
			if len(lines) < 2 || !strings.HasPrefix(lines[1], "sidecar: lost lock job (") || !strings.Contains(lines[1], tt.want) ||
				strings.Count(r.stderr.String(), "sidecar: ") != 2 {
				t.Errorf("stderr %q, want holding then one lost line with %q", r.stderr, tt.want)
			}
			ha.waitReleased(t)
		})
	}
}

func TestLock_killsStubbornCommand(t *testing.T) {
	old := killGrace
	killGrace = 200 * time.Millisecond
	t.Cleanup(func() { killGrace = old })
	ha := newHoldAgent(t, http.StatusOK)
	dir := t.TempDir()
	ha.lines <- `{"held":true,"token":7}`
	done := runHeldCLI(context.Background(), append([]string{"lock", "job", "--"}, loopCmd(dir, `trap "" TERM`)...)...)
	waitFile(t, filepath.Join(dir, "started"))
	ha.lines <- `{"held":false}`
	r := waitRun(t, done)
	if r.code != exitFailure {
		t.Errorf("exit code %d, want 1", r.code)
	}
	if r.elapsed < killGrace {
		t.Errorf("exited after %v, before the grace period", r.elapsed)
	}
	ha.waitReleased(t)
}

// TestLock_interrupt checks the shutdown order on SIGINT/SIGTERM: the command
// is stopped first and the lock released only after it exited, so the next
// holder never overlaps with it.
func TestLock_interrupt(t *testing.T) {
	ha := newHoldAgent(t, http.StatusOK)
	dir := t.TempDir()
	termFile := filepath.Join(dir, "term")
	var stoppedFirst bool
	ha.onRelease = func() {
		_, err := os.Stat(termFile)
		stoppedFirst = err == nil
	}
	ha.lines <- `{"held":true,"token":7}`
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runHeldCLI(ctx, append([]string{"lock", "job", "--"},
		loopCmd(dir, fmt.Sprintf(`trap "sleep 0.2; touch %s; exit 5" TERM`, termFile))...)...)
	waitFile(t, filepath.Join(dir, "started"))
	cancel()
	r := waitRun(t, done)
	if r.code != 5 {
		t.Errorf("exit code %d, want the command's 5 (stderr %q)", r.code, r.stderr)
	}
	ha.waitReleased(t)
	if !stoppedFirst {
		t.Error("lock released before the command exited")
	}
}

func TestLock_notAcquired(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		cancel bool
		want   string
	}{
		{"timeout", []string{"--timeout", "100ms"}, false, "lock job: not acquired within 100ms"},
		{"interrupted", nil, true, "lock job: interrupted while waiting"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ha := newHoldAgent(t, http.StatusOK)
			ha.lines <- `{"held":false}`
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			args := append(append([]string{"lock", "job"}, tt.args...), "--", "sh", "-c", "echo ran")
			done := runHeldCLI(ctx, args...)
			if tt.cancel {
				time.Sleep(100 * time.Millisecond)
				cancel()
			}
			r := waitRun(t, done)
			if r.code != exitFailure {
				t.Errorf("exit code %d, want 1", r.code)
			}
			if r.stdout.String() != "" {
				t.Errorf("command ran: %q", r.stdout)
			}
			if !strings.HasSuffix(r.stderr.String(), "sidecar: "+tt.want+"\n") {
				t.Errorf("stderr %q, want it to end with %q", r.stderr, tt.want)
			}
			ha.waitReleased(t)
		})
	}
}

func TestLock_refused(t *testing.T) {
	newHoldAgent(t, http.StatusBadRequest)
	r := waitRun(t, runHeldCLI(context.Background(), "lock", "job", "--", "true"))
	if r.code != exitFailure {
		t.Errorf("exit code %d, want 1", r.code)
	}
	assertOneErrorLine(t, r.stderr.String(), "lock job: 400 Bad Request: refused for the test")
}

func TestLock_commandNotFound(t *testing.T) {
	ha := newHoldAgent(t, http.StatusOK)
	ha.lines <- `{"held":true,"token":7}`
	r := waitRun(t, runHeldCLI(context.Background(), "lock", "job", "--", "/nonexistent/command"))
	if r.code != exitFailure {
		t.Errorf("exit code %d, want 1", r.code)
	}
	if !strings.Contains(r.stderr.String(), "sidecar: lock job: start /nonexistent/command:") {
		t.Errorf("stderr %q", r.stderr)
	}
	ha.waitReleased(t)
}

func TestLock_exitBySignal(t *testing.T) {
	ha := newHoldAgent(t, http.StatusOK)
	ha.lines <- `{"held":true,"token":7}`
	r := waitRun(t, runHeldCLI(context.Background(), "lock", "job", "--", "sh", "-c", "kill -KILL $$"))
	if r.code != 128+9 {
		t.Errorf("exit code %d, want 137 for a command killed by SIGKILL", r.code)
	}
	ha.waitReleased(t)
}
