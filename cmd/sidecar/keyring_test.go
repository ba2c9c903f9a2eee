package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/sidecarhq/sidecar/api"
)

func TestCLI_keyring(t *testing.T) {
	k1 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32))
	k2 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{2}, 16))
	list := `{"op":"list","members":3,"keys":[{"key":"` + k1 + `","members":3,"primary":3},{"key":"` + k2 + `","members":2,"primary":0}],
		"nodes":[{"node":"a","keys":["` + k1 + `","` + k2 + `"]},{"node":"b","keys":["` + k1 + `","` + k2 + `"]},{"node":"c","keys":["` + k1 + `"]}],"failed":{}}`
	partial := `{"op":"install","members":3,"keys":[{"key":"` + k1 + `","members":2,"primary":2},{"key":"` + k2 + `","members":2,"primary":0}],
		"nodes":[{"node":"a","keys":["` + k1 + `","` + k2 + `"]},{"node":"b","keys":["` + k1 + `","` + k2 + `"]},{"node":"c","keys":[],"error":"no answer within 5s"}],
		"failed":{"c":"no answer within 5s"}}`
	var fa *fakeAgent
	fa = newFakeAgent(t, map[string]http.HandlerFunc{
		"GET /v1/operator/keyring": jsonReply(200, list),
		"PUT /v1/operator/keyring": func(w http.ResponseWriter, r *http.Request) {
			var req api.KeyringRequest
			json.Unmarshal(fa.body("PUT /v1/operator/keyring"), &req) // the fake has read the body
			switch {
			case req.Install != "":
				jsonReply(200, partial)(w, r)
			case req.Use != "":
				jsonReply(409, `{"error":"keyring use: discovery: key not installed on every member: missing on c; install it first"}`)(w, r)
			default:
				jsonReply(200, strings.Replace(list, `"list"`, `"remove"`, 1))(w, r)
			}
		},
	})

	code, out, errOut := runCLI(t, "keyring", "list")
	if code != exitOK || errOut != "" {
		t.Fatalf("list: exit %d, stderr %q", code, errOut)
	}
	for _, want := range []string{"KEY MEMBERS PRIMARY", k1 + " 3/3 yes", k2 + " 2/3 -"} {
		if !strings.Contains(strings.Join(strings.Fields(out), " "), want) {
			t.Errorf("list output lacks %q:\n%s", want, out)
		}
	}

	// Failed on a member: the table, then one line and exit 1.
	code, out, errOut = runCLI(t, "keyring", "install", k2)
	if code != exitFailure || !strings.Contains(out, "FAILED") {
		t.Fatalf("install, one member failing: exit %d, stdout %q", code, out)
	}
	assertOneErrorLine(t, errOut, "keyring install: failed on 1 of 3 members: c (no answer within 5s)")
	if got := string(fa.body("PUT /v1/operator/keyring")); got != `{"install":"`+k2+`"}` {
		t.Errorf("install sent %s", got)
	}

	// A refusal is one line and exit 1.
	code, _, errOut = runCLI(t, "keyring", "use", k2)
	if code != exitFailure {
		t.Fatalf("refused use: exit %d", code)
	}
	assertOneErrorLine(t, errOut, "409 Conflict: keyring use: discovery: key not installed on every member: missing on c")

	// The key read from stdin.
	var stdout, stderr bytes.Buffer
	code = run(context.Background(), []string{"keyring", "remove", "-", "--json"}, strings.NewReader(k2+"\n"), &stdout, &stderr)
	if code != exitOK {
		t.Fatalf("remove -: exit %d, stderr %q", code, stderr.String())
	}
	if got := string(fa.body("PUT /v1/operator/keyring")); got != `{"remove":"`+k2+`"}` {
		t.Errorf("remove - sent %s", got)
	}
	var resp api.KeyringResponse
	if err := json.Unmarshal(stdout.Bytes(), &resp); err != nil || resp.Op != "remove" {
		t.Errorf("--json printed %q (%v)", stdout.String(), err)
	}
}

func TestCLI_keyring_usage(t *testing.T) {
	t.Setenv("SIDECAR_HTTP_ADDR", "")
	secret := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 20))
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"keyring"}, "keyring: want list, install KEY, use KEY or remove KEY"},
		{[]string{"keyring", "rotate"}, `keyring: unknown operation "rotate"`},
		{[]string{"keyring", "list", "extra"}, `keyring: unexpected argument "extra"`},
		{[]string{"keyring", "install"}, "keyring install: missing KEY"},
		{[]string{"keyring", "use", "a", "b"}, `keyring use: unexpected argument "b"`},
		{[]string{"keyring", "remove", secret}, "keyring remove: KEY must be the base64 encoding of 16, 24 or 32 bytes"},
		{[]string{"keyring", "install", "-"}, "keyring install: KEY must be"},
		{[]string{"keyring", "list", "--nope"}, "keyring: flag provided but not defined: -nope"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, out, errOut := runCLI(t, tt.args...)
			if code != exitUsage {
				t.Errorf("exit code %d, want 2 (stderr %q)", code, errOut)
			}
			assertOneErrorLine(t, errOut, tt.want)
			if strings.Contains(errOut, secret) {
				t.Errorf("stderr repeats the key: %q", errOut)
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
		})
	}
	if code, out, _ := runCLI(t, "keyring", "--help"); code != exitOK || !strings.Contains(out, "Usage: sidecar keyring list|install|use|remove") {
		t.Errorf("keyring --help: exit %d, %q", code, out)
	}
}
