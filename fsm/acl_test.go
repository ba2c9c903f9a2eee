package fsm_test

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/sidecarhq/sidecar/fsm"
)

// The cast of the ownership tests: a management token, two plain tokens,
// and leases of token A, of no token, and node n1's session.
const (
	tokMgmt = "t-mgmt"
	tokA    = "t-a"
	tokB    = "t-b"
)

func bootstrapCmd() *fsm.ACLBootstrap {
	return &fsm.ACLBootstrap{Token: fsm.ACLToken{ID: tokMgmt, SecretHash: "h-mgmt", Management: true}}
}

func setToken(id, hash string) *fsm.ACLSetToken {
	return &fsm.ACLSetToken{Token: fsm.ACLToken{ID: id, SecretHash: hash, Rules: []byte(`{"lease":"write"}`)}, Create: true}
}

func ownershipWorld() []fsm.Command {
	return []fsm.Command{
		regNode("n1"), regNode("n2"),
		bootstrapCmd(), setToken(tokA, "h-a"), setToken(tokB, "h-b"),
		&fsm.GrantLease{ID: "la", TTL: 10 * sec, Node: "n1", Owner: tokA},
		&fsm.GrantLease{ID: "lb", TTL: 10 * sec, Node: "n1", Owner: tokB},
		&fsm.GrantLease{ID: "l0", TTL: 10 * sec, Node: "n1"},
		&fsm.GrantLease{ID: "ls", TTL: 10 * sec, Node: "n1", Session: true},
	}
}

func by(tok string) fsm.Auth { return fsm.Auth{By: tok} }

func onSession(tok string) fsm.Auth { return fsm.Auth{By: tok, OnSession: true} }

func TestFSM_ACLBootstrap_once(t *testing.T) {
	h := newHarness(t)
	if h.f.ACLBootstrapped() {
		t.Fatal("bootstrapped before any bootstrap")
	}
	requireUnchanged(t, h, &fsm.ACLBootstrap{Token: fsm.ACLToken{ID: "x", SecretHash: "h"}}, fsm.ErrInvalid)
	h.ok(bootstrapCmd())
	if !h.f.ACLBootstrapped() {
		t.Fatal("not bootstrapped after the bootstrap")
	}
	requireUnchanged(t, h, &fsm.ACLBootstrap{Token: fsm.ACLToken{ID: "t-2", SecretHash: "h-2", Management: true}}, fsm.ErrACLBootstrapped)
	if _, ok := h.f.ACLToken("t-2"); ok {
		t.Fatal("a second bootstrap created its token")
	}
}

func TestFSM_ACLSetToken_createUpdateDelete(t *testing.T) {
	h := newHarness(t)
	requireUnchanged(t, h, &fsm.ACLSetToken{Token: fsm.ACLToken{ID: tokA}, Create: true}, fsm.ErrInvalid)
	h.ok(setToken(tokA, "h-a"))
	created := h.lastIndex()
	requireUnchanged(t, h, setToken(tokA, "h-other"), fsm.ErrTokenExists)
	requireUnchanged(t, h, setToken(tokB, "h-a"), fsm.ErrTokenExists)

	// An update without a secret keeps it.
	h.ok(&fsm.ACLSetToken{Token: fsm.ACLToken{ID: tokA, Description: "web"}})
	tok, ok := h.f.ACLTokenBySecretHash("h-a")
	if !ok || tok.ID != tokA || tok.Description != "web" || tok.CreateIndex != created || tok.ModifyIndex != h.lastIndex() {
		t.Fatalf("after update: %+v %v", tok, ok)
	}
	// A new secret replaces the old one in the index.
	h.ok(&fsm.ACLSetToken{Token: fsm.ACLToken{ID: tokA, SecretHash: "h-a2"}})
	if _, ok := h.f.ACLTokenBySecretHash("h-a"); ok {
		t.Fatal("the old secret still finds the token")
	}
	if tok, ok := h.f.ACLTokenBySecretHash("h-a2"); !ok || tok.ID != tokA {
		t.Fatalf("new secret: %+v %v", tok, ok)
	}

	h.ok(&fsm.ACLDeleteToken{ID: tokA})
	if _, ok := h.f.ACLToken(tokA); ok {
		t.Fatal("deleted token still there")
	}
	if _, ok := h.f.ACLTokenBySecretHash("h-a2"); ok {
		t.Fatal("deleted token's secret still finds it")
	}
	requireUnchanged(t, h, &fsm.ACLDeleteToken{ID: tokA}, fsm.ErrUnknownToken)
	// Its secret is free again.
	h.ok(setToken(tokB, "h-a2"))
}

func TestFSM_ACL_snapshotKeepsTokensAndBootstrap(t *testing.T) {
	src := newHarness(t, ownershipWorld()...)
	snap := snapshotBytes(t, src.f)
	dst := &harness{t: t, f: fsm.New(), next: src.next}
	if err := dst.f.Restore(nopCloser(snap)); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	requireSameView(t, dst.f, src.f)
	if !bytes.Equal(snapshotBytes(t, dst.f), snap) {
		t.Fatal("snapshot of the restored registry differs")
	}
	if !dst.f.ACLBootstrapped() {
		t.Fatal("restore lost the bootstrapped flag")
	}
	for _, id := range []string{tokMgmt, tokA, tokB} {
		want, _ := src.f.ACLToken(id)
		got, ok := dst.f.ACLToken(id)
		if !ok || got.SecretHash != want.SecretHash || got.Management != want.Management || string(got.Rules) != string(want.Rules) {
			t.Fatalf("token %s after restore: %+v, want %+v", id, got, want)
		}
	}
	if tok, ok := dst.f.ACLTokenBySecretHash("h-b"); !ok || tok.ID != tokB {
		t.Fatalf("secret index after restore: %+v %v", tok, ok)
	}
	requireUnchanged(t, dst, &fsm.ACLBootstrap{Token: fsm.ACLToken{ID: "t-2", SecretHash: "h-2", Management: true}}, fsm.ErrACLBootstrapped)
	// Ownership survives too.
	requireUnchanged(t, dst, &fsm.RevokeLease{ID: "la", Now: t0, Auth: by(tokB)}, fsm.ErrNotOwner)
}

func TestFSM_ACL_digestChangesWithTokens(t *testing.T) {
	h := newHarness(t)
	d0 := h.f.Digest()
	h.ok(setToken(tokA, "h-a"))
	d1 := h.f.Digest()
	if d1 == d0 {
		t.Fatal("digest unchanged by a new token")
	}
	h.ok(&fsm.ACLSetToken{Token: fsm.ACLToken{ID: tokA, Rules: []byte(`{"lease":"read"}`)}})
	if h.f.Digest() == d1 {
		t.Fatal("digest unchanged by new rules")
	}
	d2 := h.f.Digest()
	h.ok(bootstrapCmd())
	if h.f.Digest() == d2 {
		t.Fatal("digest unchanged by the bootstrap")
	}
}

// Every rule of lease ownership (SPEC: Security), each in a fresh world:
// refused ones change nothing.
func TestFSM_leaseOwnership(t *testing.T) {
	lockOnA := &fsm.AcquireLock{Name: "job", Lease: "la", Node: "n1", Now: t0, Auth: by(tokA)}
	cases := []struct {
		name  string
		setup []fsm.Command
		cmd   fsm.Command
		want  error
	}{
		{"revoke by another token", nil, &fsm.RevokeLease{ID: "la", Now: t0, Auth: by(tokB)}, fsm.ErrNotOwner},
		{"revoke without token", nil, &fsm.RevokeLease{ID: "la", Now: t0}, fsm.ErrNotOwner},
		{"revoke by its token", nil, &fsm.RevokeLease{ID: "la", Now: t0, Auth: by(tokA)}, nil},
		{"revoke by management", nil, &fsm.RevokeLease{ID: "la", Now: t0, Auth: by(tokMgmt)}, nil},
		{"revoke claiming the node session", nil, &fsm.RevokeLease{ID: "la", Node: "n1", Now: t0, Auth: onSession(tokB)}, fsm.ErrNotOwner},
		{"lock by another token", nil, &fsm.AcquireLock{Name: "job", Lease: "la", Node: "n1", Now: t0, Auth: by(tokB)}, fsm.ErrNotOwner},
		{"lock by its token", nil, lockOnA, nil},
		{"lock by management", nil, &fsm.AcquireLock{Name: "job", Lease: "la", Node: "n1", Now: t0, Auth: by(tokMgmt)}, nil},
		{"unlock by another token", []fsm.Command{lockOnA}, &fsm.ReleaseLock{Name: "job", Lease: "la", Now: t0, Auth: by(tokB)}, fsm.ErrNotOwner},
		{"unlock without token", []fsm.Command{lockOnA}, &fsm.ReleaseLock{Name: "job", Lease: "la", Now: t0}, fsm.ErrNotOwner},
		{"unlock by its token", []fsm.Command{lockOnA}, &fsm.ReleaseLock{Name: "job", Lease: "la", Now: t0, Auth: by(tokA)}, nil},
		{"campaign by another token", nil, &fsm.Campaign{Election: "db", Candidate: "c", Lease: "la", Node: "n1", Now: t0, Auth: by(tokB)}, fsm.ErrNotOwner},
		{"anonymous lease by no token", nil, &fsm.AcquireLock{Name: "job", Lease: "l0", Node: "n1", Now: t0}, nil},
		{"anonymous lease by a token", nil, &fsm.AcquireLock{Name: "job", Lease: "l0", Node: "n1", Now: t0, Auth: by(tokB)}, fsm.ErrNotOwner},
		// A node session is no token's, and "no token" is not its owner.
		{"node session without token", nil, &fsm.AcquireLock{Name: "job", Lease: "ls", Node: "n1", Now: t0}, fsm.ErrNotOwner},
		{"node session by a token", nil, &fsm.AcquireLock{Name: "job", Lease: "ls", Node: "n1", Now: t0, Auth: by(tokA)}, fsm.ErrNotOwner},
		{"node session from another node", nil, &fsm.AcquireLock{Name: "job", Lease: "ls", Node: "n2", Now: t0, Auth: onSession("")}, fsm.ErrNotOwner},
		{"node session on its node", nil, &fsm.AcquireLock{Name: "job", Lease: "ls", Node: "n1", Now: t0, Auth: onSession(tokA)}, nil},
		{"node session revoked by another node", nil, &fsm.RevokeLease{ID: "ls", Node: "n2", Now: t0, Auth: onSession("")}, fsm.ErrNotOwner},
		{"node session revoked by its node", nil, &fsm.RevokeLease{ID: "ls", Node: "n1", Now: t0, Auth: onSession("")}, nil},
		{"node session revoked by management", nil, &fsm.RevokeLease{ID: "ls", Now: t0, Auth: by(tokMgmt)}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, append(ownershipWorld(), tc.setup...)...)
			if tc.want != nil {
				requireUnchanged(t, h, tc.cmd, tc.want)
				return
			}
			h.ok(tc.cmd)
		})
	}
}

func TestFSM_GrantLease_sessionHasNoOwner(t *testing.T) {
	h := newHarness(t, regNode("n1"))
	h.ok(&fsm.GrantLease{ID: "s", TTL: 10 * sec, Node: "n1", Session: true, Owner: tokA})
	if l, _ := h.f.Lease("s"); l.Owner != "" || !l.Session {
		t.Fatalf("node session %+v", l)
	}
	requireUnchanged(t, h, &fsm.GrantLease{ID: "s2", TTL: 10 * sec, Session: true}, fsm.ErrInvalid)
	h.ok(&fsm.GrantLease{ID: "a", TTL: 10 * sec, Node: "n1", Owner: tokA})
	if l, _ := h.f.Lease("a"); l.Owner != tokA || l.Session {
		t.Fatalf("token's lease %+v", l)
	}
}

// Only the token that campaigned (or management, or the candidate's own
// node on its node session) acts for a candidate.
func TestFSM_candidateOwnership(t *testing.T) {
	onA := &fsm.Campaign{Election: "db", Candidate: "c1", Lease: "la", Node: "n1", Now: t0, Auth: by(tokA)}
	onSess := &fsm.Campaign{Election: "db", Candidate: "c1", Lease: "ls", Node: "n1", Now: t0, Auth: onSession(tokA)}
	resignAs := func(a fsm.Auth, node string) *fsm.Resign {
		return &fsm.Resign{Election: "db", Candidate: "c1", Node: node, Now: t0, Auth: a}
	}
	cases := []struct {
		name  string
		setup fsm.Command
		cmd   fsm.Command
		want  error
	}{
		{"resign by another token", onA, resignAs(by(tokB), "n1"), fsm.ErrNotOwner},
		{"resign without token", onA, resignAs(by(""), "n1"), fsm.ErrNotOwner},
		{"resign by its token", onA, resignAs(by(tokA), "n1"), nil},
		{"resign by management", onA, resignAs(by(tokMgmt), ""), nil},
		{"take over with another token's lease", onA, &fsm.Campaign{Election: "db", Candidate: "c1", Lease: "lb", Node: "n1", Now: t0, Auth: by(tokB)}, fsm.ErrNotOwner},
		{"on session, resign by another token", onSess, resignAs(by(tokB), "n1"), fsm.ErrNotOwner},
		{"on session, resign claiming another node", onSess, resignAs(onSession(""), "n2"), fsm.ErrNotOwner},
		{"on session, resign by its node", onSess, resignAs(onSession(""), "n1"), nil},
		{"on session, resign by its token", onSess, resignAs(by(tokA), "n1"), nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, append(ownershipWorld(), tc.setup)...)
			if tc.want != nil {
				requireUnchanged(t, h, tc.cmd, tc.want)
				return
			}
			h.ok(tc.cmd)
			if m, ok := h.f.Election("db"); ok && m.Holder != nil {
				t.Fatalf("still a candidate: %+v", m.Holder)
			}
		})
	}
}

// The node's own re-campaign on a new node session (after a restart)
// keeps the candidate's owner: the token that campaigned still resigns it,
// another still cannot.
func TestFSM_Campaign_nodeRecampaignKeepsOwner(t *testing.T) {
	h := newHarness(t, ownershipWorld()...)
	h.ok(&fsm.Campaign{Election: "db", Candidate: "c1", Lease: "ls", Node: "n1", Now: t0, Auth: onSession(tokA)})
	h.ok(&fsm.GrantLease{ID: "ls2", TTL: 10 * sec, Node: "n1", Session: true})
	h.ok(&fsm.Campaign{Election: "db", Candidate: "c1", Lease: "ls2", Node: "n1", Now: t0, Auth: onSession("")})
	m := h.election("db")
	if m.Holder == nil || m.Holder.Lease != "ls2" || m.Holder.Owner != tokA {
		t.Fatalf("after re-campaign: %+v", m.Holder)
	}
	requireUnchanged(t, h, &fsm.Resign{Election: "db", Candidate: "c1", Node: "n1", Now: t0, Auth: by(tokB)}, fsm.ErrNotOwner)
	h.ok(&fsm.Resign{Election: "db", Candidate: "c1", Node: "n1", Now: t0, Auth: by(tokA)})
}

// The candidate first in line (not leading) is its owner's too: another
// token can neither resign it nor campaign over it, and the refusal names
// the token that asked.
func TestFSM_candidateOwnership_firstWaiter(t *testing.T) {
	h := newHarness(t, append(ownershipWorld(),
		&fsm.Campaign{Election: "db", Candidate: "c0", Lease: "lb", Node: "n1", Now: t0, Auth: by(tokB)},
		&fsm.Campaign{Election: "db", Candidate: "c1", Lease: "la", Node: "n1", Now: t0, Auth: by(tokA)})...)
	if m := h.election("db"); len(m.Waiters) != 1 || m.Waiters[0].ID != "c1" {
		t.Fatalf("c1 is not first in line: %+v", m.Waiters)
	}
	r := requireUnchanged(t, h, &fsm.Resign{Election: "db", Candidate: "c1", Node: "n1", Now: t0, Auth: by(tokB)}, fsm.ErrNotOwner)
	if !strings.Contains(r.Err.Error(), `token "`+tokB+`" may not act`) {
		t.Fatalf("refusal %q does not name the token that asked", r.Err)
	}
	requireUnchanged(t, h, &fsm.Campaign{Election: "db", Candidate: "c1", Lease: "lb", Node: "n1", Now: t0, Auth: by(tokB)}, fsm.ErrNotOwner)
	h.ok(&fsm.Resign{Election: "db", Candidate: "c1", Node: "n1", Now: t0, Auth: by(tokA)})
}

// A token is checked field by field, each at its limit: whatever passes
// one check still meets the next, and exactly the limit is allowed.
func TestFSM_ACLSetToken_validation(t *testing.T) {
	tok := func(f func(*fsm.ACLToken)) *fsm.ACLSetToken {
		c := setToken("t-new", "h-new")
		f(&c.Token)
		return c
	}
	rulesOf := func(n int) []byte { return []byte(`"` + strings.Repeat("r", n-2) + `"`) }
	for _, tc := range []struct {
		name string
		cmd  *fsm.ACLSetToken
		ok   bool
	}{
		{"bad id", tok(func(t *fsm.ACLToken) { t.ID = "no spaces" }), false},
		{"secret hash at the limit", tok(func(t *fsm.ACLToken) { t.SecretHash = strings.Repeat("h", 128) }), true},
		{"secret hash too long", tok(func(t *fsm.ACLToken) { t.SecretHash = strings.Repeat("h", 129) }), false},
		{"description at the limit", tok(func(t *fsm.ACLToken) { t.Description = strings.Repeat("d", fsm.MaxTextLen) }), true},
		{"description too long", tok(func(t *fsm.ACLToken) { t.Description = strings.Repeat("d", fsm.MaxTextLen+1) }), false},
		{"rules at the limit", tok(func(t *fsm.ACLToken) { t.Rules = rulesOf(fsm.MaxRulesLen) }), true},
		{"rules too long", tok(func(t *fsm.ACLToken) { t.Rules = rulesOf(fsm.MaxRulesLen + 1) }), false},
		{"anonymous with a secret", tok(func(t *fsm.ACLToken) { t.ID, t.SecretHash = fsm.AnonymousTokenID, "h" }), false},
		{"anonymous as management", tok(func(t *fsm.ACLToken) { t.ID, t.SecretHash, t.Management = fsm.AnonymousTokenID, "", true }), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, bootstrapCmd())
			if tc.ok {
				h.ok(tc.cmd)
				return
			}
			requireUnchanged(t, h, tc.cmd, fsm.ErrInvalid)
		})
	}
}

// A lease's refusal names who asked: the token, or no token.
func TestFSM_leaseOwnerError_namesTheCaller(t *testing.T) {
	h := newHarness(t, ownershipWorld()...)
	for auth, want := range map[string]string{tokB: `token "` + tokB + `" may not use it`, "": "no token may not use it"} {
		r := requireUnchanged(t, h, &fsm.AcquireLock{Name: "job", Lease: "la", Node: "n1", Now: t0, Auth: by(auth)}, fsm.ErrNotOwner)
		if !strings.Contains(r.Err.Error(), want) {
			t.Fatalf("refusal %q does not say %q", r.Err, want)
		}
	}
}

// ACLTokens lists the tokens by ID, whatever order they were created in
// (GET /v1/acl/tokens shows this order).
func TestFSM_ACLTokens_listedByID(t *testing.T) {
	h := newHarness(t)
	for _, id := range []string{"t-d", "t-b", "t-e", "t-a", "t-c"} {
		h.ok(setToken(id, "h-"+id))
	}
	var got []string
	for _, tok := range h.f.ACLTokens() {
		got = append(got, tok.ID)
	}
	if want := []string{"t-a", "t-b", "t-c", "t-d", "t-e"}; !slices.Equal(got, want) {
		t.Fatalf("ACLTokens lists %v, want %v", got, want)
	}
}
