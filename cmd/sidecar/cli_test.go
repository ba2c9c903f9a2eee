package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/api"
)

// fakeAgent is an httptest server standing in for the agent: routes maps
// "METHOD /path" to a handler, and every request body is recorded.
type fakeAgent struct {
	srv    *httptest.Server
	mu     sync.Mutex
	bodies map[string][]byte // last body per "METHOD /path"
	query  map[string]string // last raw query per "METHOD /path"
}

func newFakeAgent(t *testing.T, routes map[string]http.HandlerFunc) *fakeAgent {
	t.Helper()
	fa := &fakeAgent{bodies: map[string][]byte{}, query: map[string]string{}}
	fa.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Method + " " + r.URL.Path
		b, _ := io.ReadAll(r.Body)
		fa.mu.Lock()
		fa.bodies[key], fa.query[key] = b, r.URL.RawQuery
		fa.mu.Unlock()
		h, ok := routes[key]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"error":"no route `+key+`"}`)
			return
		}
		h(w, r)
	}))
	t.Cleanup(fa.srv.Close)
	// Client commands read their default address from the environment.
	t.Setenv("SIDECAR_HTTP_ADDR", fa.srv.Listener.Addr().String())
	return fa
}

func (fa *fakeAgent) body(key string) []byte {
	fa.mu.Lock()
	defer fa.mu.Unlock()
	return fa.bodies[key]
}

func jsonReply(code int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		io.WriteString(w, body)
	}
}

// runCLI runs one command line in-process.
func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestCLI_readCommands(t *testing.T) {
	var fa *fakeAgent
	fa = newFakeAgent(t, map[string]http.HandlerFunc{
		"GET /v1/members": jsonReply(200, `[{"name":"b","addr":"10.0.0.2","port":7946,"role":"client","status":"alive"},
			{"name":"a","addr":"::1","port":7946,"role":"server","status":"failed"}]`),
		"GET /v1/status":            jsonReply(200, `{"node":"a","role":"client","leader":"","term":4,"commit_index":9,"applied_index":9,"peers":["a"],"stream_server":"s1"}`),
		"GET /v1/services":          jsonReply(200, `{"web":["v1","prod"],"db":[]}`),
		"GET /v1/services/web":      jsonReply(200, `[{"id":"web-2","name":"web","node":"b","address":"10.0.0.2","port":80,"tags":["v1"],"status":"critical"},{"id":"web-1","name":"web","node":"a","address":"10.0.0.1","port":80,"tags":["v1","prod"],"status":"passing"}]`),
		"GET /v1/services/nothing":  jsonReply(200, `null`),
		"GET /v1/elections/primary": jsonReply(200, `{"leader":{"candidate":"c1","node":"a","value":"10.0.0.1:5432","token":7}}`),
		"GET /v1/elections/vacant":  jsonReply(404, `{"error":"no leader"}`),
		"PUT /v1/elections/primary/transfer": func(w http.ResponseWriter, r *http.Request) {
			var req api.TransferRequest
			json.Unmarshal(fa.body(r.Method+" "+r.URL.Path), &req)
			if req.To != "c2" || req.From != "" {
				jsonReply(409, `{"error":"fsm: candidate does not lead here: candidate \"c1\" of election \"primary\" campaigns through node \"b\""}`)(w, r)
				return
			}
			jsonReply(200, `{"leader":"c2","token":12}`)(w, r)
		},
	})
	tests := []struct {
		args     []string
		wantCode int
		want     []string // substrings of stdout, in order
		wantErr  string
	}{
		{args: []string{"members"}, want: []string{"NAME", "ADDRESS", "a", "[::1]:7946", "server", "failed", "b", "10.0.0.2:7946", "alive"}},
		{args: []string{"members", "--json"}, want: []string{`"name": "b"`, `"name": "a"`}},
		{args: []string{"status"}, want: []string{"node", "a", "leader", "(none)", "term", "4", "stream server", "s1", "peers", "a"}},
		{args: []string{"status", "--json"}, want: []string{`"commit_index": 9`}},
		{args: []string{"services"}, want: []string{"NAME", "TAGS", "db", "web", "v1,prod"}},
		{args: []string{"services", "--json"}, want: []string{`"web": [`}},
		{args: []string{"services", "web"}, want: []string{"ID", "web-1", "a", "10.0.0.1:80", "passing", "v1,prod", "web-2", "critical"}},
		{args: []string{"services", "web", "--passing", "--tag", "v1"}, want: []string{"web-1"}},
		{args: []string{"services", "nothing", "--json"}, want: []string{"[]"}},
		{args: []string{"services", "missing"}, wantCode: 1, wantErr: "services missing: 404 Not Found: no route GET /v1/services/missing"},
		{args: []string{"leader", "primary"}, want: []string{"10.0.0.1:5432\n"}},
		{args: []string{"leader", "primary", "--json"}, want: []string{`"token": 7`}},
		{args: []string{"leader", "vacant"}, wantCode: 1, wantErr: "election vacant has no leader"},
		{args: []string{"transfer", "primary", "--to", "c2"}, want: []string{"c2 leads primary with token 12\n"}},
		{args: []string{"transfer", "primary", "--to", "c2", "--from", "c1"}, wantCode: 1, wantErr: `campaigns through node "b"`},
		{args: []string{"transfer", "primary"}, wantCode: 2, wantErr: "transfer: missing --to CANDIDATE"},
		{args: []string{"version"}, want: []string{"sidecar dev\n"}},
		{args: []string{"--version"}, want: []string{"sidecar dev\n"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tt.args...)
			if code != tt.wantCode {
				t.Fatalf("exit code %d, want %d (stderr %q)", code, tt.wantCode, stderr)
			}
			if tt.wantErr != "" {
				assertOneErrorLine(t, stderr, tt.wantErr)
				return
			}
			rest := stdout
			for _, w := range tt.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("stdout %q lacks %q (in order)", stdout, w)
				}
				rest = rest[i+len(w):]
			}
		})
	}
}

func TestCLI_agentUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := srv.Listener.Addr().String()
	srv.Close()
	code, _, stderr := runCLI(t, "status", "--http-addr", addr)
	if code != exitFailure {
		t.Errorf("exit code %d, want 1", code)
	}
	assertOneErrorLine(t, stderr, "status: GET /v1/status:")
}

func TestCLI_register(t *testing.T) {
	fa := newFakeAgent(t, map[string]http.HandlerFunc{
		"PUT /v1/services": jsonReply(200, `{"id":"web-8080","index":3}`),
	})
	tests := []struct {
		args []string
		want api.ServiceRegistration
	}{
		{[]string{"--name", "web", "--port", "8080"}, api.ServiceRegistration{ID: "web-8080", Name: "web", Port: 8080}},
		{[]string{"--name", "web", "--port", "8080", "--id", "w1", "--address", "10.0.0.1", "--tag", "a", "--tag", "b", "--meta", "team=core", "--check-http", "http://127.0.0.1:8080/health", "--check-interval", "2s"},
			api.ServiceRegistration{ID: "w1", Name: "web", Address: "10.0.0.1", Port: 8080, Tags: []string{"a", "b"}, Meta: map[string]string{"team": "core"},
				Checks: []api.CheckDefinition{{Type: "http", HTTP: "http://127.0.0.1:8080/health", Interval: "2s"}}}},
		{[]string{"--name", "web", "--port", "8080", "--check-tcp", "127.0.0.1:8080"},
			api.ServiceRegistration{ID: "web-8080", Name: "web", Port: 8080, Checks: []api.CheckDefinition{{Type: "tcp", TCP: "127.0.0.1:8080", Interval: "10s"}}}},
		{[]string{"--name", "web", "--port", "8080", "--check-ttl", "30s"},
			api.ServiceRegistration{ID: "web-8080", Name: "web", Port: 8080, Checks: []api.CheckDefinition{{Type: "ttl", TTL: "30s"}}}},
		{[]string{"--name", "web", "--port", "8080", "--weight", "3"}, api.ServiceRegistration{ID: "web-8080", Name: "web", Port: 8080, Weight: 3}},
		{[]string{"--name", "web", "--port", "8080", "--weight=65535"}, api.ServiceRegistration{ID: "web-8080", Name: "web", Port: 8080, Weight: 65535}},
	}
	for _, tt := range tests {
		code, stdout, stderr := runCLI(t, append([]string{"register"}, tt.args...)...)
		if code != 0 || stdout != "web-8080\n" {
			t.Errorf("register %q: exit %d stdout %q stderr %q", tt.args, code, stdout, stderr)
		}
		var got api.ServiceRegistration
		if err := json.Unmarshal(fa.body("PUT /v1/services"), &got); err != nil {
			t.Fatal(err)
		}
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(tt.want)
		if !bytes.Equal(g, w) {
			t.Errorf("register %q sent\n %s\nwant\n %s", tt.args, g, w)
		}
	}
}

// TestCLI_register_badWeight: a weight outside 1-65535 is a usage error
// (exit 2) and sends nothing.
func TestCLI_register_badWeight(t *testing.T) {
	fa := newFakeAgent(t, map[string]http.HandlerFunc{
		"PUT /v1/services": jsonReply(200, `{"id":"web-8080","index":3}`),
	})
	for _, w := range []string{"0", "-1", "65536", "x"} {
		code, _, stderr := runCLI(t, "register", "--name", "web", "--port", "8080", "--weight", w)
		if code != 2 || !strings.Contains(stderr, "weight") {
			t.Errorf("--weight %s: exit %d stderr %q, want 2 naming the weight", w, code, stderr)
		}
	}
	if b := fa.body("PUT /v1/services"); b != nil {
		t.Errorf("a bad weight was sent: %s", b)
	}
}

func TestCLI_deregister(t *testing.T) {
	newFakeAgent(t, map[string]http.HandlerFunc{
		"DELETE /v1/services/web-1":   jsonReply(200, `{}`),
		"DELETE /v1/services/missing": jsonReply(404, `{"error":"no instance missing on this node"}`),
	})
	if code, _, stderr := runCLI(t, "deregister", "web-1"); code != 0 {
		t.Errorf("deregister: exit %d %q", code, stderr)
	}
	code, _, stderr := runCLI(t, "deregister", "missing")
	if code != 1 {
		t.Errorf("deregister missing: exit %d", code)
	}
	assertOneErrorLine(t, stderr, "deregister missing: 404 Not Found: no instance missing on this node")
}

func TestCLI_snapshot(t *testing.T) {
	snap := []byte("\x00\x01snapshot\n")
	fa := newFakeAgent(t, map[string]http.HandlerFunc{
		"GET /v1/snapshot": func(w http.ResponseWriter, r *http.Request) { w.Write(snap) },
		"PUT /v1/snapshot": jsonReply(200, `{}`),
	})
	dir := t.TempDir()
	file := filepath.Join(dir, "registry.snap")
	if code, _, stderr := runCLI(t, "snapshot", "save", file); code != 0 {
		t.Fatalf("save: exit %d %q", code, stderr)
	}
	got, err := os.ReadFile(file)
	if err != nil || !bytes.Equal(got, snap) {
		t.Fatalf("saved %q, %v", got, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
	if code, _, stderr := runCLI(t, "snapshot", "restore", file); code != 0 {
		t.Fatalf("restore: exit %d %q", code, stderr)
	}
	if !bytes.Equal(fa.body("PUT /v1/snapshot"), snap) {
		t.Errorf("restore sent %q", fa.body("PUT /v1/snapshot"))
	}
	code, _, stderr := runCLI(t, "snapshot", "restore", filepath.Join(dir, "missing"))
	if code != 1 {
		t.Errorf("restore of a missing file: exit %d", code)
	}
	assertOneErrorLine(t, stderr, "no such file")
}

func TestCLI_snapshotSaveFailureKeepsOldFile(t *testing.T) {
	newFakeAgent(t, map[string]http.HandlerFunc{
		"GET /v1/snapshot": jsonReply(503, `{"error":"not a server"}`),
	})
	file := filepath.Join(t.TempDir(), "registry.snap")
	os.WriteFile(file, []byte("old"), 0o600)
	code, _, stderr := runCLI(t, "snapshot", "save", file)
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	assertOneErrorLine(t, stderr, "snapshot save: 503 Service Unavailable: not a server")
	if b, _ := os.ReadFile(file); string(b) != "old" {
		t.Errorf("file now %q, want the old content", b)
	}
}

func TestCLI_keygen(t *testing.T) {
	code, stdout, _ := runCLI(t, "keygen")
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(stdout))
	if code != 0 || err != nil || len(key) != 32 {
		t.Errorf("keygen: exit %d, %q decodes to %d bytes (%v)", code, stdout, len(key), err)
	}
	// The key it prints is one the agent accepts.
	setupConfigTest(t)
	if _, err := parseAgentConfig([]string{"--encrypt", strings.TrimSpace(stdout)}); err != nil {
		t.Errorf("agent rejects a keygen key: %v", err)
	}
	_, again, _ := runCLI(t, "keygen")
	if again == stdout {
		t.Error("keygen printed the same key twice")
	}
}

func TestSdNotify_sendsReady(t *testing.T) {
	dir := t.TempDir()
	sock := dir + "/notify"
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	if err := sdNotify("READY=1"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	ln.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := ln.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	t.Setenv("NOTIFY_SOCKET", "")
	if err := sdNotify("READY=1"); err != nil {
		t.Fatalf("without NOTIFY_SOCKET: %v", err)
	}
}
