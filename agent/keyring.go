package agent

import (
	"cmp"
	"context"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/discovery"
	"github.com/sidecarhq/sidecar/httpapi"
)

// The gossip keyring (httpapi.Keyring): the HTTP API's view of
// discovery's cluster-wide keyring operations.

// keyringFile is where the gossip keyring is kept: in the data dir, so
// that keys installed at runtime survive a restart; "" (in memory) for
// --dev and without a data dir.
func (a *Agent) keyringFile() string {
	if a.cfg.Dev || a.cfg.DataDir == "" {
		return ""
	}
	return filepath.Join(a.cfg.DataDir, discovery.KeyringFileName)
}

// ListKeys implements httpapi.Keyring.
func (a *Agent) ListKeys(ctx context.Context) (api.KeyringResponse, error) {
	rep, err := a.gossip.ListKeys(ctx)
	if err != nil {
		return api.KeyringResponse{}, fmt.Errorf("keyring list: %w", err)
	}
	return keyringResponse(rep), nil
}

// ChangeKeys implements httpapi.Keyring.
func (a *Agent) ChangeKeys(ctx context.Context, op string, key []byte) (api.KeyringResponse, error) {
	var rep discovery.KeyringReport
	var err error
	switch op {
	case api.KeyringInstall:
		rep, err = a.gossip.InstallKey(ctx, key)
	case api.KeyringUse:
		rep, err = a.gossip.UseKey(ctx, key)
	case api.KeyringRemove:
		rep, err = a.gossip.RemoveKey(ctx, key)
	default:
		return api.KeyringResponse{}, fmt.Errorf("keyring: unknown operation %q", op)
	}
	if err != nil {
		return api.KeyringResponse{}, fmt.Errorf("keyring %s: %w", op, err)
	}
	return keyringResponse(rep), nil
}

// keyringResponse summarises a report per key (how many members hold it,
// how many encrypt with it) beside each member's own result.
func keyringResponse(rep discovery.KeyringReport) api.KeyringResponse {
	out := api.KeyringResponse{Op: rep.Op, Members: len(rep.Members), Keys: []api.KeyringKey{},
		Nodes: []api.KeyringNode{}, Failed: map[string]string{}}
	byKey := map[string]*api.KeyringKey{}
	for _, m := range rep.Members {
		out.Nodes = append(out.Nodes, api.KeyringNode{Node: m.Node, Keys: slices.Clone(m.Keys.Keys), Error: m.Err})
		if m.Err != "" {
			out.Failed[m.Node] = m.Err
		}
		if out.Nodes[len(out.Nodes)-1].Keys == nil {
			out.Nodes[len(out.Nodes)-1].Keys = []string{}
		}
		for i, k := range m.Keys.Keys {
			e := byKey[k]
			if e == nil {
				e = &api.KeyringKey{Key: k}
				byKey[k] = e
			}
			e.Members++
			if i == 0 {
				e.Primary++
			}
		}
	}
	for _, e := range byKey {
		out.Keys = append(out.Keys, *e)
	}
	// The primary first, then the most widely held.
	slices.SortFunc(out.Keys, func(x, y api.KeyringKey) int {
		return cmp.Or(cmp.Compare(y.Primary, x.Primary), cmp.Compare(y.Members, x.Members), cmp.Compare(x.Key, y.Key))
	})
	return out
}

var _ httpapi.Keyring = (*Agent)(nil)
