package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/api"
)

func TestRun_appendsFenced(t *testing.T) {
	a := agenttest.Start(t, nil)
	c, err := api.NewClient(a.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	path := filepath.Join(t.TempDir(), "out.txt")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out, errs bytes.Buffer
	if code := run(ctx, []string{"-sidecar", a.URL, "-file", path, "-lines", "3", "-every", "1ms", "-ttl", "2s"}, &out, &errs); code != 0 {
		t.Fatalf("exit %d: %s", code, errs.String())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 3 || !strings.HasSuffix(lines[2], "line=3") {
		t.Fatalf("file:\n%s", b)
	}
}

func TestRun_usage(t *testing.T) {
	var out, errs bytes.Buffer
	if code := run(context.Background(), nil, &out, &errs); code != 2 {
		t.Fatalf("exit %d without -file, want 2", code)
	}
}
