package httpapi

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/sidecarhq/sidecar/acl"
	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/fsm"
)

// minChosenSecret is the shortest secret a caller may choose: a chosen
// secret is only as strong as its length, and 16 characters of a random
// alphabet are at least 80 bits.
const minChosenSecret = 16

// PUT /v1/acl/bootstrap: the cluster's first management token, once. The
// registry keeps only the secret's hash; the secret is in this answer and
// nowhere else.
func (s *Server) aclBootstrap(w http.ResponseWriter, r *http.Request) error {
	id, secret := acl.NewSecret()
	_, err := s.agent.Apply(r.Context(), &fsm.ACLBootstrap{Token: fsm.ACLToken{
		ID: id, SecretHash: acl.HashSecret(secret), Description: "bootstrap management token", Management: true,
	}})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.ACLToken{ID: id, Secret: secret})
	return nil
}

// PUT /v1/acl/tokens: create a token (answer {"id","secret"}), with the id
// asked for when one is given and free, or update an existing one's
// description and rules (answer {"id"}).
func (s *Server) aclSetToken(w http.ResponseWriter, r *http.Request) error {
	body, err := s.readBody(w, r)
	if err != nil {
		return err
	}
	var req api.ACLTokenRequest
	if err := decodeJSON(body, &req, false); err != nil {
		return err
	}
	rules, err := canonicalRules(req.Rules)
	if err != nil {
		return err
	}
	tok := fsm.ACLToken{ID: req.ID, Description: req.Description, Rules: rules}
	if req.Management != nil {
		tok.Management = *req.Management
	}
	if req.ID != "" {
		if err := checkID("token id", req.ID); err != nil {
			return err
		}
	}
	if _, exists := s.reg.ACLToken(req.ID); req.ID != "" && (exists || req.ID == fsm.AnonymousTokenID) {
		if req.Secret != "" {
			return badf("a token's secret is chosen when it is created, not by an update")
		}
		old, ok := s.reg.ACLToken(req.ID)
		switch {
		case req.ID == fsm.AnonymousTokenID:
			if tok.Management {
				return badf("the anonymous token cannot be a management token")
			}
		case ok && req.Management == nil:
			tok.Management = old.Management
		}
		if _, err := s.agent.Apply(r.Context(), &fsm.ACLSetToken{Token: tok}); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, api.ACLToken{ID: req.ID})
		return nil
	}
	id, secret := acl.NewSecret()
	if req.ID != "" {
		id = req.ID
	}
	if req.Secret != "" {
		if secret, err = chosenSecret(req.Secret); err != nil {
			return err
		}
	}
	tok.ID, tok.SecretHash = id, acl.HashSecret(secret)
	if _, err := s.agent.Apply(r.Context(), &fsm.ACLSetToken{Token: tok, Create: true}); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.ACLToken{ID: id, Secret: secret})
	return nil
}

// canonicalRules checks rules with acl.ParseRules and returns them in
// their canonical form, so that equal rules are stored as equal bytes.
func canonicalRules(raw json.RawMessage) (json.RawMessage, error) {
	rules, err := acl.ParseRules(raw)
	if err != nil {
		return nil, badf("%v", err)
	}
	b, err := json.Marshal(rules)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// chosenSecret checks a caller-chosen secret: one a request can carry as
// it is (acl.SecretFromRequest's own rules), and long enough.
func chosenSecret(s string) (string, error) {
	h := http.Header{}
	h.Set(acl.HeaderToken, s)
	got, err := acl.SecretFromRequest(h)
	if err != nil || got != s {
		return "", badf("secret: not one a request can carry as it is (printable, no spaces, at most 256 bytes)")
	}
	if len(s) < minChosenSecret {
		return "", badf("secret: shorter than %d characters", minChosenSecret)
	}
	return s, nil
}

func toAPIToken(t *fsm.ACLToken) api.ACLToken {
	// No secret, no hash: the hash of a chosen short secret could be
	// guessed offline.
	return api.ACLToken{ID: t.ID, Description: t.Description, Rules: t.Rules, Management: t.Management,
		CreateIndex: t.CreateIndex, ModifyIndex: t.ModifyIndex}
}

// GET /v1/acl/tokens.
func (s *Server) aclTokens(w http.ResponseWriter, r *http.Request) error {
	out := []api.ACLToken{}
	for _, t := range s.reg.ACLTokens() {
		out = append(out, toAPIToken(t))
	}
	setIndex(w, s.reg.TableIndex(fsm.TableACL))
	writeJSON(w, http.StatusOK, out)
	return nil
}

// GET /v1/acl/tokens/{id}.
func (s *Server) aclToken(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := checkID("token id", id); err != nil {
		return err
	}
	t, ok := s.reg.ACLToken(id)
	if !ok {
		return fmt.Errorf("%w: %q", fsm.ErrUnknownToken, id)
	}
	setIndex(w, s.reg.TableIndex(fsm.TableACL))
	writeJSON(w, http.StatusOK, toAPIToken(t))
	return nil
}

// DELETE /v1/acl/tokens/{id}: its secret is refused from the next request
// on; what it owns stays, owned by an ID no request can present again.
func (s *Server) aclDeleteToken(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := checkID("token id", id); err != nil {
		return err
	}
	if _, err := s.agent.Apply(r.Context(), &fsm.ACLDeleteToken{ID: id}); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]string{"id": id})
	return nil
}
