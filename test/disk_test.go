package test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/fsm"
	"github.com/sidecarhq/sidecar/localstate"
)

// TestProcess_damagedLocalState: `sidecar agent` on a data dir whose
// local.db is cut short (a torn copy) exits non-zero at once with one line
// on stderr naming the file and what to do, and no stack trace.
func TestProcess_damagedLocalState(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, localstate.FileName)
	s, err := localstate.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"web-1", "web-2", "web-3"} {
		if err := s.PutService(localstate.Service{Source: localstate.SourceAPI,
			Instance: fsm.Instance{ID: id, Name: "web", Node: "n1", Port: 80}}); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data[:len(data)/3], 0o600); err != nil {
		t.Fatal(err)
	}

	for _, level := range []string{"info", "error"} {
		t.Run(level, func(t *testing.T) {
			cmd := exec.Command(binary, "agent", "--name", "n1", "--data-dir", dir, "--log-level", level,
				"--bind-addr", freeAddr(t), "--http-addr", freeAddr(t), "--dns-addr", freeAddr(t))
			var stderr strings.Builder
			cmd.Stderr = &stderr
			done := make(chan error, 1)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			go func() { done <- cmd.Wait() }()
			select {
			case err = <-done:
			case <-time.After(20 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("the agent runs on a damaged local state; stderr:\n%s", stderr.String())
			}
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() == 0 {
				t.Fatalf("exit: %v, want non-zero; stderr:\n%s", err, stderr.String())
			}
			out := stderr.String()
			if strings.Contains(out, "goroutine ") || strings.Contains(out, "panic") {
				t.Fatalf("stderr holds a stack trace:\n%s", out)
			}
			var lines []string
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				if !strings.HasPrefix(l, "time=") { // the start banner, a log line
					lines = append(lines, l)
				}
			}
			if level == "error" && strings.Count(strings.TrimSpace(out), "\n") != 0 {
				t.Fatalf("stderr at --log-level error:\n%s\nwant one line", out)
			}
			if len(lines) != 1 || !strings.Contains(lines[0], path) || !strings.Contains(lines[0], "is damaged") ||
				!strings.Contains(lines[0], "move "+path+" away") {
				t.Fatalf("stderr:\n%s\nwant one line naming %s and what to do", out, path)
			}
		})
	}
}
