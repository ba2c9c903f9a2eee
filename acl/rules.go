package acl

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// Access is what a rule grants: nothing, reading, or reading and writing.
type Access uint8

// Accesses, in order: each includes the ones before it.
const (
	None Access = iota
	Read
	Write
)

func (a Access) String() string {
	switch a {
	case Read:
		return "read"
	case Write:
		return "write"
	}
	return "none"
}

func parseAccess(s string) (Access, error) {
	switch s {
	case "none", "deny":
		return None, nil
	case "read":
		return Read, nil
	case "write":
		return Write, nil
	}
	return None, fmt.Errorf("access %q is not none, read or write", s)
}

// Resource is what a rule is about.
type Resource string

// Resources of SPEC (Security: ACL tokens).
const (
	Service  Resource = "service"
	Lock     Resource = "lock"
	Election Resource = "election"
	Lease    Resource = "lease"
	Node     Resource = "node"
	Operator Resource = "operator"
	ACL      Resource = "acl"
)

// Resources lists every resource.
var Resources = []Resource{Service, Lock, Election, Lease, Node, Operator, ACL}

func knownResource(r Resource) bool {
	for _, k := range Resources {
		if k == r {
			return true
		}
	}
	return false
}

// Limits of a rule set, so that one token cannot make every check slow.
const (
	MaxRulesBytes = 64 << 10
	MaxPrefixes   = 256
	maxPrefixLen  = 128
)

// Rules grant access by resource and name prefix. A resource given as one
// access ("lease": "write") is the same as that access for the prefix "".
type Rules map[Resource]map[string]Access

// ParseRules reads rules in SPEC's JSON form, strictly: an unknown
// resource, an access that is not none, read or write, a prefix that is no
// name's, or a duplicate key is an error that says which.
func ParseRules(b []byte) (Rules, error) {
	if len(b) > MaxRulesBytes {
		return nil, fmt.Errorf("rules are longer than %d bytes", MaxRulesBytes)
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 || bytes.Equal(b, []byte("null")) {
		return Rules{}, nil
	}
	var raw map[string]json.RawMessage
	if err := decodeStrictObject(b, &raw); err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	out := Rules{}
	count := 0
	for k, v := range raw {
		res := Resource(k)
		if !knownResource(res) {
			return nil, fmt.Errorf("rules: unknown resource %q (want one of %s)", k, resourceList())
		}
		grants := map[string]Access{}
		var one string
		if err := json.Unmarshal(v, &one); err == nil {
			a, err := parseAccess(one)
			if err != nil {
				return nil, fmt.Errorf("rules: %s: %w", k, err)
			}
			grants[""] = a
		} else {
			var byPrefix map[string]string
			if err := decodeStrictObject(v, &byPrefix); err != nil {
				return nil, fmt.Errorf("rules: %s: want an access or an object of name prefix to access: %w", k, err)
			}
			for p, s := range byPrefix {
				if !validPrefix(p) {
					return nil, fmt.Errorf("rules: %s: prefix %q is not the start of a name (letters, digits and . _ : @ -, at most %d)", k, p, maxPrefixLen)
				}
				a, err := parseAccess(s)
				if err != nil {
					return nil, fmt.Errorf("rules: %s %q: %w", k, p, err)
				}
				grants[p] = a
			}
		}
		count += len(grants)
		if count > MaxPrefixes {
			return nil, fmt.Errorf("rules: more than %d prefixes", MaxPrefixes)
		}
		out[res] = grants
	}
	return out, nil
}

// decodeStrictObject decodes a JSON object, refusing duplicate keys (which
// encoding/json would silently let the last one win) and trailing data.
func decodeStrictObject(b []byte, into any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return fmt.Errorf("want a JSON object")
	}
	seen := map[string]bool{}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return err
		}
		key, _ := k.(string)
		if seen[key] {
			return fmt.Errorf("key %q appears twice", key)
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("data after the object")
	}
	if _, err := dec.Token(); err == nil {
		return fmt.Errorf("data after the object")
	}
	return json.Unmarshal(b, into)
}

func validPrefix(p string) bool {
	if len(p) > maxPrefixLen {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '_' || c == ':' || c == '@' || c == '-') {
			return false
		}
	}
	return true
}

func resourceList() string {
	s := make([]string, len(Resources))
	for i, r := range Resources {
		s[i] = string(r)
	}
	return strings.Join(s, ", ")
}

// MarshalJSON writes rules in their canonical form: every resource as an
// object of prefix to access, keys sorted.
func (r Rules) MarshalJSON() ([]byte, error) {
	out := map[string]map[string]string{}
	for res, grants := range r {
		m := map[string]string{}
		for p, a := range grants {
			m[p] = a.String()
		}
		out[string(res)] = m
	}
	return json.Marshal(out)
}

// match returns the access of the longest prefix of name that rules name
// for res, and whether any does.
func (r Rules) match(res Resource, name string) (Access, bool) {
	grants := r[res]
	if len(grants) == 0 {
		return None, false
	}
	best, found, bestLen := None, false, -1
	for p, a := range grants {
		// equivalent mutant: two prefixes of one name with the same length
		// are the same key, so >= never meets a tie.
		if len(p) > bestLen && strings.HasPrefix(name, p) {
			best, found, bestLen = a, true, len(p)
		}
	}
	return best, found
}
