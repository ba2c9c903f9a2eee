package election

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/sidecarhq/sidecar/fsm"
	"github.com/sidecarhq/sidecar/tlsutil"
)

// TLS secures everything on the Raft/RPC port: Raft, forwarded writes,
// keepalives, read indexes, change streams and restores. Every connection
// does a mutually verified TLS handshake before a single byte of it is
// parsed, and every dial to the port wants a server certificate.
// *tlsutil.Loader implements it; nil (the default everywhere) keeps the port
// in plain text as before.
type TLS interface {
	// ServerConfig verifies the dialer's certificate against the CA.
	ServerConfig() *tls.Config
	// ClientConfig is built per dial, so rotated files are used at once.
	ClientConfig(want tlsutil.Role) *tls.Config
	// PeerIdentity reads the verified peer's role and node name.
	PeerIdentity(tls.ConnectionState) (tlsutil.Identity, error)
}

// orNil turns a nil *tlsutil.Loader passed as a TLS into a nil TLS: an
// agent that hands its optional loader straight through must get plain
// text, not a nil-pointer panic at the first connection.
func orNil(t TLS) TLS {
	if l, ok := t.(*tlsutil.Loader); ok && l == nil {
		return nil
	}
	return t
}

// handshakeTimeout bounds a peer's handshake and first byte, so a peer
// that connects and says nothing does not hold a goroutine.
const handshakeTimeout = 10 * time.Second

// PeerIdentity is the certificate identity of the peer of an RPC request,
// for handlers deciding what it may do; ok is false without TLS.
func PeerIdentity(ctx context.Context) (tlsutil.Identity, bool) {
	return tlsutil.FromContext(ctx)
}

// serverHandshake runs the server side of the handshake on c and returns
// the TLS connection with the peer's identity.
func serverHandshake(c net.Conn, cfg *tls.Config, t TLS) (*tls.Conn, tlsutil.Identity, error) {
	tc := tls.Server(c, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, tlsutil.Identity{}, err
	}
	id, err := t.PeerIdentity(tc.ConnectionState())
	if err != nil {
		return nil, tlsutil.Identity{}, err
	}
	return tc, id, nil
}

// clientHandshake wraps a dialled connection in TLS that wants a server. A
// failed handshake is reported as a dial error: nothing was sent, so the
// caller may retry elsewhere (rpcClient.call tells the two apart).
func clientHandshake(c net.Conn, network, addr string, t TLS, timeout time.Duration) (net.Conn, error) {
	tc := tls.Client(c, t.ClientConfig(tlsutil.RoleServer))
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, &net.OpError{Op: "dial", Net: network, Addr: c.RemoteAddr(), Err: fmt.Errorf("TLS handshake with %s: %w", addr, err)}
	}
	return tc, nil
}

// withPeerIdentity puts the identity the mux verified into the context of
// every request on the connection (http.Server.ConnContext).
func withPeerIdentity(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*trackedConn); ok && tc.id != nil {
		return tlsutil.NewContext(ctx, *tc.id)
	}
	return ctx
}

// requireServer refuses, when TLS is on, a request whose peer holds no
// server certificate: replacing the whole registry is a server's job.
func (s *Server) requireServer(r *http.Request, what string) error {
	if s.cfg.TLS == nil {
		return nil
	}
	if id, ok := PeerIdentity(r.Context()); !ok || id.Role != tlsutil.RoleServer {
		return fmt.Errorf("%w: %s needs a server certificate, the peer holds %q", ErrPermissionDenied, what, id.String())
	}
	return nil
}

// VerifyServer checks, when TLS is on, that the server at addr (a Raft/RPC
// address gossip announced) holds a server certificate of the cluster's CA
// for node: the leader asks before it makes a gossip member a voter, so a
// member that merely claims role=server in gossip, or holds a client
// certificate, or another server's, never enters the Raft configuration.
// Without TLS it returns nil: gossip is all there is to go by.
func (s *Server) VerifyServer(ctx context.Context, node, addr string) error {
	if s.cfg.TLS == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	d := tls.Dialer{Config: s.cfg.TLS.ClientConfig(tlsutil.RoleServer)}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("%w: %s at %s: %v", ErrPermissionDenied, node, addr, err)
	}
	// Nothing follows the handshake: the server's mux drops a connection
	// that names no protocol.
	defer c.Close()
	id, err := s.cfg.TLS.PeerIdentity(c.(*tls.Conn).ConnectionState())
	if err != nil {
		return fmt.Errorf("%w: %s at %s: %v", ErrPermissionDenied, node, addr, err)
	}
	if id.Role != tlsutil.RoleServer || id.Node != node {
		return fmt.Errorf("%w: %s at %s presents the certificate of %s", ErrPermissionDenied, node, addr, id)
	}
	return nil
}

// authorizeApply checks, when TLS is on, a write that arrives from a client
// certificate (the first hop: a server that forwards it on presents its own
// server certificate): a client agent writes for its own node only, so one
// cannot register an instance, with an exec check, on another node, and
// the entries only the leader makes (gossip status, lease expiry) come
// from servers alone.
func (s *Server) authorizeApply(ctx context.Context, data []byte) error {
	if s.cfg.TLS == nil {
		return nil
	}
	id, ok := PeerIdentity(ctx)
	if !ok {
		return fmt.Errorf("%w: no peer certificate", ErrPermissionDenied)
	}
	if id.Role == tlsutil.RoleServer {
		return nil
	}
	cmd, err := fsm.Decode(data)
	if err != nil {
		return err
	}
	scope, node := commandScope(cmd)
	if scope == scopeServers {
		return fmt.Errorf("%w: %s is written by servers only, the peer is %s", ErrPermissionDenied, cmd.Type(), id)
	}
	if scope == scopeNode && node != id.Node || scope == scopeNodeIfSet && node != "" && node != id.Node {
		return fmt.Errorf("%w: %s for node %q from the certificate of %s", ErrPermissionDenied, cmd.Type(), node, id)
	}
	return nil
}

// Who may send a command from a client certificate.
const (
	scopeAny       = iota // names no node: for the ACL tokens to judge
	scopeNode             // acts for the node named, which must be the peer's
	scopeNodeIfSet        // acts for the node named, if one is
	scopeServers          // made by the leader only
)

// commandScope says whom a command acts for and the node it names.
func commandScope(c fsm.Command) (scope int, node string) {
	switch c := c.(type) {
	case *fsm.RegisterNode:
		return scopeNode, c.Name
	case *fsm.DeregisterNode:
		return scopeNode, c.Name
	case *fsm.RegisterInstance:
		return scopeNode, c.Instance.Node
	case *fsm.DeregisterInstance:
		return scopeNode, c.Node
	case *fsm.UpdateCheck:
		return scopeNode, c.Node
	case *fsm.GrantLease:
		return scopeNodeIfSet, c.Node
	case *fsm.AcquireLock:
		return scopeNodeIfSet, c.Node
	case *fsm.Campaign:
		return scopeNodeIfSet, c.Node
	// The node these name is the one whose session they may act on
	// (fsm.Auth.OnSession).
	case *fsm.ReleaseLock:
		return scopeNodeIfSet, c.Node
	case *fsm.Resign:
		return scopeNodeIfSet, c.Node
	case *fsm.Transfer:
		// Sent by the sidecar the leader campaigns through, for its node.
		return scopeNodeIfSet, c.Node
	case *fsm.RevokeLease:
		return scopeNodeIfSet, c.Node
	case *fsm.SetNodeStatus, *fsm.ExpireLease:
		return scopeServers, ""
	}
	return scopeAny, ""
}
