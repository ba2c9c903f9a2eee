package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAgent_damagedLocalState_oneLine: an agent whose local.db is cut short
// does not start: exit 1, and stderr holds, besides the start banner, one
// line naming the file and what to do; no stack trace.
func TestAgent_damagedLocalState_oneLine(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "local.db")
	// The first 100 bytes of a bbolt file: its meta page cut short.
	if err := os.WriteFile(path, []byte(strings.Repeat("\x00", 100)), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCLI(t, "agent", "--name", "n1", "--data-dir", dir, "--bind-addr", "127.0.0.1:0",
		"--http-addr", "127.0.0.1:0", "--dns-addr", "127.0.0.1:0")
	if code != exitFailure {
		t.Fatalf("exit %d, want %d; stderr:\n%s", code, exitFailure, stderr)
	}
	var errLines []string
	for _, l := range strings.Split(strings.TrimSpace(stderr), "\n") {
		if !strings.Contains(l, "level=INFO") && !strings.Contains(l, "level=WARN") {
			errLines = append(errLines, l)
		}
	}
	if len(errLines) != 1 || !strings.HasPrefix(errLines[0], "sidecar: agent did not start: local state "+path+" is damaged") ||
		!strings.Contains(errLines[0], "move "+path+" away") {
		t.Fatalf("stderr:\n%s\nwant one line naming %s and the recovery", stderr, path)
	}
	if strings.Contains(stderr, "goroutine ") || strings.Contains(stderr, "panic") {
		t.Fatalf("stderr holds a stack trace:\n%s", stderr)
	}
}
