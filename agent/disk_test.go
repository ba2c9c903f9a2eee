package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/agent"
	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/election/electiontest"
	"github.com/sidecarhq/sidecar/internal/disktest"
	"github.com/sidecarhq/sidecar/localstate"
)

// TestAgent_New_damagedLocalState: an agent whose local.db is damaged does
// not start: New fails with one line naming the file and what to do.
func TestAgent_New_damagedLocalState(t *testing.T) {
	for name, data := range map[string][]byte{
		"empty":   {},
		"garbage": bytes.Repeat([]byte("not a bolt file "), 600),
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, localstate.FileName)
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			cfg := agenttest.Config("client")
			cfg.DataDir = dir
			a, err := agent.New(cfg, electiontest.Logger(t, "client"))
			if err == nil {
				a.Kill()
				t.Fatal("an agent started on a damaged local state")
			}
			if !errors.Is(err, localstate.ErrDamaged) || !strings.Contains(err.Error(), path) ||
				!strings.Contains(err.Error(), "move "+path+" away") || strings.Contains(err.Error(), "\n") {
				t.Fatalf("New: %v; want one line naming %s and the recovery", err, path)
			}
		})
	}
}

// TestAgent_register_diskFull: a client agent whose data dir is on a full
// disk refuses a registration with 507 and an error naming the disk,
// changes nothing, keeps serving reads, and takes registrations again once
// space is freed.
func TestAgent_register_diskFull(t *testing.T) {
	dir := disktest.Tmpfs(t, "1m")
	servers := agenttest.Cluster(t, 1, nil)
	c := agenttest.Join(t, servers[0], "client", false, func(cfg *agent.Config) { cfg.DataDir = dir })
	c.WaitReady(30 * time.Second)
	register(t, c, api.ServiceRegistration{ID: "small", Name: "web", Port: 80})

	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	for buf := make([]byte, 4096); ; {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	f.Close()

	// As large as a registration goes (64 meta values of 500 bytes): it
	// needs pages local.db does not have yet.
	big := api.ServiceRegistration{ID: "big", Name: "web", Port: 81, Meta: map[string]string{}}
	for i := range 64 {
		big.Meta[fmt.Sprint("k", i)] = strings.Repeat("x", 500)
	}
	_, err = client(t, c).Register(context.Background(), big)
	var se *api.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusInsufficientStorage ||
		!strings.Contains(se.Error(), "the disk at "+dir+" is full") || !strings.Contains(se.Error(), localstate.FileName) {
		t.Fatalf("register on a full disk: %v; want 507 naming the disk at %s", err, dir)
	}
	if got := instances(t, c, "web"); len(got) != 1 {
		t.Fatalf("after a refused registration the registry holds %d instances of web, want 1", len(got))
	}

	os.Remove(filler)
	register(t, c, big)
	agenttest.WaitFor(t, 10*time.Second, "big registered", func() bool { return len(instances(t, c, "web")) == 2 })
}

// TestAgent_Run_damagedWhileRunning: a record of local.db damaged while the
// agent runs is found by the next read of it (here a deregistration, which
// it refuses rather than take the record for absent), and Run ends with
// one line naming the file and the record.
func TestAgent_Run_damagedWhileRunning(t *testing.T) {
	servers := agenttest.Cluster(t, 1, nil)
	dir := t.TempDir()
	cfg := agenttest.Config("client")
	cfg.DataDir = dir
	cfg.Join = []string{servers[0].Gossip().Addr()}
	a, err := agent.New(cfg, electiontest.Logger(t, "client"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	agenttest.WaitFor(t, 10*time.Second, "HTTP listening", func() bool { return a.HTTPAddr() != "" })
	n := &agenttest.Agent{Agent: a, URL: "http://" + a.HTTPAddr()}
	agenttest.WaitFor(t, 30*time.Second, "client ready", n.Ready)
	register(t, n, api.ServiceRegistration{ID: "web-7", Name: "web", Port: 80})

	// The registration reaches local.db from the write-ahead log once
	// writes pause (a second); every copy of the record is damaged, as
	// bbolt may have left an older one on a free page.
	path := filepath.Join(dir, localstate.FileName)
	marker := []byte(`"id":"web-7"`)
	var data []byte
	agenttest.WaitFor(t, 15*time.Second, "web-7 in local.db and no longer in the log", func() bool {
		var err error
		data, err = os.ReadFile(path)
		return err == nil && bytes.Contains(data, marker) && metric(t, n, "sidecar_local_state_log_records") == "0"
	})
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; ; {
		i := bytes.Index(data[off:], marker)
		if i < 0 {
			break
		}
		f.WriteAt([]byte{'6'}, int64(off+i+len(`"id":"web-`))) // web-7 -> web-6
		off += i + len(marker)
	}
	f.Close()

	err = client(t, n).Deregister(context.Background(), "web-7")
	var se *api.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable || !strings.Contains(se.Error(), path) {
		t.Fatalf("deregister of a damaged record: %v; want 503 naming %s", err, path)
	}
	select {
	case err := <-done:
		done <- err
		if !errors.Is(err, localstate.ErrDamaged) || !strings.Contains(err.Error(), path) ||
			!strings.Contains(err.Error(), `"web-7"`) || strings.Contains(err.Error(), "\n") {
			t.Fatalf("Run = %v; want one line naming %s and the record", err, path)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the agent runs on with a damaged local state")
	}
}

// metric is a metric's value as the agent's /metrics serves it, "" when
// it serves none.
func metric(t testing.TB, a *agenttest.Agent, name string) string {
	t.Helper()
	resp, err := http.Get(a.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}
