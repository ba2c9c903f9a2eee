package discovery

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"

	"github.com/hashicorp/memberlist"
)

// Roles a member announces in Meta.Role.
const (
	RoleServer = "server" // a Raft voter
	RoleClient = "client" // every other sidecar
)

// MetaVersion is the version of the Meta encoding this package writes.
const MetaVersion = 1

// MaxMetaSize is the largest encoded Meta memberlist carries (its
// MetaMaxSize). The fields sidecar sets take about 150 bytes; the rest is
// room for Tags.
const MaxMetaSize = memberlist.MetaMaxSize

// ErrMetaTooLarge is returned by New and UpdateMeta for a Meta whose
// encoding exceeds MaxMetaSize.
var ErrMetaTooLarge = errors.New("discovery: meta too large")

// Meta is what a member gossips about itself, alongside its name and
// gossip address.
//
// It travels as compact JSON. Decoding ignores fields it does not know and
// keeps the sender's Version, so a newer sidecar may add fields (or bump the
// version for a change in meaning) and older ones still read the fields they
// know; a reader that needs a newer field checks Version first.
type Meta struct {
	// Version is the encoding version of the member that sent this Meta,
	// set when decoding. Encoding always writes MetaVersion.
	Version int `json:"v"`
	// Role is RoleServer or RoleClient.
	Role string `json:"role,omitempty"`
	// RaftAddr is the "ip:port" of the server's Raft/RPC listener (empty on
	// clients).
	RaftAddr string `json:"raft,omitempty"`
	// HTTPAddr and DNSAddr are the "ip:port" of the member's HTTP API and
	// DNS server.
	HTTPAddr string `json:"http,omitempty"`
	DNSAddr  string `json:"dns,omitempty"`
	// BootstrapExpect is the server's --bootstrap-expect (0 when not set),
	// so that servers can check that they agree on it before bootstrapping.
	BootstrapExpect int `json:"expect,omitempty"`
	// Tags carries anything else; keep it small (see MaxMetaSize).
	Tags map[string]string `json:"tags,omitempty"`
}

// IsServer reports whether the member is a Raft voter.
func (m Meta) IsServer() bool { return m.Role == RoleServer }

// clone returns m with its own copy of Tags.
func (m Meta) clone() Meta {
	m.Tags = maps.Clone(m.Tags)
	return m
}

// wireMeta is Meta as sent: with the sender's boot id, a random value each
// Gossip picks in New. It ties a leave intent to one run of a node, so that
// an intent from a node's earlier run can never make a later failure look
// like a graceful leave.
type wireMeta struct {
	Meta
	Boot string `json:"boot"`
}

// encodeMeta returns the wire form of m, or ErrMetaTooLarge.
func encodeMeta(m Meta, boot string) ([]byte, error) {
	m.Version = MetaVersion
	b, err := json.Marshal(wireMeta{Meta: m, Boot: boot})
	if err != nil {
		return nil, fmt.Errorf("discovery: encode meta: %w", err)
	}
	if len(b) > MaxMetaSize {
		return nil, fmt.Errorf("%w: %d bytes encoded, limit %d", ErrMetaTooLarge, len(b), MaxMetaSize)
	}
	return b, nil
}

// decodeMeta parses a peer's meta. It accepts any size memberlist lets
// through and never panics on arbitrary input (FuzzDecodeMeta).
func decodeMeta(b []byte) (Meta, string, error) {
	if len(b) == 0 {
		return Meta{}, "", errors.New("discovery: no meta (not a sidecar?)")
	}
	if len(b) > MaxMetaSize {
		return Meta{}, "", fmt.Errorf("%w: %d bytes", ErrMetaTooLarge, len(b))
	}
	var w wireMeta
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&w); err != nil {
		return Meta{}, "", fmt.Errorf("discovery: decode meta: %w", err)
	}
	if dec.More() {
		return Meta{}, "", errors.New("discovery: decode meta: trailing data")
	}
	if w.Version < 1 {
		return Meta{}, "", fmt.Errorf("discovery: decode meta: version %d", w.Version)
	}
	return w.Meta, w.Boot, nil
}
