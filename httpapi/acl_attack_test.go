package httpapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/sidecarhq/sidecar/agent"
	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/api"
)

// A made-up secret and the secret of a deleted token are refused (403),
// under either policy: an unknown token never falls back to the anonymous
// rules, which under allow could do nearly everything. A malformed token
// header is 400. None of them changes anything.
func TestACL_forgedAndDeletedTokens(t *testing.T) {
	for _, policy := range []string{"allow", "deny"} {
		t.Run(policy, func(t *testing.T) {
			a := agenttest.Start(t, func(c *agent.Config) { c.ACLDefaultPolicy = policy })
			mgmt := bootstrap(t, a)
			tok := createToken(t, a, mgmt, `{"rules":{"service":"write"}}`)
			mustOK(t, doAs(t, tok.Secret, "PUT", a.URL+"/v1/services", `{"id":"web-1","name":"web","port":80}`))
			mustOK(t, doAs(t, mgmt, "DELETE", a.URL+"/v1/acl/tokens/"+tok.ID, ""))
			for name, secret := range map[string]string{"forged": "Zm9yZ2VkLXNlY3JldC0xMjM0", "deleted": tok.Secret} {
				before := a.FSM().Digest()
				refused(t, a, before, doAs(t, secret, "PUT", a.URL+"/v1/services", `{"id":"web-2","name":"web","port":81}`), name+" register")
				refused(t, a, before, doAs(t, secret, "DELETE", a.URL+"/v1/services/web-1", ""), name+" deregister")
				refused(t, a, before, doAs(t, secret, "GET", a.URL+"/v1/services/web", ""), name+" read")
			}
			before := a.FSM().Digest()
			for _, h := range []http.Header{
				{"Authorization": {"Basic dXNlcjpwYXNz"}},
				{api.HeaderToken: {"two words"}},
				{api.HeaderToken: {mgmt}, "Authorization": {"Bearer other-secret-entirely"}},
			} {
				req, _ := http.NewRequest("PUT", a.URL+"/v1/services", strings.NewReader(`{"id":"web-3","name":"web","port":83}`))
				req.Header = h
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusBadRequest {
					t.Fatalf("token headers %v: %d, want 400", h, resp.StatusCode)
				}
			}
			if a.FSM().Digest() != before {
				t.Fatal("a malformed token changed the registry")
			}
			// The bearer form works like the header.
			req, _ := http.NewRequest("GET", a.URL+"/v1/acl/tokens", nil)
			req.Header.Set("Authorization", "Bearer "+mgmt)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("bearer management token: %d", resp.StatusCode)
			}
		})
	}
}

// Restoring a snapshot replaces the whole registry (tokens included): a
// token that may write every service but not operator is refused and the
// registry stays as it is; an operator token restores.
func TestACL_restoreIsOperatorOnly(t *testing.T) {
	a := agenttest.Start(t, func(c *agent.Config) { c.ACLDefaultPolicy = "deny" })
	mgmt := bootstrap(t, a)
	svc := createToken(t, a, mgmt, `{"rules":{"service":{"":"write"},"node":"read"}}`)
	op := createToken(t, a, mgmt, `{"rules":{"operator":"write"}}`)
	old := doAs(t, mgmt, "GET", a.URL+"/v1/snapshot", "")
	mustOK(t, old)
	mustOK(t, doAs(t, svc.Secret, "PUT", a.URL+"/v1/services", `{"id":"web-1","name":"web","port":80}`))
	refused(t, a, a.FSM().Digest(), doAs(t, svc.Secret, "PUT", a.URL+"/v1/snapshot", string(old.body)), "restore with a service token")
	refused(t, a, a.FSM().Digest(), doAs(t, svc.Secret, "GET", a.URL+"/v1/snapshot", ""), "save with a service token")
	refused(t, a, a.FSM().Digest(), doAs(t, "", "PUT", a.URL+"/v1/snapshot", string(old.body)), "restore without a token")
	mustOK(t, doAs(t, op.Secret, "PUT", a.URL+"/v1/snapshot", string(old.body)))
	if r := doAs(t, mgmt, "GET", a.URL+"/v1/services/web", ""); strings.Contains(string(r.body), "web-1") {
		t.Fatalf("the operator's restore did not take the registry back: %s", r.body)
	}
}

// Bootstrap works once; tokens are created, read, updated and deleted
// through the API, rules are checked and stored canonical, and neither
// secrets nor their hashes are ever shown again.
func TestACL_tokens(t *testing.T) {
	a := agenttest.Start(t, func(c *agent.Config) { c.ACLDefaultPolicy = "deny" })
	mgmt := bootstrap(t, a)
	before := a.FSM().Digest()
	if r := do(t, "PUT", a.URL+"/v1/acl/bootstrap", ""); r.code != http.StatusConflict || a.FSM().Digest() != before {
		t.Fatalf("second bootstrap: %d %s", r.code, r.body)
	}
	for body, want := range map[string]string{
		`{"rules":{"servise":"read"}}`:                 "unknown resource",
		`{"rules":{"service":"admin"}}`:                `not none, read or write`,
		`{"rules":{"service":{"we b":"read"}}}`:        "prefix",
		`{"rules":{"lease":"write"},"secret":"short"}`: "shorter than 16",
		`{"rules":{},"secret":"has a space in it ok"}`: "secret",
		`{"id":"bad id!","description":"x"}`:           "token id",
		`{"id":"anonymous","management":true}`:         "anonymous",
	} {
		r := doAs(t, mgmt, "PUT", a.URL+"/v1/acl/tokens", body)
		if r.code/100 != 4 || !strings.Contains(string(r.body), want) {
			t.Errorf("%s: %d %s, want a 4xx saying %q", body, r.code, r.body, want)
		}
		if a.FSM().Digest() != before {
			t.Fatalf("%s: a refused token changed the registry", body)
		}
	}
	tok := createToken(t, a, mgmt, `{"description":"dns","rules":{"lease":"write","service":{"web":"read"}},"secret":"chosen-secret-0123456789"}`)
	if tok.Secret != "chosen-secret-0123456789" {
		t.Fatalf("chosen secret answered as %q", tok.Secret)
	}
	r := doAs(t, mgmt, "GET", a.URL+"/v1/acl/tokens/"+tok.ID, "")
	mustOK(t, r)
	var got api.ACLToken
	json.Unmarshal(r.body, &got)
	if string(got.Rules) != `{"lease":{"":"write"},"service":{"web":"read"}}` || got.Description != "dns" || got.CreateIndex == 0 {
		t.Fatalf("token as read: %s", r.body)
	}
	list := doAs(t, mgmt, "GET", a.URL+"/v1/acl/tokens", "")
	mustOK(t, list)
	if strings.Contains(string(list.body), "secret") || strings.Contains(string(list.body), tok.Secret) {
		t.Fatalf("the token list shows secrets or hashes: %s", list.body)
	}
	// The chosen secret works, within its rules.
	mustOK(t, doAs(t, tok.Secret, "GET", a.URL+"/v1/services/web", ""))
	refused(t, a, a.FSM().Digest(), doAs(t, tok.Secret, "GET", a.URL+"/v1/services/db", ""), "read outside its rules")
	// An update changes the rules, not the secret, and answers no secret.
	r = doAs(t, mgmt, "PUT", a.URL+"/v1/acl/tokens", `{"id":"`+tok.ID+`","description":"dns","rules":{"service":"read"}}`)
	mustOK(t, r)
	if strings.Contains(string(r.body), "secret") {
		t.Fatalf("an update answered a secret: %s", r.body)
	}
	mustOK(t, doAs(t, tok.Secret, "GET", a.URL+"/v1/services/db", ""))
	// The anonymous rules are set like any token's.
	refused(t, a, a.FSM().Digest(), do(t, "GET", a.URL+"/v1/services/web", ""), "anonymous read under deny")
	mustOK(t, doAs(t, mgmt, "PUT", a.URL+"/v1/acl/tokens", `{"id":"anonymous","rules":{"service":{"web":"read"}}}`))
	mustOK(t, do(t, "GET", a.URL+"/v1/services/web", ""))
	// A token with acl:read reads tokens but cannot make one.
	reader := createToken(t, a, mgmt, `{"rules":{"acl":"read"}}`)
	mustOK(t, doAs(t, reader.Secret, "GET", a.URL+"/v1/acl/tokens", ""))
	refused(t, a, a.FSM().Digest(), doAs(t, reader.Secret, "PUT", a.URL+"/v1/acl/tokens", `{"rules":{}}`), "create with acl:read")
	if r := doAs(t, mgmt, "DELETE", a.URL+"/v1/acl/tokens/t-nope", ""); r.code != http.StatusNotFound {
		t.Fatalf("delete unknown token: %d %s", r.code, r.body)
	}
}

// The Go client sends its token and manages tokens.
func TestACL_client(t *testing.T) {
	a := agenttest.Start(t, func(c *agent.Config) { c.ACLDefaultPolicy = "deny" })
	c, err := api.NewClient(a.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	ctx := context.Background()
	boot, err := c.ACLBootstrap(ctx)
	if err != nil || boot.Secret == "" {
		t.Fatalf("bootstrap: %v %+v", err, boot)
	}
	if _, err := c.ACLBootstrap(ctx); err == nil || !strings.Contains(err.Error(), "409") {
		t.Fatalf("second bootstrap: %v", err)
	}
	if _, err := c.ACLTokens(ctx); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("tokens without a token: %v", err)
	}
	c.Token = boot.Secret
	tok, err := c.ACLCreateToken(ctx, api.ACLTokenRequest{Description: "web", Rules: json.RawMessage(`{"service":{"web":"write"}}`)})
	if err != nil {
		t.Fatal(err)
	}
	list, err := c.ACLTokens(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("tokens: %v %+v", err, list)
	}
	one, err := c.ACLToken(ctx, tok.ID)
	if err != nil || one.Description != "web" || one.Secret != "" {
		t.Fatalf("token: %v %+v", err, one)
	}
	web, _ := api.NewClient(a.HTTPAddr())
	defer web.CloseIdleConnections()
	web.Token = tok.Secret
	if _, err := web.Register(ctx, api.ServiceRegistration{ID: "web-1", Name: "web", Port: 80}); err != nil {
		t.Fatalf("register with a web token: %v", err)
	}
	if _, err := web.Register(ctx, api.ServiceRegistration{ID: "db-1", Name: "db", Port: 5432}); err == nil {
		t.Fatal("registered db with a web token")
	}
	if err := c.ACLDeleteToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	if err := web.Deregister(ctx, "web-1"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("deregister with a deleted token: %v", err)
	}
}
