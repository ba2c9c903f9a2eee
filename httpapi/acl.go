package httpapi

import (
	"fmt"
	"net/http"

	"github.com/sidecarhq/sidecar/acl"
)

// Resolver turns the secret a request carries into its caller (acl.Resolver):
// "" is the anonymous caller, an unknown secret acl.ErrTokenNotFound.
type Resolver interface {
	Resolve(secret string) (*acl.Caller, error)
}

// nameFrom says where the name a permission is checked on comes from.
type nameFrom uint8

const (
	// fromNone: the resource has no name here (lease, operator, acl, or
	// every node): the check is on "", which only a rule for the prefix ""
	// (or the default policy) grants.
	fromNone nameFrom = iota
	// fromPath: the route's {name}, checked before the handler runs.
	fromPath
	// fromBody: the name in the request body, checked by the handler once
	// decoded (a registration's service name).
	fromBody
	// fromInstance: the service of the instance {id} of this node, looked up
	// by the handler.
	fromInstance
	// fromCheck: the service of the instance that owns check {check_id} on
	// this node, looked up by the handler.
	fromCheck
	// fromFilter: the answer lists only the names the caller may access
	// (GET /v1/services, /v1/locks, /v1/elections, as Consul filters its
	// catalog).
	fromFilter
)

// permission is what a route needs.
type permission struct {
	// open routes need nothing and resolve no token: probes and the
	// cluster's one bootstrap.
	open   bool
	res    acl.Resource
	access acl.Access
	from   nameFrom
}

// permissions is the one table of what every route needs (SPEC: Security).
// handle refuses to register a route without an entry, and
// TestPermissions_coverRoutes checks that every entry is a route, so the
// table and routes() cannot drift apart.
var permissions = map[string]permission{
	"GET /healthz": {open: true},
	"GET /readyz":  {open: true},
	"GET /metrics": {res: acl.Operator, access: acl.Read},

	"GET /v1/status":  {res: acl.Node, access: acl.Read},
	"GET /v1/members": {res: acl.Node, access: acl.Read},

	"PUT /v1/services":                   {res: acl.Service, access: acl.Write, from: fromBody},
	"DELETE /v1/services/{id}":           {res: acl.Service, access: acl.Write, from: fromInstance},
	"GET /v1/services":                   {res: acl.Service, access: acl.Read, from: fromFilter},
	"GET /v1/services/{name}":            {res: acl.Service, access: acl.Read, from: fromPath},
	"PUT /v1/checks/{check_id}/{status}": {res: acl.Service, access: acl.Write, from: fromCheck},

	"POST /v1/leases":                      {res: acl.Lease, access: acl.Write},
	"PUT /v1/leases/{id}/keepalive":        {res: acl.Lease, access: acl.Write},
	"DELETE /v1/leases/{id}":               {res: acl.Lease, access: acl.Write},
	"PUT /v1/locks/{name}":                 {res: acl.Lock, access: acl.Write, from: fromPath},
	"DELETE /v1/locks/{name}":              {res: acl.Lock, access: acl.Write, from: fromPath},
	"GET /v1/locks":                        {res: acl.Lock, access: acl.Read, from: fromFilter},
	"GET /v1/locks/{name}":                 {res: acl.Lock, access: acl.Read, from: fromPath},
	"GET /v1/locks/{name}/fence":           {res: acl.Lock, access: acl.Read, from: fromPath},
	"PUT /v1/elections/{name}/campaign":    {res: acl.Election, access: acl.Write, from: fromPath},
	"DELETE /v1/elections/{name}/campaign": {res: acl.Election, access: acl.Write, from: fromPath},
	"GET /v1/elections":                    {res: acl.Election, access: acl.Read, from: fromFilter},
	"GET /v1/elections/{name}":             {res: acl.Election, access: acl.Read, from: fromPath},
	"GET /v1/elections/{name}/self":        {res: acl.Election, access: acl.Read, from: fromPath},
	"GET /v1/elections/{name}/fence":       {res: acl.Election, access: acl.Read, from: fromPath},
	// Only the token that campaigned the candidate (or management) may
	// transfer it: the election layer checks ownership (fsm.Auth).
	"PUT /v1/elections/{name}/transfer": {res: acl.Election, access: acl.Write, from: fromPath},

	// A snapshot holds every token's secret hash and the whole registry:
	// saving it is operator write, like restoring it.
	"GET /v1/snapshot":         {res: acl.Operator, access: acl.Write},
	"PUT /v1/snapshot":         {res: acl.Operator, access: acl.Write},
	"GET /v1/operator/keyring": {res: acl.Operator, access: acl.Read},
	"PUT /v1/operator/keyring": {res: acl.Operator, access: acl.Write},

	// Open, once: the registry refuses a second bootstrap (409).
	"PUT /v1/acl/bootstrap":      {open: true},
	"PUT /v1/acl/tokens":         {res: acl.ACL, access: acl.Write},
	"GET /v1/acl/tokens":         {res: acl.ACL, access: acl.Read},
	"GET /v1/acl/tokens/{id}":    {res: acl.ACL, access: acl.Read},
	"DELETE /v1/acl/tokens/{id}": {res: acl.ACL, access: acl.Write},

	// The web UI's static files hold no data: the page reads the API with
	// the token it is given, so it loads under default-deny and asks.
	"GET /ui/": {open: true},
	"GET /{$}": {open: true},
}

// guard resolves a request's token, limits its writes, checks what the
// route's table entry can check before the handler runs (names from the
// path, or none), and hands the caller on in the request's context, where
// handlers check body-derived names and the election layer stamps
// ownership. Every refusal here comes before the handler: it changes
// nothing.
func (s *Server) guard(p permission, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var caller *acl.Caller
		if s.cfg.ACL != nil && !p.open {
			secret, err := acl.SecretFromRequest(r.Header)
			if err != nil {
				s.writeError(w, r, badf("%v", err))
				return
			}
			if caller, err = s.cfg.ACL.Resolve(secret); err != nil {
				s.writeError(w, r, err)
				return
			}
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if err := s.limitWrite(r, caller); err != nil {
				s.writeError(w, r, err)
				return
			}
		}
		if caller != nil {
			switch p.from {
			case fromNone, fromPath:
				name := ""
				if p.from == fromPath {
					name = r.PathValue("name")
				}
				if err := caller.Check(p.res, name, p.access); err != nil {
					s.writeError(w, r, err)
					return
				}
			}
			r = r.WithContext(acl.NewContext(r.Context(), caller))
		}
		h.ServeHTTP(w, r)
	})
}

// callerOf is the caller guard resolved, nil when the server checks no
// tokens (Config.ACL nil).
func (s *Server) callerOf(r *http.Request) *acl.Caller {
	if s.cfg.ACL == nil {
		return nil
	}
	return acl.FromContext(r.Context())
}

// authorize checks a name a handler found (in the body, or by looking up
// an instance) against the route's own table entry.
func (s *Server) authorize(r *http.Request, name string) error {
	c := s.callerOf(r)
	if c == nil {
		return nil
	}
	p, ok := permissions[r.Pattern]
	if !ok || p.open {
		return fmt.Errorf("%w: route %q has no permission to check", acl.ErrDenied, r.Pattern)
	}
	return c.Check(p.res, name, p.access)
}

// mayRead reports whether the caller may read a name under the route's
// table entry (the filter of a listing).
func (s *Server) mayRead(r *http.Request, name string) bool {
	c := s.callerOf(r)
	if c == nil {
		return true
	}
	p := permissions[r.Pattern]
	return c.Allowed(p.res, name, p.access)
}

// authorizeUnknown decides a write on an instance or check this node does
// not know: the registry will refuse it (404), but only a caller that could
// have listed every service learns that it does not exist; anyone else
// gets 403, as for one that exists.
func (s *Server) authorizeUnknown(r *http.Request, notFound error) error {
	c := s.callerOf(r)
	if c == nil || c.Allowed(acl.Service, "", acl.Read) {
		return notFound
	}
	return fmt.Errorf("%w: %s needs service:read on every service to learn about %v",
		acl.ErrDenied, callerName(c), notFound)
}

func callerName(c *acl.Caller) string {
	if c.TokenID == "" {
		return "a request without token"
	}
	return fmt.Sprintf("token %q", c.TokenID)
}

// instanceName is the service of one of this node's instances: the
// registry's, else the agent's own record of it (registered here but not in
// the registry yet, after a restore or a reap), so an instance the agent
// would deregister is never deregistered unchecked.
func (s *Server) instanceName(id string) (string, bool, error) {
	if in, ok := s.reg.Instance(s.agent.Node(), id); ok {
		return in.Name, true, nil
	}
	if ls, ok := s.agent.(LocalServices); ok {
		return ls.LocalServiceName(id)
	}
	return "", false, nil
}

// LocalServices is an optional capability of the Agent: the service name of
// an instance it keeps in its local state.
type LocalServices interface {
	// A record it cannot read is an error, not a missing instance.
	LocalServiceName(id string) (string, bool, error)
}
