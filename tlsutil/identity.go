package tlsutil

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Identity is who a verified certificate says its holder is.
type Identity struct {
	Role Role
	Node string
}

func (id Identity) String() string { return string(id.Role) + " " + id.Node }

// Errors of identity checks; test with errors.Is.
var (
	ErrNoCertificate = errors.New("tlsutil: peer sent no verified certificate")
	ErrNoRole        = errors.New("tlsutil: certificate names no role of this domain")
	ErrNoNode        = errors.New("tlsutil: certificate carries no node name")
	ErrWrongRole     = errors.New("tlsutil: certificate has the wrong role")
)

// IdentityOf reads the role and node name of cert for domain without
// verifying its chain: callers verify first (Loader.PeerIdentity does).
// A certificate naming both roles, or neither, has no identity.
func IdentityOf(cert *x509.Certificate, domain string) (Identity, error) {
	domain, err := NormalizeDomain(domain)
	if err != nil {
		return Identity{}, err
	}
	var roles []Role
	for _, r := range []Role{RoleServer, RoleClient} {
		want := RoleName(r, domain)
		for _, n := range cert.DNSNames {
			if strings.EqualFold(n, want) {
				roles = append(roles, r)
				break
			}
		}
	}
	if len(roles) != 1 {
		return Identity{}, fmt.Errorf("%w (want exactly one of %s, %s; have %v)", ErrNoRole,
			RoleName(RoleServer, domain), RoleName(RoleClient, domain), cert.DNSNames)
	}
	node, err := nodeOf(cert)
	if err != nil {
		return Identity{}, err
	}
	return Identity{Role: roles[0], Node: node}, nil
}

// nodeOf reads the node URI SAN; exactly one is allowed, and the common
// name, when set, must agree with it, so that what openssl shows a person is
// what the cluster acts on.
func nodeOf(cert *x509.Certificate) (string, error) {
	var nodes []string
	for _, u := range cert.URIs {
		if u.Scheme != nodeURIScheme || u.Host != nodeURIHost {
			continue
		}
		name, err := url.PathUnescape(strings.TrimPrefix(u.EscapedPath(), "/"))
		if err != nil || ValidNodeName(name) != nil {
			return "", fmt.Errorf("%w: malformed node URI %q", ErrNoNode, u.String())
		}
		nodes = append(nodes, name)
	}
	switch {
	case len(nodes) == 0:
		return "", ErrNoNode
	case len(nodes) > 1:
		return "", fmt.Errorf("%w: %d node URIs", ErrNoNode, len(nodes))
	case cert.Subject.CommonName != "" && cert.Subject.CommonName != nodes[0]:
		return "", fmt.Errorf("%w: common name %q differs from node URI %q", ErrNoNode, cert.Subject.CommonName, nodes[0])
	}
	return nodes[0], nil
}

type ctxKey struct{}

// NewContext returns ctx carrying the peer's identity, for handlers of a
// connection whose handshake has verified it.
func NewContext(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext is the peer identity NewContext stored; ok is false on a
// connection without TLS.
func FromContext(ctx context.Context) (id Identity, ok bool) {
	id, ok = ctx.Value(ctxKey{}).(Identity)
	return id, ok
}
