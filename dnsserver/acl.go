package dnsserver

import (
	"strings"

	"github.com/sidecarhq/sidecar/acl"
	"github.com/sidecarhq/sidecar/fsm"
)

// Authorizer is what the DNS token may read (SPEC: "DNS answers follow
// --acl-dns-token"). *acl.Caller and every acl.Authorizer satisfy it. It
// may be called from many goroutines at once and must not block.
type Authorizer interface {
	Allowed(res acl.Resource, name string, want acl.Access) bool
}

// A name the DNS token may not read is answered as if it did not exist
// (NXDOMAIN), so that an answer never tells a name exists that the token
// cannot see; each refusal is counted by the kind of name.
const (
	deniedService  = "service"
	deniedNode     = "node"
	deniedElection = "election"
)

// authorizer returns the authorizer of this query, nil when every name is
// readable (no Config.ACL).
func (s *Server) authorizer() Authorizer {
	if s.cfg.ACL == nil {
		return nil
	}
	a := s.cfg.ACL()
	if a == nil {
		// The ACL hook answered nothing: nothing is readable rather than
		// everything.
		return denyAll{}
	}
	return a
}

type denyAll struct{}

func (denyAll) Allowed(acl.Resource, string, acl.Access) bool { return false }

// mayReadService reports whether the DNS token may read a service queried
// by its lower-case name. Rules name services as registered, and DNS names
// carry no case (resolvers even randomise it), so a service the lower-case
// name does not grant is also readable when an instance's name as
// registered is: a rule for "Web" lets "web.service" through.
func (s *Server) mayReadService(a Authorizer, lower string) bool {
	if a == nil || a.Allowed(acl.Service, lower, acl.Read) {
		return true
	}
	allowed := false
	// Only denials take this path; it allocates, the allowed one does not.
	var tried []string
	exists := s.reg.VisitService(lower, func(in *fsm.Instance, _ string) {
		if allowed || in.Name == lower || contains(tried, in.Name) {
			return
		}
		tried = append(tried, in.Name)
		allowed = a.Allowed(acl.Service, in.Name, acl.Read)
	})
	if !allowed && exists {
		// An absent service is no refusal: it is NXDOMAIN anyway.
		s.metrics.denied(deniedService)
	}
	return allowed
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// mayRead reports whether the DNS token may read a node or an election by
// its name as registered, counting a refusal.
func (s *Server) mayRead(a Authorizer, res acl.Resource, name, kind string) bool {
	if a == nil || a.Allowed(res, name, acl.Read) {
		return true
	}
	s.metrics.denied(kind)
	return false
}

// anyReadable reports whether some name of a list is readable: an empty
// non-terminal above names the token cannot read does not exist either.
func anyReadable(a Authorizer, res acl.Resource, names func(yield func(string) bool)) bool {
	found := false
	names(func(n string) bool {
		if a == nil || a.Allowed(res, n, acl.Read) {
			found = true
			return false
		}
		return true
	})
	return found
}

// serviceNames yields the names of a service map, lower-cased as queried
// and as registered.
func serviceNames(m map[string][]string) func(yield func(string) bool) {
	return func(yield func(string) bool) {
		for n := range m {
			if !yield(n) {
				return
			}
			if l := strings.ToLower(n); l != n && !yield(l) {
				return
			}
		}
	}
}
