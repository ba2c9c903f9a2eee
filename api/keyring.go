package api

import (
	"context"
	"net/http"
)

// Keyring operations of PUT /v1/operator/keyring, as KeyringResponse.Op
// names them ("list" for GET).
const (
	KeyringList    = "list"
	KeyringInstall = "install"
	KeyringUse     = "use"
	KeyringRemove  = "remove"
)

// KeyringRequest is the body of PUT /v1/operator/keyring: exactly one of
// its fields is set, to a gossip key as `sidecar keygen` prints it.
type KeyringRequest struct {
	Install string `json:"install,omitempty"`
	Use     string `json:"use,omitempty"`
	Remove  string `json:"remove,omitempty"`
}

// KeyringResponse is the answer of GET and PUT /v1/operator/keyring: what
// the members hold after the operation.
type KeyringResponse struct {
	// Op is list, install, use or remove.
	Op string `json:"op"`
	// Members is how many members were asked: the alive ones when the
	// operation began, the agent itself included.
	Members int `json:"members"`
	// Keys lists every key any member holds: the primary first.
	Keys []KeyringKey `json:"keys"`
	// Nodes is each member's result, sorted by name.
	Nodes []KeyringNode `json:"nodes"`
	// Failed names the members on which the operation failed (no answer,
	// or a refusal), with why. Empty when it succeeded everywhere.
	Failed map[string]string `json:"failed"`
}

// KeyringKey is one key and how many members hold it.
type KeyringKey struct {
	Key string `json:"key"`
	// Members is how many members hold the key (decrypt with it).
	Members int `json:"members"`
	// Primary is how many of them encrypt with it: every member that
	// answered, for the primary key, except in the middle of a use.
	Primary int `json:"primary"`
}

// KeyringNode is one member's keyring after the operation.
type KeyringNode struct {
	Node string `json:"node"`
	// Keys are the member's keys, its primary first; empty when it did not
	// answer.
	Keys []string `json:"keys"`
	// Error says why the operation failed on this member.
	Error string `json:"error,omitempty"`
}

// Keyring lists the gossip keys every member holds
// (GET /v1/operator/keyring).
func (c *Client) Keyring(ctx context.Context) (*KeyringResponse, error) {
	var r KeyringResponse
	if _, err := c.call(ctx, http.MethodGet, "/v1/operator/keyring", "", nil, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// KeyringChange installs, uses or removes a gossip key on every member
// (PUT /v1/operator/keyring). The answer's Failed names the members where
// it failed; a refused change (a use of a key some member lacks, a remove
// of a primary key) is a *StatusError and changed nothing.
func (c *Client) KeyringChange(ctx context.Context, req KeyringRequest) (*KeyringResponse, error) {
	var r KeyringResponse
	if _, err := c.call(ctx, http.MethodPut, "/v1/operator/keyring", "", req, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// KeyringInstall installs key on every member.
func (c *Client) KeyringInstall(ctx context.Context, key string) (*KeyringResponse, error) {
	return c.KeyringChange(ctx, KeyringRequest{Install: key})
}

// KeyringUse makes key, installed on every member, the one they encrypt
// with.
func (c *Client) KeyringUse(ctx context.Context, key string) (*KeyringResponse, error) {
	return c.KeyringChange(ctx, KeyringRequest{Use: key})
}

// KeyringRemove removes key, no longer the primary anywhere, from every
// member.
func (c *Client) KeyringRemove(ctx context.Context, key string) (*KeyringResponse, error) {
	return c.KeyringChange(ctx, KeyringRequest{Remove: key})
}
