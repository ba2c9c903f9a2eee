package election

import (
	"context"
	"fmt"
	"net/http"

	"github.com/sidecarhq/sidecar/acl"
	"github.com/sidecarhq/sidecar/fsm"
	"github.com/sidecarhq/sidecar/tlsutil"
)

// ACLResolver is what the Raft leader checks forwarded writes and
// keepalives with (*acl.Resolver): the leader's registry holds the tokens,
// so a client agent can use only a token whose secret it was given.
type ACLResolver interface {
	Resolve(secret string) (*acl.Caller, error)
	AuthorizeCommand(c *acl.Caller, cmd fsm.Command) error
}

type aclBox struct{ r ACLResolver }

// SetACL makes the server check the token of every write and keepalive it
// serves as the Raft leader. The agent builds its resolver over the
// registry after the server, hence a setter; without one (nil) the server
// checks no tokens, as before ACLs.
func (s *Server) SetACL(r ACLResolver) { s.aclr.Store(aclBox{r}) }

func (s *Server) aclResolver() ACLResolver {
	b, _ := s.aclr.Load().(aclBox)
	return b.r
}

// secretOf is the token an RPC request carries for the caller it acts for.
func secretOf(r *http.Request) string { return r.Header.Get(acl.HeaderToken) }

// forwardingContext carries a request's secret on to the leader: a
// follower does not judge the token (its copy of the tokens may lag), it
// passes it on for the leader to.
func forwardingContext(ctx context.Context, secret string) context.Context {
	if secret != "" {
		return acl.NewContext(ctx, &acl.Caller{Secret: secret})
	}
	return ctx
}

// authorizeACL is the leader's check of a write that came over RPC. With a
// secret: the token must exist, may send the command, and the command acts
// for that token only (acl.Resolver.AuthorizeCommand). Without one: the
// command acts for no token, and is either the sending agent's work for its
// own node (its node identity authorises it, SPEC: Security; with TLS the
// first hop checked the node against the certificate) or allowed to the
// anonymous token. It returns the caller to act as, nil without a resolver.
func (s *Server) authorizeACL(secret string, cmd fsm.Command) (*acl.Caller, error) {
	res := s.aclResolver()
	if res == nil {
		return nil, nil
	}
	if secret != "" {
		c, err := res.Resolve(secret)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrPermissionDenied, err)
		}
		if err := res.AuthorizeCommand(c, cmd); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrPermissionDenied, err)
		}
		return c, nil
	}
	anon, err := res.Resolve("")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPermissionDenied, err)
	}
	if by := commandAuth(cmd).By; by != "" {
		return nil, fmt.Errorf("%w: %s acts for token %q but carries no token", ErrPermissionDenied, cmd.Type(), by)
	}
	if nodeIdentity(cmd) {
		return anon, nil
	}
	if err := res.AuthorizeCommand(anon, cmd); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPermissionDenied, err)
	}
	return anon, nil
}

// nodeIdentity reports whether a token-less command is an agent's work for
// its own node: its node entry, instances and check results, its node
// session and the holds on it, and the entries only servers make.
func nodeIdentity(cmd fsm.Command) bool {
	if scope, _ := commandScope(cmd); scope == scopeNode || scope == scopeServers {
		return true
	}
	if g, ok := cmd.(*fsm.GrantLease); ok {
		return g.Session
	}
	return commandAuth(cmd).OnSession
}

// commandAuth is whom a command acts for (GrantLease: its owner).
func commandAuth(cmd fsm.Command) fsm.Auth {
	switch c := cmd.(type) {
	case *fsm.GrantLease:
		return fsm.Auth{By: c.Owner}
	case *fsm.RevokeLease:
		return c.Auth
	case *fsm.AcquireLock:
		return c.Auth
	case *fsm.ReleaseLock:
		return c.Auth
	case *fsm.Campaign:
		return c.Auth
	case *fsm.Resign:
		return c.Auth
	case *fsm.Transfer:
		return c.Auth
	}
	return fsm.Auth{}
}

// keepAliveCaller resolves the caller of a keepalive that came over RPC:
// nil without a resolver (no check), the anonymous caller without a token.
func (s *Server) keepAliveCaller(r *http.Request) (*acl.Caller, error) {
	res := s.aclResolver()
	if res == nil {
		return nil, nil
	}
	c, err := res.Resolve(secretOf(r))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPermissionDenied, err)
	}
	return c, nil
}

// mayKeepAlive is the ownership rule of a keepalive (SPEC: Security): the
// sidecar's own (no caller), a management token, the lease's owner, or,
// for a node session, a request without token (its node keeps it alive).
// Any other token gets fsm.ErrNotOwner.
func (s *Server) mayKeepAlive(ctx context.Context, id string) error {
	c := acl.FromContext(ctx)
	if c == nil || c.Management {
		return nil
	}
	l, ok := s.fsm.Lease(id)
	if !ok {
		return nil // unknown: the tracker answers that
	}
	who := "a request without token"
	if c.TokenID != "" {
		who = fmt.Sprintf("token %q", c.TokenID)
	}
	if l.Session {
		if c.TokenID != "" {
			return fmt.Errorf("%w: lease %q is the node session of %q; %s may not keep it alive", fsm.ErrNotOwner, id, l.Node, who)
		}
		return nil
	}
	if l.Owner != c.TokenID {
		return fmt.Errorf("%w: lease %q belongs to another token; %s may not keep it alive", fsm.ErrNotOwner, id, who)
	}
	return nil
}

// authorizeKeepAlive checks, when TLS is on, a keepalive of a node session
// from a client certificate (the first hop): a client agent keeps alive
// its own node's session only, so one cannot keep a dead node's holds.
func (s *Server) authorizeKeepAlive(r *http.Request, id string) error {
	if s.cfg.TLS == nil || secretOf(r) != "" {
		return nil
	}
	peer, ok := PeerIdentity(r.Context())
	if !ok || peer.Role != tlsutil.RoleClient {
		return nil
	}
	if l, found := s.fsm.Lease(id); found && l.Session && l.Node != peer.Node {
		return fmt.Errorf("%w: lease %q is the node session of %q, the peer is %s", fsm.ErrNotOwner, id, l.Node, peer)
	}
	return nil
}
