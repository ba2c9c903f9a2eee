package httpapi_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/sidecarhq/sidecar/agent"
	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/api"
)

func b64(b byte, n int) string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{b}, n)) }

// keyringOf reads GET /v1/operator/keyring.
func keyringOf(t *testing.T, url string) api.KeyringResponse {
	t.Helper()
	r := do(t, "GET", url+"/v1/operator/keyring", "")
	mustOK(t, r)
	var kr api.KeyringResponse
	if err := json.Unmarshal(r.body, &kr); err != nil {
		t.Fatalf("keyring answer %s: %v", r.body, err)
	}
	return kr
}

// Bad input and refused changes get a 4xx {"error"} and leave the keyring
// as it was; good ones answer 200 with every member's keys.
func TestAPI_keyring(t *testing.T) {
	k1, k2, k3 := b64(1, 32), b64(2, 16), b64(3, 24)
	a := agenttest.Start(t, func(c *agent.Config) { c.EncryptKey = bytes.Repeat([]byte{1}, 32) })
	u := a.URL

	kr := keyringOf(t, u)
	if kr.Members != 1 || len(kr.Keys) != 1 || kr.Keys[0] != (api.KeyringKey{Key: k1, Members: 1, Primary: 1}) || len(kr.Failed) != 0 {
		t.Fatalf("initial keyring %+v", kr)
	}
	secret := b64(9, 20) // a key of no AES size: must not be echoed
	huge := `{"install":"` + strings.Repeat("A", 1<<20) + `"}`
	for _, c := range []struct {
		name, body string
		want       int
	}{
		{"malformed json", `{"install":`, 400},
		{"empty body", ``, 400},
		{"no operation", `{}`, 400},
		{"empty key", `{"install":""}`, 400},
		{"two operations", `{"install":"` + k2 + `","use":"` + k2 + `"}`, 400},
		{"unknown operation", `{"rotate":"` + k2 + `"}`, 400},
		{"key not a string", `{"install":32}`, 400},
		{"key not base64", `{"install":"not a key"}`, 400},
		{"key of 20 bytes", `{"install":"` + secret + `"}`, 400},
		{"trailing data", `{"install":"` + k2 + `"} {}`, 400},
		{"body over 1 MiB", huge, 413},
		{"use of a key not installed", `{"use":"` + k2 + `"}`, 409},
		{"remove of the primary", `{"remove":"` + k1 + `"}`, 409},
		{"remove of a key nobody holds", `{"remove":"` + k3 + `"}`, 404},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := do(t, "PUT", u+"/v1/operator/keyring", c.body)
			if r.code != c.want {
				t.Fatalf("status %d, want %d (%s)", r.code, c.want, r.body)
			}
			var e api.Error
			if err := json.Unmarshal(r.body, &e); err != nil || e.Error == "" {
				t.Fatalf("body %q is not {\"error\": ...}", r.body)
			}
			if strings.Contains(e.Error, secret) {
				t.Fatalf("error repeats the key: %s", e.Error)
			}
			if got := keyringOf(t, u); !slices.Equal(got.Keys, kr.Keys) {
				t.Fatalf("keyring changed by a refused request: %+v", got.Keys)
			}
		})
	}
	if r := do(t, "DELETE", u+"/v1/operator/keyring", ""); r.code != http.StatusMethodNotAllowed {
		t.Fatalf("DELETE: %d %s", r.code, r.body)
	}

	// The rotation, step by step, through the Go client.
	c, err := api.NewClient(u)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	steps := []struct {
		run  func() (*api.KeyringResponse, error)
		want []string // the member's keys afterwards
	}{
		{func() (*api.KeyringResponse, error) { return c.KeyringInstall(ctx, k2) }, []string{k1, k2}},
		{func() (*api.KeyringResponse, error) { return c.KeyringInstall(ctx, k2) }, []string{k1, k2}}, // again: nothing new
		{func() (*api.KeyringResponse, error) { return c.KeyringUse(ctx, k2) }, []string{k2, k1}},
		{func() (*api.KeyringResponse, error) { return c.KeyringRemove(ctx, k1) }, []string{k2}},
	}
	for i, s := range steps {
		resp, err := s.run()
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if len(resp.Nodes) != 1 || resp.Nodes[0].Node != "dev" || !slices.Equal(resp.Nodes[0].Keys, s.want) || len(resp.Failed) != 0 {
			t.Fatalf("step %d (%s): %+v, want dev holding %v", i, resp.Op, resp, s.want)
		}
	}
	got, err := c.Keyring(ctx)
	if err != nil || len(got.Keys) != 1 || got.Keys[0] != (api.KeyringKey{Key: k2, Members: 1, Primary: 1}) {
		t.Fatalf("keyring after the rotation: %+v, %v", got, err)
	}
}

// Without --encrypt there is no keyring: 400 with a clear error.
func TestAPI_keyring_noEncryption(t *testing.T) {
	a := agenttest.Start(t, nil)
	for _, c := range []struct{ method, body string }{
		{"GET", ""},
		{"PUT", `{"install":"` + b64(1, 32) + `"}`},
	} {
		r := do(t, c.method, a.URL+"/v1/operator/keyring", c.body)
		var e api.Error
		if r.code != http.StatusBadRequest || json.Unmarshal(r.body, &e) != nil || !strings.Contains(e.Error, "--encrypt") {
			t.Fatalf("%s without encryption: %d %s; want 400 naming --encrypt", c.method, r.code, r.body)
		}
	}
}
