package httpapi

import (
	"errors"
	"net/http"

	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/discovery"
)

// GET /v1/operator/keyring: what every member holds.
func (s *Server) listKeys(w http.ResponseWriter, r *http.Request) error {
	kr, ok := s.agent.(Keyring)
	if !ok {
		return badf("%v", discovery.ErrNoEncryption)
	}
	resp, err := kr.ListKeys(r.Context())
	if err != nil {
		return s.keyringError(w, r, err)
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// PUT /v1/operator/keyring {"install"|"use"|"remove": KEY}: acts on every
// member and answers with what each holds afterwards (200 also when it
// failed on some: see "failed"). A refused change is a 4xx and changed
// nothing.
func (s *Server) changeKeys(w http.ResponseWriter, r *http.Request) error {
	body, err := s.readBody(w, r)
	if err != nil {
		return err
	}
	op, key, err := decodeKeyringRequest(body)
	if err != nil {
		return err
	}
	kr, ok := s.agent.(Keyring)
	if !ok {
		return badf("%v", discovery.ErrNoEncryption)
	}
	resp, err := kr.ChangeKeys(r.Context(), op, key)
	if err != nil {
		return s.keyringError(w, r, err)
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// decodeKeyringRequest returns the operation of a PUT body and its key,
// decoded and checked.
func decodeKeyringRequest(body []byte) (string, []byte, error) {
	var req api.KeyringRequest
	if err := decodeJSON(body, &req, false); err != nil {
		return "", nil, err
	}
	var op, text string
	n := 0
	for _, f := range []struct{ op, key string }{
		{api.KeyringInstall, req.Install}, {api.KeyringUse, req.Use}, {api.KeyringRemove, req.Remove},
	} {
		if f.key != "" {
			op, text = f.op, f.key
			n++
		}
	}
	if n != 1 {
		return "", nil, badf(`want exactly one of {"install": KEY}, {"use": KEY}, {"remove": KEY}`)
	}
	key, err := discovery.ParseKey(text)
	if err != nil {
		// ParseKey's message never repeats the key (a secret).
		return "", nil, badf("%s: %v", op, err)
	}
	return op, key, nil
}

// keyringError answers a failed or refused keyring request. The refusals
// say what to do first; none of them changed anything.
func (s *Server) keyringError(w http.ResponseWriter, r *http.Request, err error) error {
	code := 0
	switch {
	case errors.Is(err, discovery.ErrNoEncryption), errors.Is(err, discovery.ErrInvalidKey):
		code = http.StatusBadRequest
	case errors.Is(err, discovery.ErrKeyNotInstalled):
		code = http.StatusNotFound
	case errors.Is(err, discovery.ErrKeyNotEverywhere), errors.Is(err, discovery.ErrPrimaryKey):
		code = http.StatusConflict
	case errors.Is(err, discovery.ErrMembersUnreachable), errors.Is(err, discovery.ErrShutdown),
		errors.Is(err, discovery.ErrLeft):
		code = http.StatusServiceUnavailable
	default:
		return err // statusOf's mapping: timeouts, a client gone
	}
	writeJSON(w, code, api.Error{Error: err.Error()})
	return nil
}
