package acl

import (
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// FuzzParseRules: ParseRules never panics; rules it accepts survive their
// canonical form (MarshalJSON, then ParseRules again, gives the same
// rules); and the access a name gets is that of the longest prefix naming
// it, as a brute-force search over every prefix finds it, whatever the
// default policy adds where no prefix matches. Seeds: f.Add below and
// testdata/fuzz/FuzzParseRules.
func FuzzParseRules(f *testing.F) {
	for _, seed := range []struct{ rules, name string }{
		{`{"service": {"web": "write", "": "read"}, "lock": {"jobs-": "write"}, "election": {"db": "write"}, "lease": "write", "node": "read", "operator": "read", "acl": "none"}`, "web-1"},
		{`{"service": {"": "read", "w": "none", "we": "write", "web": "read", "web-": "deny"}}`, "web-2"},
		{`{"service": {"web": "read", "web": "write"}}`, "web"},
		{`{"service": "read", "service": "write"}`, "x"},
		{`{"service": {"a b": "read"}}`, "a b"},
		{`{"lock": {"\u006aobs": "write"}}`, "jobs"},
		{`{"nosuch": "read"}`, ""},
		{`{"service": {}}`, "web"},
		{`null`, "x"},
		{`  `, ""},
		{`[]`, ""},
		{`{"service": "read"} {}`, ""},
		{`{"service": {"x": "read"}`, "x"},
		{`{"service": {"x": 1}}`, "x"},
		{`{"service": {"x": "READ"}}`, "x"},
		{`{"operator": "write", "acl": "write"}`, ""},
		{`{"node": {"Node": "read", "node": "write"}}`, "Node6"},
	} {
		f.Add([]byte(seed.rules), seed.name)
	}
	f.Fuzz(func(t *testing.T, b []byte, name string) {
		rules, err := ParseRules(b)
		if err != nil {
			if rules != nil {
				t.Fatalf("ParseRules(%q) returned rules %v with error %v", b, rules, err)
			}
			return
		}
		out, err := rules.MarshalJSON()
		if err != nil {
			t.Fatalf("MarshalJSON of accepted %q: %v", b, err)
		}
		again, err := ParseRules(out)
		if err != nil {
			t.Fatalf("canonical form %s of accepted %q does not parse: %v", out, b, err)
		}
		if !reflect.DeepEqual(normal(rules), normal(again)) {
			t.Fatalf("round trip of %q through %s: %v, want %v", b, out, again, rules)
		}
		if len(out) > MaxRulesBytes {
			t.Fatalf("canonical form of accepted %q is %d bytes, past the %d ParseRules accepts", b, len(out), MaxRulesBytes)
		}

		// Names worth asking: the fuzzed one, every prefix named, one
		// byte less and one byte more of each.
		names := []string{name}
		for _, grants := range rules {
			for p := range grants {
				names = append(names, p, p+"x", p+name)
				if p != "" {
					names = append(names, p[:len(p)-1])
				}
			}
		}
		deny, allow := NewAuthorizer(rules, Deny), NewAuthorizer(rules, Allow)
		for _, res := range Resources {
			for _, n := range names {
				want, found := longestPrefix(rules[res], n)
				got, ok := rules.match(res, n)
				if got != want || ok != found {
					t.Fatalf("rules %s: %s %q matches %v (found %v), the longest prefix gives %v (found %v)", out, res, n, got, ok, want, found)
				}
				for _, acc := range []Access{None, Read, Write} {
					wantDeny := found && want >= acc
					wantAllow := wantDeny || !found && res != ACL
					if d := deny.Allowed(res, n, acc); d != wantDeny {
						t.Fatalf("rules %s under deny: %s %q %s allowed %v, want %v", out, res, n, acc, d, wantDeny)
					}
					if a := allow.Allowed(res, n, acc); a != wantAllow {
						t.Fatalf("rules %s under allow: %s %q %s allowed %v, want %v", out, res, n, acc, a, wantAllow)
					}
				}
			}
		}
	})
}

// normal maps empty grant maps to nil-free form for comparison.
func normal(r Rules) Rules {
	out := Rules{}
	for res, g := range r {
		m := map[string]Access{}
		for p, a := range g {
			m[p] = a
		}
		out[res] = m
	}
	return out
}

// longestPrefix is the brute-force reference: every prefix of name, from
// the longest down, the first one granted.
func longestPrefix(grants map[string]Access, name string) (Access, bool) {
	for i := len(name); i >= 0; i-- {
		if a, ok := grants[name[:i]]; ok {
			return a, true
		}
	}
	return None, false
}

// FuzzSecretFromRequest: SecretFromRequest never panics; a secret it
// accepts has no space or control byte and is at most maxSecretLen bytes;
// a request with a token header is never silently anonymous (an error or
// a secret); an accepted secret is the one the headers carry. Each bit of
// mode adds a header: 1 X-Sidecar-Token x, 2 Authorization auth, 4 a
// second X-Sidecar-Token (x2), 8 a second Authorization ("Bearer " + x2).
// Seeds: f.Add below and testdata/fuzz/FuzzSecretFromRequest.
func FuzzSecretFromRequest(f *testing.F) {
	for _, seed := range []struct {
		x, auth, x2 string
		mode        uint8
	}{
		{"", "", "", 0},
		{"s3cret", "", "", 1},
		{"", "Bearer s3cret", "", 2},
		{"", "bearer   s3cret  ", "", 2},
		{"s3cret", "Bearer s3cret", "", 3},
		{"s3cret", "Bearer other", "", 3},
		{"s3cret", "", "s3cret", 5},
		{"s3cret", "", "other", 5},
		{"", "Bearer s3cret", "s3cret", 10},
		{" ", "", "", 1},
		{"", "Bearer", "", 2},
		{"", "Bearer ", "", 2},
		{"", "Basic dXNlcjpwYXNz", "", 2},
		{"", "Bearer\ts3cret", "", 2},
		{"", "Bearer a b", "", 2},
		{"a b", "", "", 1},
		{"tok\x00en", "", "", 1},
		{"tok\x7fen", "", "", 1},
		{"tok\u00e9n", "", "", 1},
		{"\u00a0s3cret\u00a0", "", "", 1},
		{"\t s3cret \r\n", "", "", 1},
		{strings.Repeat("a", 257), "", "", 1},
		{strings.Repeat("a", 256), "", "", 1},
	} {
		f.Add(seed.x, seed.auth, seed.x2, seed.mode)
	}
	f.Fuzz(func(t *testing.T, x, auth, x2 string, mode uint8) {
		h := http.Header{}
		if mode&1 != 0 {
			h.Add(HeaderToken, x)
		}
		if mode&2 != 0 {
			h.Add("Authorization", auth)
		}
		if mode&4 != 0 {
			h.Add(HeaderToken, x2)
		}
		if mode&8 != 0 {
			h.Add("Authorization", "Bearer "+x2)
		}
		s, err := SecretFromRequest(h)
		if err != nil {
			if s != "" {
				t.Fatalf("headers %q: secret %q with error %v", h, s, err)
			}
			return
		}
		present := mode&15 != 0
		if present && s == "" {
			t.Fatalf("headers %q: anonymous without error", h)
		}
		if !present && s != "" {
			t.Fatalf("no headers: secret %q", s)
		}
		if len(s) > maxSecretLen {
			t.Fatalf("headers %q: secret of %d bytes accepted", h, len(s))
		}
		for i := 0; i < len(s); i++ {
			if s[i] <= ' ' || s[i] >= 0x7f {
				t.Fatalf("headers %q: secret %q holds byte %#x", h, s, s[i])
			}
		}
		// The secret is what a header carries, every header agreeing.
		for _, v := range h.Values(HeaderToken) {
			if strings.TrimSpace(v) != s {
				t.Fatalf("headers %q: secret %q, but %s carries %q", h, s, HeaderToken, v)
			}
		}
		for _, v := range h.Values("Authorization") {
			scheme, tok, _ := strings.Cut(strings.TrimSpace(v), " ")
			if !strings.EqualFold(scheme, "bearer") || strings.TrimSpace(tok) != s {
				t.Fatalf("headers %q: secret %q, but Authorization is %q", h, s, v)
			}
		}
	})
}
