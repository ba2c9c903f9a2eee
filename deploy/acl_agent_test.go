package deploy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/sidecarhq/sidecar/acl"
)

// fakeACLAgent stands in for an agent's ACL routes (PUT /v1/acl/bootstrap,
// PUT and GET /v1/acl/tokens...), enough to run the deploy files' acl
// steps with the real CLI.
type fakeACLAgent struct {
	addr string
	mu   sync.Mutex
	// tokens by ID; secrets maps a secret to its token's ID.
	tokens  map[string]*fakeToken
	secrets map[string]string
	n       int
}

type fakeToken struct {
	ID          string          `json:"id"`
	Description string          `json:"description,omitempty"`
	Rules       json.RawMessage `json:"rules,omitempty"`
	Management  bool            `json:"management,omitempty"`
}

func newFakeACLAgent(t *testing.T) *fakeACLAgent {
	fa := &fakeACLAgent{tokens: map[string]*fakeToken{}, secrets: map[string]string{}}
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, code int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("PUT /v1/acl/bootstrap", func(w http.ResponseWriter, r *http.Request) {
		fa.mu.Lock()
		defer fa.mu.Unlock()
		for _, tok := range fa.tokens {
			if tok.Management {
				reply(w, 409, map[string]string{"error": "ACLs were bootstrapped already"})
				return
			}
		}
		id, secret := fa.newSecret()
		fa.tokens[id] = &fakeToken{ID: id, Management: true}
		fa.secrets[secret] = id
		reply(w, 200, map[string]string{"id": id, "secret": secret})
	})
	mux.HandleFunc("PUT /v1/acl/tokens", func(w http.ResponseWriter, r *http.Request) {
		fa.mu.Lock()
		defer fa.mu.Unlock()
		if !fa.managementLocked(r.Header.Get(acl.HeaderToken)) {
			reply(w, 403, map[string]string{"error": "permission denied"})
			return
		}
		var req struct {
			fakeToken
			Secret string `json:"secret"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			reply(w, 400, map[string]string{"error": err.Error()})
			return
		}
		if _, err := acl.ParseRules(req.Rules); err != nil {
			reply(w, 400, map[string]string{"error": err.Error()})
			return
		}
		id, secret := fa.newSecret()
		if req.ID != "" {
			id = req.ID
		}
		if _, ok := fa.tokens[id]; ok || id == "anonymous" {
			secret = "" // an update keeps the secret
		} else {
			fa.secrets[secret] = id
		}
		tok := req.fakeToken
		tok.ID = id
		fa.tokens[id] = &tok
		reply(w, 200, map[string]string{"id": id, "secret": secret})
	})
	mux.HandleFunc("GET /v1/acl/tokens/{id}", func(w http.ResponseWriter, r *http.Request) {
		fa.mu.Lock()
		defer fa.mu.Unlock()
		if !fa.managementLocked(r.Header.Get(acl.HeaderToken)) {
			reply(w, 403, map[string]string{"error": "permission denied"})
			return
		}
		tok, ok := fa.tokens[r.PathValue("id")]
		if !ok {
			reply(w, 404, map[string]string{"error": "no such token"})
			return
		}
		reply(w, 200, tok)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	fa.addr = srv.Listener.Addr().String()
	return fa
}

func (fa *fakeACLAgent) newSecret() (id, secret string) {
	fa.n++
	return fmt.Sprintf("t-%d", fa.n), fmt.Sprintf("secret-%d", fa.n)
}

func (fa *fakeACLAgent) managementLocked(secret string) bool {
	tok, ok := fa.tokens[fa.secrets[secret]]
	return ok && tok.Management
}

func (fa *fakeACLAgent) isManagement(secret string) bool {
	fa.mu.Lock()
	defer fa.mu.Unlock()
	return fa.managementLocked(secret)
}

// rules returns the rules of the token with this secret, or of the token
// with this ID ("anonymous").
func (fa *fakeACLAgent) rules(secretOrID string) string {
	fa.mu.Lock()
	defer fa.mu.Unlock()
	id, ok := fa.secrets[secretOrID]
	if !ok {
		id = secretOrID
	}
	if tok, ok := fa.tokens[id]; ok {
		return string(tok.Rules)
	}
	return ""
}

func (fa *fakeACLAgent) count() int {
	fa.mu.Lock()
	defer fa.mu.Unlock()
	return len(fa.tokens)
}
