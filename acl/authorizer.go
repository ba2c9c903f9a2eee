package acl

import "fmt"

// Policy is --acl-default-policy: what a request may do where no rule of
// its token says.
type Policy uint8

// Policies.
const (
	// Allow lets everything no rule denies, except managing tokens.
	Allow Policy = iota
	// Deny lets only what a rule grants.
	Deny
)

// ParsePolicy reads "allow" or "deny".
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case "allow", "":
		return Allow, nil
	case "deny":
		return Deny, nil
	}
	return Allow, fmt.Errorf("acl default policy %q is not allow or deny", s)
}

func (p Policy) String() string {
	if p == Deny {
		return "deny"
	}
	return "allow"
}

// Authorizer answers whether an access to a named resource is allowed.
type Authorizer interface {
	Allowed(res Resource, name string, want Access) bool
}

type rulesAuthorizer struct {
	rules  Rules
	policy Policy
}

func (a rulesAuthorizer) Allowed(res Resource, name string, want Access) bool {
	if got, ok := a.rules.match(res, name); ok {
		return got >= want
	}
	// Managing tokens is never a default: with "allow" as with "deny", it
	// takes an acl rule or a management token (a cluster's first token
	// comes from the bootstrap).
	if a.policy == Allow && res != ACL {
		return true
	}
	return false
}

// NewAuthorizer returns the authorizer of rules under a default policy.
func NewAuthorizer(rules Rules, policy Policy) Authorizer {
	return rulesAuthorizer{rules: rules, policy: policy}
}

type manageAll struct{}

func (manageAll) Allowed(Resource, string, Access) bool { return true }

// ManageAll is the authorizer of a management token.
var ManageAll Authorizer = manageAll{}
