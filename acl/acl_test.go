package acl

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/sidecarhq/sidecar/fsm"
)

// store is a registry's tokens and instances, as the resolver reads them.
type store struct {
	tokens    map[string]*fsm.ACLToken
	instances map[string]*fsm.Instance // node/id
}

func newStore(tokens ...*fsm.ACLToken) *store {
	s := &store{tokens: map[string]*fsm.ACLToken{}, instances: map[string]*fsm.Instance{}}
	for _, t := range tokens {
		s.tokens[t.ID] = t
	}
	return s
}

func (s *store) ACLToken(id string) (*fsm.ACLToken, bool) { t, ok := s.tokens[id]; return t, ok }

func (s *store) ACLTokenBySecretHash(hash string) (*fsm.ACLToken, bool) {
	for _, t := range s.tokens {
		if t.SecretHash != "" && t.SecretHash == hash {
			return t, true
		}
	}
	return nil, false
}

func (s *store) Instance(node, id string) (*fsm.Instance, bool) {
	in, ok := s.instances[node+"/"+id]
	return in, ok
}

func (s *store) CheckOwner(node, checkID string) (*fsm.Instance, bool) {
	for _, in := range s.instances {
		for _, c := range in.Checks {
			if in.Node == node && c.ID == checkID {
				return in, true
			}
		}
	}
	return nil, false
}

func token(id, secret, rules string) *fsm.ACLToken {
	return &fsm.ACLToken{ID: id, SecretHash: HashSecret(secret), Rules: []byte(rules), ModifyIndex: 1}
}

// Rules at each edge of what ParseRules accepts.
func TestParseRules_edges(t *testing.T) {
	padTo := func(s string, n int) []byte { return []byte(s + strings.Repeat(" ", n-len(s))) }
	prefixes := func(n int) string {
		var kv []string
		for i := range n {
			kv = append(kv, fmt.Sprintf("%q:\"read\"", fmt.Sprint("p", i)))
		}
		return `{"service":{` + strings.Join(kv, ",") + `}}`
	}
	for _, tc := range []struct {
		name  string
		rules []byte
		ok    bool
		want  Rules
	}{
		{"empty", nil, true, Rules{}},
		{"null", []byte(" null "), true, Rules{}},
		{"one access for a resource", []byte(`{"lease":"write"}`), true, Rules{Lease: {"": Write}}},
		{"by prefix", []byte(`{"service":{"web":"write","":"read"}}`), true, Rules{Service: {"web": Write, "": Read}}},
		{"every resource", []byte(`{"service":"read","lock":"read","election":"read","lease":"read","node":"read","operator":"read","acl":"read"}`), true, nil},
		{"at the byte limit", padTo(`{"lease":"write"}`, MaxRulesBytes), true, Rules{Lease: {"": Write}}},
		{"past the byte limit", padTo(`{"lease":"write"}`, MaxRulesBytes+1), false, nil},
		{"at the prefix limit", []byte(prefixes(MaxPrefixes)), true, nil},
		{"past the prefix limit", []byte(prefixes(MaxPrefixes + 1)), false, nil},
		{"prefix at its length limit", []byte(`{"lock":{"` + strings.Repeat("a", maxPrefixLen) + `":"write"}}`), true, nil},
		{"prefix too long", []byte(`{"lock":{"` + strings.Repeat("a", maxPrefixLen+1) + `":"write"}}`), false, nil},
		{"unknown resource", []byte(`{"kv":"read"}`), false, nil},
		{"unknown access", []byte(`{"lease":"admin"}`), false, nil},
		{"unknown access by prefix", []byte(`{"lease":{"x":"admin"}}`), false, nil},
		{"not an object", []byte(`["lease"]`), false, nil},
		{"prefix map not an object", []byte(`{"lease":["x"]}`), false, nil},
		{"duplicate resource", []byte(`{"lease":"read","lease":"write"}`), false, nil},
		{"duplicate prefix", []byte(`{"lock":{"a":"read","a":"write"}}`), false, nil},
		{"data after", []byte(`{"lease":"read"} {}`), false, nil},
		{"cut short", []byte(`{"lease":"read"`), false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseRules(tc.rules)
			if (err == nil) != tc.ok {
				t.Fatalf("ParseRules(%.60q) = %v, want ok %v", tc.rules, err, tc.ok)
			}
			if tc.want != nil && fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("ParseRules(%.60q) = %v, want %v", tc.rules, got, tc.want)
			}
		})
	}
}

// A prefix is the start of a name or id: every character of one is
// allowed, the characters just outside their ranges are not.
func TestParseRules_prefixCharacters(t *testing.T) {
	for _, c := range "azAZ09._:@-" {
		if _, err := ParseRules([]byte(`{"lock":{"` + string(c) + `":"read"}}`)); err != nil {
			t.Errorf("prefix %q refused: %v", c, err)
		}
	}
	for _, c := range "`{@[/;" {
		if c == '@' {
			continue
		}
		if _, err := ParseRules([]byte(`{"lock":{"` + string(c) + `":"read"}}`)); err == nil {
			t.Errorf("prefix %q accepted", c)
		}
	}
	for _, p := range []string{" ", "a b", "é"} {
		if _, err := ParseRules([]byte(`{"lock":{"` + p + `":"read"}}`)); err == nil {
			t.Errorf("prefix %q accepted", p)
		}
	}
}

// The longest matching prefix decides, whatever the order; without a
// matching rule the policy does, and the acl resource is never a default.
func TestAuthorizer_longestPrefixAndPolicy(t *testing.T) {
	rules, err := ParseRules([]byte(`{"service":{"":"read","web":"write","web-admin":"none"}}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, policy := range []Policy{Allow, Deny} {
		a := NewAuthorizer(rules, policy)
		for _, tc := range []struct {
			name string
			want Access
			ok   bool
		}{
			{"db", Read, true}, {"db", Write, false},
			{"web-1", Write, true}, {"web-admin-1", Read, false},
		} {
			if got := a.Allowed(Service, tc.name, tc.want); got != tc.ok {
				t.Errorf("%v: service %q %v = %v, want %v", policy, tc.name, tc.want, got, tc.ok)
			}
		}
		if got := a.Allowed(Lock, "x", Write); got != (policy == Allow) {
			t.Errorf("%v: a lock no rule names: %v", policy, got)
		}
		if a.Allowed(ACL, "", Read) {
			t.Errorf("%v: acl read without an acl rule", policy)
		}
	}
}

// A request's token: one X-Sidecar-Token or one Authorization bearer (or
// both, equal), printable, at most 256 bytes; anything else is an error,
// never an anonymous request.
func TestSecretFromRequest(t *testing.T) {
	long := strings.Repeat("s", maxSecretLen)
	for _, tc := range []struct {
		name    string
		headers map[string][]string
		want    string
		ok      bool
	}{
		{"none", nil, "", true},
		{"x header", map[string][]string{HeaderToken: {"s1"}}, "s1", true},
		{"bearer", map[string][]string{"Authorization": {"Bearer s1"}}, "s1", true},
		{"bearer any case", map[string][]string{"Authorization": {"bearer s1"}}, "s1", true},
		{"both equal", map[string][]string{HeaderToken: {"s1"}, "Authorization": {"Bearer s1"}}, "s1", true},
		{"both differ", map[string][]string{HeaderToken: {"s1"}, "Authorization": {"Bearer s2"}}, "", false},
		{"two x headers", map[string][]string{HeaderToken: {"s1", "s1"}}, "", false},
		{"two authorization headers", map[string][]string{"Authorization": {"Bearer s1", "Bearer s1"}}, "", false},
		{"empty x header", map[string][]string{HeaderToken: {" "}}, "", false},
		{"basic auth", map[string][]string{"Authorization": {"Basic s1"}}, "", false},
		{"bearer without token", map[string][]string{"Authorization": {"Bearer  "}}, "", false},
		{"at the length limit", map[string][]string{HeaderToken: {long}}, long, true},
		{"too long", map[string][]string{HeaderToken: {long + "s"}}, "", false},
		{"printable edges", map[string][]string{HeaderToken: {"!~"}}, "!~", true},
		{"space inside", map[string][]string{"Authorization": {"Bearer s 1"}}, "", false},
		{"control character", map[string][]string{HeaderToken: {"s\x01"}}, "", false},
		{"delete character", map[string][]string{HeaderToken: {"s\x7f"}}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := SecretFromRequest(http.Header(tc.headers))
			if (err == nil) != tc.ok || got != tc.want {
				t.Fatalf("SecretFromRequest = %q, %v; want %q, ok %v", got, err, tc.want, tc.ok)
			}
		})
	}
}

// Secrets resolve to their token's rights: management, rules, the
// anonymous token's for no secret (or the policy without one), and an
// unknown secret is refused whatever the policy.
func TestResolver_Resolve(t *testing.T) {
	st := newStore(
		&fsm.ACLToken{ID: "m", SecretHash: HashSecret("sm"), Management: true},
		token("r", "sr", `{"service":{"web":"write"}}`),
	)
	r := NewResolver(st, Deny)
	if _, err := r.Resolve("nope"); !errors.Is(err, ErrTokenNotFound) || !errors.Is(err, ErrDenied) {
		t.Fatalf("unknown secret: %v", err)
	}
	m, err := r.Resolve("sm")
	if err != nil || !m.Management || m.TokenID != "m" || m.By() != "m" || !m.Allowed(ACL, "", Write) {
		t.Fatalf("management secret: %+v %v", m, err)
	}
	c, err := r.Resolve("sr")
	if err != nil || c.Management || c.TokenID != "r" || c.Secret != "sr" {
		t.Fatalf("rules secret: %+v %v", c, err)
	}
	if !c.Allowed(Service, "web", Write) || c.Allowed(Service, "db", Read) {
		t.Fatal("rules token's rights")
	}
	if err := c.Check(Service, "db", Read); !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), `token "r" needs service:read on service "db"`) {
		t.Fatalf("Check = %v", err)
	}
	if err := c.Check(Service, "web", Write); err != nil {
		t.Fatalf("Check of a granted access: %v", err)
	}

	anon, err := r.Resolve("")
	if err != nil || anon.TokenID != "" || anon.Allowed(Service, "web", Read) {
		t.Fatalf("anonymous under deny without an anonymous token: %+v %v", anon, err)
	}
	if err := anon.Check(Lease, "", Write); !strings.Contains(fmt.Sprint(err), "a request without token needs lease:write on lease") {
		t.Fatalf("anonymous Check = %v", err)
	}
	st.tokens[fsm.AnonymousTokenID] = &fsm.ACLToken{ID: fsm.AnonymousTokenID, Rules: []byte(`{"service":"read"}`), ModifyIndex: 1}
	if anon, _ := r.Resolve(""); !anon.Allowed(Service, "web", Read) || anon.Allowed(Service, "web", Write) {
		t.Fatal("the anonymous token's rules do not apply")
	}
	if allow, _ := NewResolver(newStore(), Allow).Resolve(""); !allow.Allowed(Lock, "x", Write) {
		t.Fatal("anonymous under allow")
	}

	var nilCaller *Caller
	if nilCaller.Allowed(Service, "web", Read) || nilCaller.By() != "" {
		t.Fatal("a nil caller is allowed something")
	}
	ctx := NewContext(context.Background(), c)
	if FromContext(ctx) != c || FromContext(context.Background()) != nil {
		t.Fatal("caller in context")
	}
}

// A token's rules are parsed once per version: a change shows at once,
// and rules that no longer parse grant nothing.
func TestResolver_rulesFollowTheTokensVersion(t *testing.T) {
	tok := token("r", "sr", `{"service":"read"}`)
	st := newStore(tok)
	r := NewResolver(st, Allow)
	c, _ := r.Resolve("sr")
	if !c.Allowed(Service, "web", Read) || c.Allowed(Service, "web", Write) {
		t.Fatal("first rules")
	}
	st.tokens["r"] = &fsm.ACLToken{ID: "r", SecretHash: tok.SecretHash, Rules: []byte(`{"service":"write"}`), ModifyIndex: 2}
	if c, _ := r.Resolve("sr"); !c.Allowed(Service, "web", Write) {
		t.Fatal("a changed token's rules did not apply")
	}
	st.tokens["r"] = &fsm.ACLToken{ID: "r", SecretHash: tok.SecretHash, Rules: []byte(`{"kv":"write"}`), ModifyIndex: 3}
	c, _ = r.Resolve("sr")
	for _, res := range Resources {
		if c.Allowed(res, "x", Read) {
			t.Fatalf("rules that no longer parse allow %s under allow", res)
		}
	}
}

// A configured secret (--acl-dns-token) is resolved again when the version
// moves, at every call without a version, and grants nothing while the
// registry does not hold it.
func TestResolver_Fixed(t *testing.T) {
	st := newStore()
	r := NewResolver(st, Deny)
	var version uint64 = 1
	f := r.Fixed("sd", func() uint64 { return version })
	if f().Allowed(Service, "web", Read) {
		t.Fatal("an unknown configured secret grants something")
	}
	st.tokens["d"] = token("d", "sd", `{"service":"read"}`)
	if f().Allowed(Service, "web", Read) {
		t.Fatal("resolved again without a version change")
	}
	version = 2
	if !f().Allowed(Service, "web", Read) {
		t.Fatal("not resolved again after the version moved")
	}
	unversioned := r.Fixed("sd", nil)
	delete(st.tokens, "d")
	if unversioned().Allowed(Service, "web", Read) {
		t.Fatal("without a version, a deleted token still grants")
	}
}

// A write sent with a token needs its permission and may act only for
// that token, unless it is a management token.
func TestResolver_AuthorizeCommand(t *testing.T) {
	st := newStore(
		&fsm.ACLToken{ID: "m", SecretHash: HashSecret("sm"), Management: true},
		token("w", "sw", `{"service":{"web":"write"},"lock":"write"}`),
	)
	st.instances["n1/web-1"] = &fsm.Instance{ID: "web-1", Name: "web", Node: "n1", Checks: []fsm.Check{{ID: "web-1:ttl"}}}
	st.instances["n1/db-1"] = &fsm.Instance{ID: "db-1", Name: "db", Node: "n1", Checks: []fsm.Check{{ID: "db-1:ttl"}}}
	r := NewResolver(st, Deny)
	w, _ := r.Resolve("sw")
	m, _ := r.Resolve("sm")
	for _, tc := range []struct {
		name   string
		caller *Caller
		cmd    fsm.Command
		ok     bool
	}{
		{"register its service", w, &fsm.RegisterInstance{Instance: fsm.Instance{Name: "web"}}, true},
		{"register another", w, &fsm.RegisterInstance{Instance: fsm.Instance{Name: "db"}}, false},
		{"deregister its instance", w, &fsm.DeregisterInstance{Node: "n1", ID: "web-1"}, true},
		{"deregister another's", w, &fsm.DeregisterInstance{Node: "n1", ID: "db-1"}, false},
		{"its check", w, &fsm.UpdateCheck{Node: "n1", CheckID: "web-1:ttl"}, true},
		{"another's check", w, &fsm.UpdateCheck{Node: "n1", CheckID: "db-1:ttl"}, false},
		{"lock for itself", w, &fsm.AcquireLock{Name: "x", Auth: fsm.Auth{By: "w"}}, true},
		{"lock for another token", w, &fsm.AcquireLock{Name: "x", Auth: fsm.Auth{By: "m"}}, false},
		{"a lease (no lease rule)", w, &fsm.GrantLease{ID: "l", Owner: "w"}, false},
		{"a node session", w, &fsm.GrantLease{ID: "l", Session: true, Node: "n1"}, false},
		{"management for another token", m, &fsm.AcquireLock{Name: "x", Auth: fsm.Auth{By: "w"}}, true},
		{"tokens", w, &fsm.ACLSetToken{}, false},
		{"bootstrap", w, &fsm.ACLBootstrap{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := r.AuthorizeCommand(tc.caller, tc.cmd)
			if (err == nil) != tc.ok || err != nil && !errors.Is(err, ErrDenied) {
				t.Fatalf("AuthorizeCommand = %v, want ok %v", err, tc.ok)
			}
		})
	}
}

// The resolver parses a token's rules once per version and keeps at most
// 4,097 tokens' rules: a registry with more tokens (or a caller cycling
// through many) costs re-parsing, never unbounded memory.
func TestResolver_rulesCacheReusesAndIsBounded(t *testing.T) {
	const bound = 4096
	var tokens []*fsm.ACLToken
	for i := range bound + 2 {
		tokens = append(tokens, token(fmt.Sprintf("t-%d", i), fmt.Sprintf("s-%d", i), `{"service":{"web":"read"}}`))
	}
	r := NewResolver(newStore(tokens...), Deny)
	if !r.authorizer(tokens[0]).Allowed(Service, "web", Read) {
		t.Fatal("a token's rules not applied")
	}
	// Rules changed without a new version: the cached ones still apply.
	tokens[0].Rules = []byte(`{"service":{"web":"deny"}}`)
	if !r.authorizer(tokens[0]).Allowed(Service, "web", Read) {
		t.Fatal("the same token version parsed again instead of reused")
	}
	tokens[0].ModifyIndex = 2
	if r.authorizer(tokens[0]).Allowed(Service, "web", Read) {
		t.Fatal("a token's new version kept its old rules")
	}
	for _, tk := range tokens[1 : bound+1] {
		r.authorizer(tk)
	}
	if n := len(r.cache); n != bound+1 {
		t.Fatalf("%d tokens' rules cached, want all %d seen", n, bound+1)
	}
	r.authorizer(tokens[bound+1])
	if n := len(r.cache); n != 1 {
		t.Fatalf("%d tokens' rules cached past the bound, want the cache emptied and 1", n)
	}
}
