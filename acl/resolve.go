package acl

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/sidecarhq/sidecar/fsm"
)

// ErrDenied: the caller may not do this (HTTP 403).
var ErrDenied = errors.New("permission denied")

// ErrTokenNotFound: the request carried a token the registry does not hold
// (never issued, deleted, or mistyped): refused whatever the policy, as
// Consul does, so a revoked token never falls back to anonymous rights.
var ErrTokenNotFound = fmt.Errorf("%w: ACL token not found", ErrDenied)

// HeaderToken carries the secret of a request's token; "Authorization:
// Bearer <secret>" does too.
const HeaderToken = "X-Sidecar-Token"

// maxSecretLen bounds what a header may claim to be a secret.
const maxSecretLen = 256

// SecretFromRequest reads the token a request carries: X-Sidecar-Token,
// else an Authorization bearer token. Two different tokens, a malformed
// Authorization header, or a secret with spaces or control characters are
// errors (400), never silently anonymous.
func SecretFromRequest(h http.Header) (string, error) {
	x := h.Values(HeaderToken)
	if len(x) > 1 {
		return "", fmt.Errorf("%d %s headers", len(x), HeaderToken)
	}
	var fromX, fromAuth string
	if len(x) == 1 {
		fromX = strings.TrimSpace(x[0])
		if fromX == "" {
			return "", fmt.Errorf("empty %s header", HeaderToken)
		}
	}
	if a := h.Values("Authorization"); len(a) > 0 {
		if len(a) > 1 {
			return "", fmt.Errorf("%d Authorization headers", len(a))
		}
		scheme, tok, ok := strings.Cut(strings.TrimSpace(a[0]), " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
			return "", fmt.Errorf("Authorization header is not \"Bearer <token>\"")
		}
		fromAuth = strings.TrimSpace(tok)
	}
	if fromX != "" && fromAuth != "" && fromX != fromAuth {
		return "", fmt.Errorf("%s and Authorization carry different tokens", HeaderToken)
	}
	s := fromX
	if s == "" {
		s = fromAuth
	}
	if len(s) > maxSecretLen {
		return "", fmt.Errorf("token longer than %d bytes", maxSecretLen)
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return "", fmt.Errorf("token holds a space or control character")
		}
	}
	return s, nil
}

// HashSecret is what the registry stores of a secret: secrets are 128
// random bits, so one SHA-256 is enough (a slow hash would cost every
// request and guard nothing a random secret does not).
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// NewSecret returns a new secret and a new token ID, 128 bits of
// crypto/rand each.
func NewSecret() (id, secret string) {
	return "t-" + strings.ToLower(rand.Text()), rand.Text()
}

// Caller is who made a request: its token (none for an anonymous one) and
// what that token may do.
type Caller struct {
	// Secret is the token as sent: forwarded with the caller's writes, so
	// that the Raft leader checks it again.
	Secret string
	// TokenID is the token's ID ("" without a token): the owner of what it
	// creates.
	TokenID    string
	Management bool
	authz      Authorizer
}

// Allowed reports whether the caller may access a named resource.
func (c *Caller) Allowed(res Resource, name string, want Access) bool {
	if c == nil || c.authz == nil {
		return false
	}
	return c.authz.Allowed(res, name, want)
}

// Check returns ErrDenied, saying what was missing, unless allowed.
func (c *Caller) Check(res Resource, name string, want Access) error {
	if c.Allowed(res, name, want) {
		return nil
	}
	what := string(res)
	if name != "" {
		what = fmt.Sprintf("%s %q", res, name)
	}
	return fmt.Errorf("%w: %s needs %s:%s on %s", ErrDenied, c.who(), res, want, what)
}

func (c *Caller) who() string {
	if c == nil || c.TokenID == "" {
		return "a request without token"
	}
	return fmt.Sprintf("token %q", c.TokenID)
}

// By is the caller's token ID for the ownership of what it writes.
func (c *Caller) By() string {
	if c == nil {
		return ""
	}
	return c.TokenID
}

type ctxKey struct{}

// NewContext returns ctx carrying the caller.
func NewContext(ctx context.Context, c *Caller) context.Context {
	return context.WithValue(ctx, ctxKey{}, c)
}

// FromContext returns the caller ctx carries, nil for the sidecar's own
// work (anti-entropy, its node session, health checks).
func FromContext(ctx context.Context) *Caller {
	c, _ := ctx.Value(ctxKey{}).(*Caller)
	return c
}

// TokenStore is the registry's tokens, and what a command's permission
// depends on (fsm.FSM).
type TokenStore interface {
	ACLToken(id string) (*fsm.ACLToken, bool)
	ACLTokenBySecretHash(hash string) (*fsm.ACLToken, bool)
	Instance(node, id string) (*fsm.Instance, bool)
	CheckOwner(node, checkID string) (*fsm.Instance, bool)
}

// Resolver turns secrets into callers under one default policy. Parsed
// rules are cached per token version, so a request costs one hash and two
// map reads.
type Resolver struct {
	store  TokenStore
	policy Policy

	mu    sync.Mutex
	cache map[string]cachedRules
}

type cachedRules struct {
	modify uint64
	authz  Authorizer
}

// NewResolver returns a resolver over the registry's tokens.
func NewResolver(store TokenStore, policy Policy) *Resolver {
	return &Resolver{store: store, policy: policy, cache: map[string]cachedRules{}}
}

// Resolve returns the caller a secret stands for: "" is the anonymous
// caller (the anonymous token's rules, under the policy), an unknown
// secret ErrTokenNotFound.
func (r *Resolver) Resolve(secret string) (*Caller, error) {
	if secret == "" {
		return r.anonymous(), nil
	}
	t, ok := r.store.ACLTokenBySecretHash(HashSecret(secret))
	if !ok {
		return nil, ErrTokenNotFound
	}
	if t.Management {
		return &Caller{Secret: secret, TokenID: t.ID, Management: true, authz: ManageAll}, nil
	}
	return &Caller{Secret: secret, TokenID: t.ID, authz: r.authorizer(t)}, nil
}

func (r *Resolver) anonymous() *Caller {
	t, ok := r.store.ACLToken(fsm.AnonymousTokenID)
	if !ok {
		return &Caller{authz: NewAuthorizer(nil, r.policy)}
	}
	return &Caller{authz: r.authorizer(t)}
}

func (r *Resolver) authorizer(t *fsm.ACLToken) Authorizer {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.cache[t.ID]; ok && c.modify == t.ModifyIndex {
		return c.authz
	}
	rules, err := ParseRules(t.Rules)
	if err != nil {
		// Stored rules were checked when written; rules that no longer
		// parse grant nothing rather than everything.
		rules = Rules{}
		for _, res := range Resources {
			rules[res] = map[string]Access{"": None}
		}
	}
	a := NewAuthorizer(rules, r.policy)
	if len(r.cache) > 4096 {
		clear(r.cache)
	}
	r.cache[t.ID] = cachedRules{modify: t.ModifyIndex, authz: a}
	return a
}
