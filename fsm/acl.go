package fsm

import (
	"encoding/json"
	"fmt"
	"sort"
)

// ACLToken is an ACL token as the registry keeps it: its public ID
// (the accessor, which names it in the API and owns leases), the SHA-256
// of its secret (never the secret), and its rules as JSON. The fsm does not
// read the rules: the acl package parses them, and Apply only needs to know
// which tokens are management tokens (ownership of leases and candidates).
type ACLToken struct {
	ID          string          `json:"id"`
	SecretHash  string          `json:"secret_hash,omitempty"`
	Description string          `json:"description,omitempty"`
	Rules       json.RawMessage `json:"rules,omitempty"`
	Management  bool            `json:"management,omitempty"`
	CreateIndex uint64          `json:"create_index"`
	ModifyIndex uint64          `json:"modify_index"`
}

// AnonymousTokenID names the token whose rules apply to a request that
// carries no token. It has no secret.
const AnonymousTokenID = "anonymous"

// Limits of ACL tokens.
const (
	MaxRulesLen       = 64 << 10
	maxSecretHashLen  = 128
	maxDescriptionLen = MaxTextLen
)

// ACLBootstrap creates the first management token, once per cluster.
type ACLBootstrap struct {
	Token ACLToken `json:"token"`
}

// ACLSetToken creates a token, or replaces an existing one's description
// and rules (its secret stays unless SecretHash is given).
type ACLSetToken struct {
	Token ACLToken `json:"token"`
	// Create refuses to replace a token that exists.
	Create bool `json:"create,omitempty"`
}

// ACLDeleteToken deletes a token; whatever it owns stays, owned by an ID
// no request can present again.
type ACLDeleteToken struct {
	ID string `json:"id"`
}

func (ACLBootstrap) Type() CommandType   { return CmdACLBootstrap }
func (ACLSetToken) Type() CommandType    { return CmdACLSetToken }
func (ACLDeleteToken) Type() CommandType { return CmdACLDeleteToken }

func validateToken(t *ACLToken) error {
	if err := checkID("token id", t.ID); err != nil {
		return err
	}
	if err := checkLen("secret hash", t.SecretHash, maxSecretHashLen); err != nil {
		return err
	}
	if err := checkLen("description", t.Description, maxDescriptionLen); err != nil {
		return err
	}
	if len(t.Rules) > MaxRulesLen {
		return invalid("rules are longer than %d bytes", MaxRulesLen)
	}
	if len(t.Rules) > 0 && !json.Valid(t.Rules) {
		return invalid("rules are not JSON")
	}
	if t.ID == AnonymousTokenID && (t.SecretHash != "" || t.Management) {
		return invalid("the anonymous token has no secret and is no management token")
	}
	return nil
}

func (s *state) aclBootstrap(index uint64, c *ACLBootstrap) (*Result, bool) {
	if s.aclBootstrapped {
		return &Result{Err: fmt.Errorf("%w: ACLs were bootstrapped already", ErrACLBootstrapped)}, false
	}
	if c.Token.SecretHash == "" || !c.Token.Management {
		return &Result{Err: invalid("the bootstrap token is a management token with a secret")}, false
	}
	if err := s.putToken(index, &c.Token, true); err != nil {
		return &Result{Err: err}, false
	}
	s.aclBootstrapped = true
	return &Result{}, true
}

func (s *state) aclSetToken(index uint64, c *ACLSetToken) (*Result, bool) {
	if err := s.putToken(index, &c.Token, c.Create); err != nil {
		return &Result{Err: err}, false
	}
	return &Result{}, true
}

// putToken stores a token, keeping the secret hash index in step.
func (s *state) putToken(index uint64, in *ACLToken, create bool) error {
	t := *in
	t.Rules = append(json.RawMessage(nil), in.Rules...)
	old := s.tokens[t.ID]
	if old != nil && create {
		return fmt.Errorf("%w: token %q", ErrTokenExists, t.ID)
	}
	if old == nil && t.SecretHash == "" && t.ID != AnonymousTokenID {
		return invalid("a new token needs a secret")
	}
	if t.SecretHash != "" {
		if owner, ok := s.bySecret[t.SecretHash]; ok && owner != t.ID {
			return fmt.Errorf("%w: secret in use", ErrTokenExists)
		}
	}
	t.CreateIndex = index
	if old != nil {
		t.CreateIndex = old.CreateIndex
		if t.SecretHash == "" {
			t.SecretHash = old.SecretHash
		}
		if old.SecretHash != t.SecretHash {
			delete(s.bySecret, old.SecretHash)
		}
	}
	t.ModifyIndex = index
	s.tokens[t.ID] = &t
	if t.SecretHash != "" {
		s.bySecret[t.SecretHash] = t.ID
	}
	s.touch(index, TableACL)
	return nil
}

func (s *state) aclDeleteToken(index uint64, c *ACLDeleteToken) (*Result, bool) {
	t, ok := s.tokens[c.ID]
	if !ok {
		return &Result{Err: fmt.Errorf("%w: %q", ErrUnknownToken, c.ID)}, false
	}
	delete(s.tokens, c.ID)
	delete(s.bySecret, t.SecretHash)
	s.touch(index, TableACL)
	return &Result{}, true
}

// isManagement reports whether the token with this ID is a management token.
func (s *state) isManagement(id string) bool {
	t, ok := s.tokens[id]
	return ok && id != "" && t.Management
}

// mayUseLease is the ownership rule of SPEC (Security): a lease is used by
// the token that created it ("" for a request without token) or a
// management token; a node session is used by its own node's sidecar on
// its own behalf (onSession, with node the command's node), never by a
// token naming it.
func (s *state) mayUseLease(l *Lease, by string, onSession bool, node string) bool {
	if s.isManagement(by) {
		return true
	}
	if l.Session {
		// No token owns it, so "no token" is not its owner either: a
		// request without token naming another node's session gets no
		// hold on it.
		return onSession && node == l.Node
	}
	return l.Owner == by
}

func (s *state) leaseOwnerErr(l *Lease, by string) error {
	who := "no token"
	if by != "" {
		who = fmt.Sprintf("token %q", by)
	}
	if l.Session {
		return fmt.Errorf("%w: lease %q is the node session of %q; %s may not use it", ErrNotOwner, l.ID, l.Node, who)
	}
	return fmt.Errorf("%w: lease %q belongs to another token; %s may not use it", ErrNotOwner, l.ID, who)
}

// ACLBootstrapped reports whether the cluster's ACLs were bootstrapped.
func (f *FSM) ACLBootstrapped() bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.aclBootstrapped
}

// ACLToken returns a copy of a token by its ID.
func (f *FSM) ACLToken(id string) (*ACLToken, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	t, ok := f.st.tokens[id]
	if !ok {
		return nil, false
	}
	c := *t
	return &c, true
}

// ACLTokenBySecretHash returns a copy of the token whose secret hashes to
// hash.
func (f *FSM) ACLTokenBySecretHash(hash string) (*ACLToken, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	id, ok := f.st.bySecret[hash]
	if !ok {
		return nil, false
	}
	c := *f.st.tokens[id]
	return &c, true
}

// ACLTokens returns copies of every token, by ID.
func (f *FSM) ACLTokens() []*ACLToken {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*ACLToken, 0, len(f.st.tokens))
	for _, t := range f.st.tokens {
		c := *t
		out = append(out, &c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
