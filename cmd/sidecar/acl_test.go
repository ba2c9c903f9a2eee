package main

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// tokenRecorder answers with h and records the X-Sidecar-Token of every
// request.
type tokenRecorder struct {
	mu   sync.Mutex
	seen []string
}

func (tr *tokenRecorder) wrap(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tr.mu.Lock()
		tr.seen = append(tr.seen, r.Header.Get("X-Sidecar-Token"))
		tr.mu.Unlock()
		h(w, r)
	}
}

func (tr *tokenRecorder) last() string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.seen) == 0 {
		return "<no request>"
	}
	return tr.seen[len(tr.seen)-1]
}

// clearTokenEnv makes a test independent of the caller's environment.
func clearTokenEnv(t *testing.T) {
	t.Setenv("SIDECAR_TOKEN", "")
	t.Setenv("SIDECAR_TOKEN_FILE", "")
}

func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCLI_token_sources(t *testing.T) {
	var tr tokenRecorder
	newFakeAgent(t, map[string]http.HandlerFunc{
		"GET /v1/status": tr.wrap(jsonReply(200, `{"node":"a","role":"server"}`)),
	})
	file := writeTemp(t, "token", "  from-file\n")
	envFile := writeTemp(t, "env-token", "from-env-file\n")
	tests := []struct {
		name      string
		env       map[string]string
		args      []string
		want      string // token sent
		wantCode  int
		wantError string
	}{
		{name: "none", want: ""},
		{name: "flag", args: []string{"--token", "from-flag"}, want: "from-flag"},
		{name: "env", env: map[string]string{"SIDECAR_TOKEN": "from-env"}, want: "from-env"},
		{name: "flag wins over env", env: map[string]string{"SIDECAR_TOKEN": "from-env"}, args: []string{"--token", "from-flag"}, want: "from-flag"},
		{name: "file flag", args: []string{"--token-file", file}, want: "from-file"},
		{name: "file flag wins over env", env: map[string]string{"SIDECAR_TOKEN": "from-env"}, args: []string{"--token-file", file}, want: "from-file"},
		{name: "env file", env: map[string]string{"SIDECAR_TOKEN_FILE": envFile}, want: "from-env-file"},
		{name: "env token wins over env file", env: map[string]string{"SIDECAR_TOKEN": "from-env", "SIDECAR_TOKEN_FILE": envFile}, want: "from-env"},
		{name: "both flags", args: []string{"--token", "x", "--token-file", file}, wantCode: exitUsage, wantError: "give --token or --token-file, not both"},
		{name: "space", args: []string{"--token", "a b"}, wantCode: exitUsage, wantError: "--token holds a space"},
		{name: "missing file", args: []string{"--token-file", filepath.Join(t.TempDir(), "nope")}, wantCode: exitFailure, wantError: "status: --token-file: open"},
		{name: "empty file", env: map[string]string{"SIDECAR_TOKEN_FILE": writeTemp(t, "empty", "\n")}, wantCode: exitFailure, wantError: "is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearTokenEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			tr.mu.Lock()
			tr.seen = nil
			tr.mu.Unlock()
			code, _, stderr := runCLI(t, append([]string{"status"}, tt.args...)...)
			if code != tt.wantCode {
				t.Fatalf("exit code %d, want %d (stderr %q)", code, tt.wantCode, stderr)
			}
			if tt.wantError != "" {
				assertOneErrorLine(t, stderr, tt.wantError)
				if strings.Contains(stderr, "a b") {
					t.Errorf("stderr %q shows the secret", stderr)
				}
				return
			}
			if got := tr.last(); got != tt.want {
				t.Errorf("X-Sidecar-Token %q, want %q", got, tt.want)
			}
		})
	}
}

// A secret in the environment never shows in --help.
func TestCLI_token_notInHelp(t *testing.T) {
	clearTokenEnv(t)
	t.Setenv("SIDECAR_TOKEN", "s3cret-in-env")
	for _, args := range [][]string{{"status", "--help"}, {"acl", "token", "list", "--help"}} {
		code, stdout, _ := runCLI(t, args...)
		if code != exitOK || !strings.Contains(stdout, "--token-file") {
			t.Fatalf("%v: exit %d, stdout %q", args, code, stdout)
		}
		if strings.Contains(stdout, "s3cret") {
			t.Errorf("%v --help shows the secret of $SIDECAR_TOKEN:\n%s", args, stdout)
		}
	}
}

func TestCLI_aclBootstrap(t *testing.T) {
	clearTokenEnv(t)
	bootstrapped := false
	var mu sync.Mutex
	newFakeAgent(t, map[string]http.HandlerFunc{
		"PUT /v1/acl/bootstrap": func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			defer mu.Unlock()
			if bootstrapped {
				jsonReply(409, `{"error":"ACLs were bootstrapped already"}`)(w, r)
				return
			}
			bootstrapped = true
			jsonReply(200, `{"id":"t-root","secret":"S3CRET"}`)(w, r)
		},
	})
	reset := func(b bool) { mu.Lock(); bootstrapped = b; mu.Unlock() }

	code, stdout, stderr := runCLI(t, "acl", "bootstrap")
	if code != 0 || !strings.Contains(stdout, "t-root") || !strings.Contains(stdout, "S3CRET") {
		t.Fatalf("bootstrap: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	code, _, stderr = runCLI(t, "acl", "bootstrap")
	if code != exitFailure {
		t.Fatalf("second bootstrap: exit %d, want 1", code)
	}
	assertOneErrorLine(t, stderr, "bootstrapped already")

	reset(false)
	code, stdout, _ = runCLI(t, "acl", "bootstrap", "--format", "json")
	var got map[string]string
	if code != 0 || json.Unmarshal([]byte(stdout), &got) != nil || got["id"] != "t-root" || got["secret"] != "S3CRET" {
		t.Fatalf("bootstrap --format json: exit %d, stdout %q", code, stdout)
	}

	// --out: the secret goes to a 0600 file, not to stdout.
	reset(false)
	out := filepath.Join(t.TempDir(), "management.token")
	code, stdout, stderr = runCLI(t, "acl", "bootstrap", "--out", out, "--if-needed")
	if code != 0 || strings.Contains(stdout, "S3CRET") || !strings.Contains(stdout, "t-root") {
		t.Fatalf("bootstrap --out: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	b, err := os.ReadFile(out)
	if err != nil || strings.TrimSpace(string(b)) != "S3CRET" {
		t.Fatalf("%s: %q, %v", out, b, err)
	}
	if fi, _ := os.Stat(out); fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %v, want 0600", out, fi.Mode().Perm())
	}
	// Again, bootstrapped: a no-op with --if-needed, since the file holds a
	// token; a failure without it, or when the file is missing.
	code, _, stderr = runCLI(t, "acl", "bootstrap", "--out", out, "--if-needed")
	if code != 0 {
		t.Fatalf("bootstrap --if-needed, bootstrapped, file there: exit %d (%s)", code, stderr)
	}
	if b2, _ := os.ReadFile(out); string(b2) != string(b) {
		t.Errorf("bootstrap --if-needed changed %s", out)
	}
	code, _, _ = runCLI(t, "acl", "bootstrap", "--out", out)
	if code != exitFailure {
		t.Errorf("bootstrap --out without --if-needed, bootstrapped: exit %d, want 1", code)
	}
	code, _, _ = runCLI(t, "acl", "bootstrap", "--out", filepath.Join(t.TempDir(), "other"), "--if-needed")
	if code != exitFailure {
		t.Errorf("bootstrap --if-needed, bootstrapped, no file: exit %d, want 1", code)
	}

	for _, args := range [][]string{
		{"acl", "bootstrap", "--if-needed"},
		{"acl", "bootstrap", "extra"},
		{"acl", "bootstrap", "--format", "yaml"},
		{"acl"},
		{"acl", "tokens"},
		{"acl", "token"},
		{"acl", "token", "rotate"},
	} {
		if code, _, stderr := runCLI(t, args...); code != exitUsage {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", args, code, stderr)
		}
	}
}

func TestCLI_aclTokenCreate(t *testing.T) {
	clearTokenEnv(t)
	var tr tokenRecorder
	fa := newFakeAgent(t, map[string]http.HandlerFunc{
		"PUT /v1/acl/tokens": tr.wrap(jsonReply(200, `{"id":"t-app","secret":"APPSECRET"}`)),
	})
	rules := `{"service":{"billing":"write","":"read"},"lock":{"billing-":"write"},"lease":"write","election":{"billing":"write"}}`
	rulesFile := writeTemp(t, "rules.json", "\n"+rules+"\n")

	for _, args := range [][]string{
		{"--rules", rules, "--description", "billing app", "--token", "ROOT"},
		{"--rules", rulesFile, "--description", "billing app", "--token", "ROOT"},
	} {
		code, stdout, stderr := runCLI(t, append([]string{"acl", "token", "create"}, args...)...)
		if code != 0 || !strings.Contains(stdout, "t-app") || !strings.Contains(stdout, "APPSECRET") {
			t.Fatalf("%v: exit %d, stdout %q, stderr %q", args, code, stdout, stderr)
		}
		if tr.last() != "ROOT" {
			t.Errorf("token sent %q, want ROOT", tr.last())
		}
		var body struct {
			Description string          `json:"description"`
			Rules       json.RawMessage `json:"rules"`
			Management  bool            `json:"management"`
		}
		if err := json.Unmarshal(fa.body("PUT /v1/acl/tokens"), &body); err != nil {
			t.Fatal(err)
		}
		if body.Description != "billing app" || string(body.Rules) != rules || body.Management {
			t.Errorf("body %s", fa.body("PUT /v1/acl/tokens"))
		}
	}

	code, _, _ := runCLI(t, "acl", "token", "create", "--management", "--id", "ops", "--secret", "OPS-SECRET", "--description", "ops")
	if code != 0 {
		t.Fatalf("create --management: exit %d", code)
	}
	var body map[string]any
	json.Unmarshal(fa.body("PUT /v1/acl/tokens"), &body)
	if body["management"] != true || body["id"] != "ops" || body["secret"] != "OPS-SECRET" || body["rules"] != nil {
		t.Errorf("create --management body %v", body)
	}

	// --out --if-needed: made once, then left alone.
	out := filepath.Join(t.TempDir(), "app.token")
	if code, stdout, stderr := runCLI(t, "acl", "token", "create", "--rules", rules, "--out", out, "--if-needed", "--format", "json"); code != 0 || strings.Contains(stdout, "APPSECRET") {
		t.Fatalf("create --out: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if b, _ := os.ReadFile(out); strings.TrimSpace(string(b)) != "APPSECRET" {
		t.Fatalf("%s holds %q", out, b)
	}
	n := len(tr.seen)
	if code, _, _ := runCLI(t, "acl", "token", "create", "--rules", rules, "--out", out, "--if-needed"); code != 0 || len(tr.seen) != n {
		t.Errorf("create --if-needed with the file there: exit %d, %d more requests", code, len(tr.seen)-n)
	}

	for _, tt := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{}, "--rules is required"},
		{[]string{"--rules", `{"service":"admin"}`}, `access "admin"`},
		{[]string{"--rules", `{"kv":"read"}`}, `unknown resource "kv"`},
		{[]string{"--rules", `{"lease":"write","lease":"read"}`}, "appears twice"},
		{[]string{"--rules", filepath.Join(t.TempDir(), "missing.json")}, "--rules"},
		{[]string{"--management", "--rules", rules}, "no --rules"},
		{[]string{"--rules", rules, "--if-needed"}, "--if-needed needs --out"},
		{[]string{"--rules", rules, "--id", "anonymous"}, "acl token update anonymous"},
		{[]string{"--rules", rules, "--secret", "has space"}, "--secret holds a space"},
	} {
		code, _, stderr := runCLI(t, append([]string{"acl", "token", "create"}, tt.args...)...)
		if code != exitUsage {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", tt.args, code, stderr)
			continue
		}
		assertOneErrorLine(t, stderr, tt.wantErr)
	}
}

func TestCLI_aclTokenManage(t *testing.T) {
	clearTokenEnv(t)
	t.Setenv("SIDECAR_TOKEN", "ROOT")
	fa := newFakeAgent(t, map[string]http.HandlerFunc{
		"GET /v1/acl/tokens": jsonReply(200, `[{"id":"t-b","description":"billing app","rules":{"lease":{"":"write"}}},
			{"id":"anonymous","rules":{"service":{"":"read"}}},{"id":"t-a","management":true,"description":"bootstrap"}]`),
		"GET /v1/acl/tokens/t-b":       jsonReply(200, `{"id":"t-b","description":"billing app","rules":{"lease":{"":"write"}}}`),
		"GET /v1/acl/tokens/t-a":       jsonReply(200, `{"id":"t-a","management":true}`),
		"GET /v1/acl/tokens/anonymous": jsonReply(404, `{"error":"no token \"anonymous\""}`),
		"DELETE /v1/acl/tokens/t-b":    jsonReply(200, `{}`),
		"DELETE /v1/acl/tokens/t-x":    jsonReply(404, `{"error":"no token \"t-x\""}`),
		"PUT /v1/acl/tokens":           jsonReply(200, `{"id":"t-b"}`),
		"GET /v1/acl/tokens/t-denied":  jsonReply(403, `{"error":"permission denied: acl read"}`),
	})

	code, stdout, _ := runCLI(t, "acl", "token", "list")
	if code != 0 || !inOrder(stdout, "ID", "KIND", "DESCRIPTION", "anonymous", "anonymous", "t-a", "management", "bootstrap", "t-b", "rules", "billing app") {
		t.Errorf("token list: exit %d, stdout:\n%s", code, stdout)
	}
	code, stdout, _ = runCLI(t, "acl", "token", "list", "--json")
	var list []map[string]any
	if code != 0 || json.Unmarshal([]byte(stdout), &list) != nil || len(list) != 3 || list[0]["id"] != "anonymous" {
		t.Errorf("token list --json: exit %d, stdout:\n%s", code, stdout)
	}

	code, stdout, _ = runCLI(t, "acl", "token", "read", "t-b")
	if code != 0 || !inOrder(stdout, "id", "t-b", "kind", "rules", "description", "billing app", "rules:", `"lease"`, `"write"`) {
		t.Errorf("token read: exit %d, stdout:\n%s", code, stdout)
	}
	code, _, stderr := runCLI(t, "acl", "token", "read", "t-denied")
	if code != exitFailure {
		t.Errorf("token read t-denied: exit %d, want 1", code)
	}
	assertOneErrorLine(t, stderr, "acl token read t-denied: 403 Forbidden: permission denied: acl read")

	if code, _, stderr := runCLI(t, "acl", "token", "delete", "t-b"); code != 0 {
		t.Errorf("token delete: exit %d (%s)", code, stderr)
	}
	code, _, stderr = runCLI(t, "acl", "token", "delete", "t-x")
	if code != exitFailure {
		t.Errorf("token delete t-x: exit %d, want 1", code)
	}
	assertOneErrorLine(t, stderr, "acl token delete t-x: 404 Not Found")

	// update keeps the description unless given one; anonymous may not
	// exist yet.
	newRules := `{"lease":"write","lock":{"billing-":"write"}}`
	code, stdout, stderr = runCLI(t, "acl", "token", "update", "t-b", "--rules", newRules)
	if code != 0 || stdout != "t-b\n" {
		t.Fatalf("token update: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	var body map[string]any
	json.Unmarshal(fa.body("PUT /v1/acl/tokens"), &body)
	if body["id"] != "t-b" || body["description"] != "billing app" || body["secret"] != nil {
		t.Errorf("token update body %v", body)
	}
	code, _, stderr = runCLI(t, "acl", "token", "update", "anonymous", "--rules", `{"service":"read","node":"read","election":"read","lock":"read"}`)
	if code != 0 {
		t.Fatalf("token update anonymous: exit %d (%s)", code, stderr)
	}
	json.Unmarshal(fa.body("PUT /v1/acl/tokens"), &body)
	if body["id"] != "anonymous" {
		t.Errorf("token update anonymous body %v", body)
	}
	code, _, stderr = runCLI(t, "acl", "token", "update", "t-a", "--rules", newRules)
	if code != exitFailure {
		t.Errorf("token update of a management token: exit %d, want 1", code)
	}
	assertOneErrorLine(t, stderr, "management token")

	for _, args := range [][]string{
		{"acl", "token", "read"},
		{"acl", "token", "read", "a", "b"},
		{"acl", "token", "delete"},
		{"acl", "token", "update", "t-b"},
		{"acl", "token", "update", "--rules", newRules},
		{"acl", "token", "list", "extra"},
	} {
		if code, _, stderr := runCLI(t, args...); code != exitUsage {
			t.Errorf("%v: exit %d, want 2 (stderr %q)", args, code, stderr)
		}
	}
}

// inOrder reports whether s holds every w, in order.
func inOrder(s string, ws ...string) bool {
	for _, w := range ws {
		i := strings.Index(s, w)
		if i < 0 {
			return false
		}
		s = s[i+len(w):]
	}
	return true
}

func TestConfig_aclSettings(t *testing.T) {
	setupConfigTest(t)
	c, err := parseAgentConfig([]string{"--acl-default-policy", "deny", "--acl-dns-token", "DNS-SECRET"})
	if err != nil || c.ACLDefaultPolicy != "deny" || c.ACLDNSToken != "DNS-SECRET" {
		t.Fatalf("parse: %v, %+v", err, c)
	}
	t.Setenv("SIDECAR_ACL_DEFAULT_POLICY", "deny")
	if c, err := parseAgentConfig(nil); err != nil || c.ACLDefaultPolicy != "deny" {
		t.Fatalf("SIDECAR_ACL_DEFAULT_POLICY=deny: %v, %q", err, c.ACLDefaultPolicy)
	}
	if _, err := parseAgentConfig([]string{"--acl-default-policy", "maybe"}); err == nil || !strings.Contains(err.Error(), "is not allow or deny") {
		t.Errorf("--acl-default-policy maybe: %v", err)
	}
}
