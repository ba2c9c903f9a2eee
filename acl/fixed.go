package acl

import "sync/atomic"

// Fixed returns the authorizer of one secret that is not carried by a
// request but configured, such as --acl-dns-token. It is resolved again
// whenever version changes (the registry's ACL table index: the secret's
// token, or the anonymous one, created, changed or deleted), so a token
// created after the agent started counts from the next call, and
// otherwise costs one version read. A nil version resolves at every call.
// A secret the registry does not hold grants nothing, whatever the policy.
// Safe for concurrent use.
func (r *Resolver) Fixed(secret string, version func() uint64) func() Authorizer {
	type resolved struct {
		version uint64
		authz   Authorizer
	}
	var cur atomic.Pointer[resolved]
	resolve := func() Authorizer {
		c, err := r.Resolve(secret)
		if err != nil {
			// ErrTokenNotFound, or any other: nothing is readable.
			return denyAll{}
		}
		return c
	}
	return func() Authorizer {
		if version == nil {
			return resolve()
		}
		// The version is read before resolving: a change while resolving
		// leaves a stale version, and the next call resolves again.
		v := version()
		if p := cur.Load(); p != nil && p.version == v {
			return p.authz
		}
		a := resolve()
		cur.Store(&resolved{version: v, authz: a})
		return a
	}
}

type denyAll struct{}

func (denyAll) Allowed(Resource, string, Access) bool { return false }
