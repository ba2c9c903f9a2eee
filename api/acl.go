package api

import (
	"context"
	"net/http"
)

// ACLBootstrap creates the cluster's first management token, once
// (PUT /v1/acl/bootstrap): a second call is a *StatusError with code 409.
// The returned token's Secret is shown only here.
func (c *Client) ACLBootstrap(ctx context.Context) (*ACLToken, error) {
	var t ACLToken
	if _, err := c.call(ctx, http.MethodPut, "/v1/acl/bootstrap", "", nil, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// ACLCreateToken creates a token, or updates one when req.ID is set
// (PUT /v1/acl/tokens). A new token's Secret is shown only here.
func (c *Client) ACLCreateToken(ctx context.Context, req ACLTokenRequest) (*ACLToken, error) {
	var t ACLToken
	if _, err := c.call(ctx, http.MethodPut, "/v1/acl/tokens", "", req, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// ACLTokens lists every token, without secrets (GET /v1/acl/tokens).
func (c *Client) ACLTokens(ctx context.Context) ([]ACLToken, error) {
	var ts []ACLToken
	if _, err := c.call(ctx, http.MethodGet, "/v1/acl/tokens", "", nil, &ts); err != nil {
		return nil, err
	}
	return ts, nil
}

// ACLToken reads one token by its ID (GET /v1/acl/tokens/{id}).
func (c *Client) ACLToken(ctx context.Context, id string) (*ACLToken, error) {
	var t ACLToken
	if _, err := c.call(ctx, http.MethodGet, "/v1/acl/tokens/"+seg(id), "", nil, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// ACLDeleteToken deletes a token (DELETE /v1/acl/tokens/{id}): its secret
// is refused from then on.
func (c *Client) ACLDeleteToken(ctx context.Context, id string) error {
	_, err := c.call(ctx, http.MethodDelete, "/v1/acl/tokens/"+seg(id), "", nil, nil)
	return err
}
