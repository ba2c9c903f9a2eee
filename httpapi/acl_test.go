package httpapi_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/sidecarhq/sidecar/acl"
	"github.com/sidecarhq/sidecar/agent"
	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/httpapi"
)

// doAs sends a request with a token secret ("" for none).
func doAs(t *testing.T, secret, method, url, body string) reply {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if secret != "" {
		req.Header.Set(api.HeaderToken, secret)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, resp.Header, b}
}

// rulesOf grants one access on every resource.
func rulesOf(access string) string {
	var parts []string
	for _, r := range acl.Resources {
		parts = append(parts, `"`+string(r)+`":"`+access+`"`)
	}
	return "{" + strings.Join(parts, ",") + "}"
}

// bootstrap makes the agent's management token and returns its secret.
func bootstrap(t *testing.T, a *agenttest.Agent) string {
	t.Helper()
	r := do(t, "PUT", a.URL+"/v1/acl/bootstrap", "")
	mustOK(t, r)
	var tok api.ACLToken
	if err := json.Unmarshal(r.body, &tok); err != nil || tok.ID == "" || tok.Secret == "" {
		t.Fatalf("bootstrap answer %s", r.body)
	}
	return tok.Secret
}

// createToken makes a token with rules and returns it (with its secret).
func createToken(t *testing.T, a *agenttest.Agent, mgmt, body string) api.ACLToken {
	t.Helper()
	r := doAs(t, mgmt, "PUT", a.URL+"/v1/acl/tokens", body)
	mustOK(t, r)
	var tok api.ACLToken
	if err := json.Unmarshal(r.body, &tok); err != nil || tok.ID == "" || tok.Secret == "" {
		t.Fatalf("token answer %s", r.body)
	}
	return tok
}

// refused checks a 403 with a JSON error that changed nothing.
func refused(t *testing.T, a *agenttest.Agent, before string, r reply, what string) {
	t.Helper()
	if r.code != http.StatusForbidden {
		t.Fatalf("%s: %d %s, want 403", what, r.code, r.body)
	}
	var e api.Error
	if err := json.Unmarshal(r.body, &e); err != nil || e.Error == "" {
		t.Fatalf("%s: body %q is not {\"error\": ...}", what, r.body)
	}
	if a.FSM().Digest() != before {
		t.Fatalf("%s: a refused request changed the registry", what)
	}
}

// aclEnv is one agent under one policy with a token of each kind.
type aclEnv struct {
	a      *agenttest.Agent
	mgmt   string
	noneID string
	// Set by a case's setup for its request.
	lease, victim, snapshot string
	token                   uint64
}

// The caller kinds of TestACL_routes, with what each may do.
var callerKinds = []struct {
	name    string
	allowed func(policy string, res acl.Resource, access acl.Access) bool
}{
	{"no token", func(policy string, res acl.Resource, _ acl.Access) bool { return policy == "allow" && res != acl.ACL }},
	{"no permission", func(string, acl.Resource, acl.Access) bool { return false }},
	{"read", func(_ string, _ acl.Resource, access acl.Access) bool { return access == acl.Read }},
	{"write", func(string, acl.Resource, acl.Access) bool { return true }},
	{"management", func(string, acl.Resource, acl.Access) bool { return true }},
}

// routeCase is one route of SPEC with what it needs, stated here again
// (not read from the server's table, which is what is tested).
type routeCase struct {
	pattern string
	method  string
	path    func(e *aclEnv) string
	body    func(e *aclEnv) string
	open    bool
	res     acl.Resource
	access  acl.Access
	// ok is the answer once allowed.
	ok int
	// setup prepares the request, acting as the caller when it is allowed
	// (what it creates is then the caller's own) and as management else.
	setup func(t *testing.T, e *aclEnv, as string)
}

func fixed(s string) func(*aclEnv) string { return func(*aclEnv) string { return s } }

func routeCases() []routeCase {
	mustAs := func(t *testing.T, e *aclEnv, as, method, path, body string) reply {
		t.Helper()
		r := doAs(t, as, method, e.a.URL+path, body)
		if r.code/100 != 2 {
			t.Fatalf("setup %s %s: %d %s", method, path, r.code, r.body)
		}
		return r
	}
	return []routeCase{
		{pattern: "GET /healthz", method: "GET", path: fixed("/healthz"), open: true, ok: 200},
		{pattern: "GET /readyz", method: "GET", path: fixed("/readyz"), open: true, ok: 200},
		{pattern: "GET /metrics", method: "GET", path: fixed("/metrics"), res: acl.Operator, access: acl.Read, ok: 200},
		{pattern: "GET /v1/status", method: "GET", path: fixed("/v1/status"), res: acl.Node, access: acl.Read, ok: 200},
		{pattern: "GET /v1/members", method: "GET", path: fixed("/v1/members"), res: acl.Node, access: acl.Read, ok: 200},
		{pattern: "PUT /v1/services", method: "PUT", path: fixed("/v1/services"),
			body: fixed(`{"id":"web-1","name":"web","port":80}`), res: acl.Service, access: acl.Write, ok: 200},
		{pattern: "DELETE /v1/services/{id}", method: "DELETE", path: fixed("/v1/services/web-2"), res: acl.Service, access: acl.Write, ok: 200,
			setup: func(t *testing.T, e *aclEnv, as string) {
				mustAs(t, e, e.mgmt, "PUT", "/v1/services", `{"id":"web-2","name":"web","port":81}`)
			}},
		// A listing is filtered, never refused: checked apart below.
		{pattern: "GET /v1/services", method: "GET", path: fixed("/v1/services"), res: acl.Service, access: acl.Read, ok: 200, open: true},
		{pattern: "GET /v1/services/{name}", method: "GET", path: fixed("/v1/services/web"), res: acl.Service, access: acl.Read, ok: 200},
		{pattern: "PUT /v1/checks/{check_id}/{status}", method: "PUT", path: fixed("/v1/checks/hb3/pass"), res: acl.Service, access: acl.Write, ok: 200,
			setup: func(t *testing.T, e *aclEnv, as string) {
				mustAs(t, e, e.mgmt, "PUT", "/v1/services", `{"id":"web-3","name":"web","port":83,"checks":[{"id":"hb3","type":"ttl","ttl":"1h"}]}`)
			}},
		{pattern: "POST /v1/leases", method: "POST", path: fixed("/v1/leases"), body: fixed(`{"ttl":"1h"}`), res: acl.Lease, access: acl.Write, ok: 200},
		{pattern: "PUT /v1/leases/{id}/keepalive", method: "PUT", path: func(e *aclEnv) string { return "/v1/leases/" + e.lease + "/keepalive" },
			res: acl.Lease, access: acl.Write, ok: 200, setup: grantLease(mustAs)},
		{pattern: "DELETE /v1/leases/{id}", method: "DELETE", path: func(e *aclEnv) string { return "/v1/leases/" + e.lease },
			res: acl.Lease, access: acl.Write, ok: 200, setup: grantLease(mustAs)},
		{pattern: "PUT /v1/locks/{name}", method: "PUT", path: fixed("/v1/locks/job"), body: fixed(`{}`), res: acl.Lock, access: acl.Write, ok: 200,
			setup: func(t *testing.T, e *aclEnv, as string) { doAs(t, e.mgmt, "DELETE", e.a.URL+"/v1/locks/job", "") }},
		{pattern: "DELETE /v1/locks/{name}", method: "DELETE", path: fixed("/v1/locks/job"), res: acl.Lock, access: acl.Write, ok: 200,
			setup: func(t *testing.T, e *aclEnv, as string) {
				doAs(t, e.mgmt, "DELETE", e.a.URL+"/v1/locks/job", "")
				mustAs(t, e, as, "PUT", "/v1/locks/job", `{}`)
			}},
		// Listings are filtered, never refused, like GET /v1/services.
		{pattern: "GET /v1/locks", method: "GET", path: fixed("/v1/locks"), res: acl.Lock, access: acl.Read, ok: 200, open: true,
			setup: func(t *testing.T, e *aclEnv, as string) { doAs(t, e.mgmt, "PUT", e.a.URL+"/v1/locks/job", `{}`) }},
		{pattern: "GET /v1/elections", method: "GET", path: fixed("/v1/elections"), res: acl.Election, access: acl.Read, ok: 200, open: true,
			setup: campaignAsManagement},
		{pattern: "GET /v1/locks/{name}", method: "GET", path: fixed("/v1/locks/job"), res: acl.Lock, access: acl.Read, ok: 200,
			setup: func(t *testing.T, e *aclEnv, as string) { doAs(t, e.mgmt, "PUT", e.a.URL+"/v1/locks/job", `{}`) }},
		{pattern: "PUT /v1/elections/{name}/campaign", method: "PUT", path: fixed("/v1/elections/db/campaign"),
			body: fixed(`{"candidate":"c1","value":"10.0.0.1:5432"}`), res: acl.Election, access: acl.Write, ok: 200,
			setup: func(t *testing.T, e *aclEnv, as string) {
				doAs(t, e.mgmt, "DELETE", e.a.URL+"/v1/elections/db/campaign?candidate=c1", "")
			}},
		{pattern: "DELETE /v1/elections/{name}/campaign", method: "DELETE", path: fixed("/v1/elections/db/campaign?candidate=c1"),
			res: acl.Election, access: acl.Write, ok: 200,
			setup: func(t *testing.T, e *aclEnv, as string) {
				doAs(t, e.mgmt, "DELETE", e.a.URL+"/v1/elections/db/campaign?candidate=c1", "")
				mustAs(t, e, as, "PUT", "/v1/elections/db/campaign", `{"candidate":"c1","value":"10.0.0.1:5432"}`)
			}},
		{pattern: "GET /v1/elections/{name}", method: "GET", path: fixed("/v1/elections/db"), res: acl.Election, access: acl.Read, ok: 200,
			setup: campaignAsManagement},
		{pattern: "GET /v1/elections/{name}/self", method: "GET", path: fixed("/v1/elections/db/self"), res: acl.Election, access: acl.Read, ok: 200,
			setup: campaignAsManagement},
		{pattern: "GET /v1/locks/{name}/fence", method: "GET", path: func(e *aclEnv) string { return fmt.Sprintf("/v1/locks/fj/fence?token=%d", e.token) },
			res: acl.Lock, access: acl.Read, ok: 200,
			setup: func(t *testing.T, e *aclEnv, as string) {
				var res api.LockResult
				json.Unmarshal(mustAs(t, e, e.mgmt, "PUT", "/v1/locks/fj", `{}`).body, &res)
				e.token = res.Token
			}},
		{pattern: "GET /v1/elections/{name}/fence", method: "GET", path: func(e *aclEnv) string { return fmt.Sprintf("/v1/elections/db/fence?token=%d", e.token) },
			res: acl.Election, access: acl.Read, ok: 200,
			setup: func(t *testing.T, e *aclEnv, as string) {
				campaignAsManagement(t, e, as)
				var info api.ElectionInfo
				json.Unmarshal(mustAs(t, e, e.mgmt, "GET", "/v1/elections/db", "").body, &info)
				e.token = info.Leader.Token
			}},
		// The caller campaigned c1 (it owns it), management c2, waiting.
		{pattern: "PUT /v1/elections/{name}/transfer", method: "PUT", path: fixed("/v1/elections/tx/transfer"),
			body: fixed(`{"from":"c1","to":"c2"}`), res: acl.Election, access: acl.Write, ok: 200,
			setup: func(t *testing.T, e *aclEnv, as string) {
				doAs(t, e.mgmt, "DELETE", e.a.URL+"/v1/elections/tx/campaign?candidate=c1", "")
				doAs(t, e.mgmt, "DELETE", e.a.URL+"/v1/elections/tx/campaign?candidate=c2", "")
				mustAs(t, e, as, "PUT", "/v1/elections/tx/campaign", `{"candidate":"c1","value":"10.0.0.1:5432"}`)
				mustAs(t, e, e.mgmt, "PUT", "/v1/elections/tx/campaign", `{"candidate":"c2","value":"10.0.0.2:5432"}`)
			}},
		{pattern: "GET /v1/snapshot", method: "GET", path: fixed("/v1/snapshot"), res: acl.Operator, access: acl.Write, ok: 200},
		{pattern: "PUT /v1/snapshot", method: "PUT", path: fixed("/v1/snapshot"), body: func(e *aclEnv) string { return e.snapshot },
			res: acl.Operator, access: acl.Write, ok: 200,
			setup: func(t *testing.T, e *aclEnv, as string) {
				e.snapshot = string(mustAs(t, e, e.mgmt, "GET", "/v1/snapshot", "").body)
			}},
		{pattern: "GET /v1/operator/keyring", method: "GET", path: fixed("/v1/operator/keyring"), res: acl.Operator, access: acl.Read, ok: 200},
		{pattern: "PUT /v1/operator/keyring", method: "PUT", path: fixed("/v1/operator/keyring"), body: fixed(`{"install":"` + b64(9, 32) + `"}`),
			res: acl.Operator, access: acl.Write, ok: 200},
		// Bootstrapped already: 409 for everyone, refused by the registry.
		{pattern: "PUT /v1/acl/bootstrap", method: "PUT", path: fixed("/v1/acl/bootstrap"), open: true, ok: 409},
		{pattern: "PUT /v1/acl/tokens", method: "PUT", path: fixed("/v1/acl/tokens"), body: fixed(`{"description":"made in a test","rules":{"lock":"read"}}`),
			res: acl.ACL, access: acl.Write, ok: 200},
		{pattern: "GET /v1/acl/tokens", method: "GET", path: fixed("/v1/acl/tokens"), res: acl.ACL, access: acl.Read, ok: 200},
		{pattern: "GET /v1/acl/tokens/{id}", method: "GET", path: func(e *aclEnv) string { return "/v1/acl/tokens/" + e.noneID },
			res: acl.ACL, access: acl.Read, ok: 200},
		{pattern: "DELETE /v1/acl/tokens/{id}", method: "DELETE", path: func(e *aclEnv) string { return "/v1/acl/tokens/" + e.victim },
			res: acl.ACL, access: acl.Write, ok: 200,
			setup: func(t *testing.T, e *aclEnv, as string) {
				e.victim = createToken(t, e.a, e.mgmt, `{"description":"to delete"}`).ID
			}},
		// The UI's static files: open (the page asks for a token), and /
		// leads there.
		{pattern: "GET /ui/", method: "GET", path: fixed("/ui/"), open: true, ok: 200},
		{pattern: "GET /{$}", method: "GET", path: fixed("/"), open: true, ok: 200},
	}
}

func grantLease(mustAs func(*testing.T, *aclEnv, string, string, string, string) reply) func(*testing.T, *aclEnv, string) {
	return func(t *testing.T, e *aclEnv, as string) {
		var l api.Lease
		json.Unmarshal(mustAs(t, e, as, "POST", "/v1/leases", `{"ttl":"1h"}`).body, &l)
		e.lease = l.ID
	}
}

func campaignAsManagement(t *testing.T, e *aclEnv, as string) {
	doAs(t, e.mgmt, "PUT", e.a.URL+"/v1/elections/db/campaign", `{"candidate":"c1","value":"10.0.0.1:5432"}`)
}

// Every route, as every kind of caller, under both default policies: the
// answer is the route's own when SPEC allows the caller, else 403 with a
// JSON error and the registry unchanged.
func TestACL_routes(t *testing.T) {
	// The listings, and the name each lists once the caller may read it.
	filtered := map[string]struct {
		res  acl.Resource
		name string
	}{
		"GET /v1/services":  {acl.Service, "web"},
		"GET /v1/locks":     {acl.Lock, "job"},
		"GET /v1/elections": {acl.Election, "db"},
	}
	cases := routeCases()
	covered := map[string]bool{}
	for _, c := range cases {
		covered[c.pattern] = true
	}
	for _, p := range httpapi.RoutePatterns() {
		if !covered[p] {
			t.Errorf("route %q has no case here", p)
		}
	}
	for _, policy := range []string{"allow", "deny"} {
		t.Run(policy, func(t *testing.T) {
			a := agenttest.Start(t, func(c *agent.Config) {
				c.ACLDefaultPolicy = policy
				c.EncryptKey = bytes.Repeat([]byte{1}, 32)
			})
			e := &aclEnv{a: a, mgmt: bootstrap(t, a)}
			none := createToken(t, a, e.mgmt, `{"description":"nothing","rules":`+rulesOf("none")+`}`)
			e.noneID = none.ID
			secrets := map[string]string{
				"no token":      "",
				"no permission": none.Secret,
				"read":          createToken(t, a, e.mgmt, `{"rules":`+rulesOf("read")+`}`).Secret,
				"write":         createToken(t, a, e.mgmt, `{"rules":`+rulesOf("write")+`}`).Secret,
				"management":    e.mgmt,
			}
			mustOK(t, doAs(t, e.mgmt, "PUT", a.URL+"/v1/services", `{"id":"web-0","name":"web","port":80}`))
			for _, c := range cases {
				for _, k := range callerKinds {
					t.Run(c.pattern+"/"+k.name, func(t *testing.T) {
						allowed := c.open || k.allowed(policy, c.res, c.access)
						as := e.mgmt
						if allowed {
							as = secrets[k.name]
						}
						if c.setup != nil {
							c.setup(t, e, as)
						}
						body := ""
						if c.body != nil {
							body = c.body(e)
						}
						before := a.FSM().Digest()
						r := doAs(t, secrets[k.name], c.method, a.URL+c.path(e), body)
						if !allowed {
							refused(t, a, before, r, c.method+" "+c.path(e))
							return
						}
						if r.code != c.ok {
							t.Fatalf("%s %s: %d %s, want %d", c.method, c.path(e), r.code, r.body, c.ok)
						}
						if listed, ok := filtered[c.pattern]; ok {
							// Filtered to what the caller may read.
							lists := strings.Contains(string(r.body), `"`+listed.name+`"`)
							if may := k.allowed(policy, listed.res, acl.Read); lists != may {
								t.Fatalf("%s lists %s: %v, the caller may read it: %v (%s)", c.pattern, listed.name, lists, may, r.body)
							}
						}
					})
				}
			}
		})
	}
}
