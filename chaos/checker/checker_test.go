package checker

import (
	"math"
	"strings"
	"testing"
	"time"
)

func op(client int, kind Kind, key, value string, call, ret int64) Op {
	return Op{Client: client, Kind: kind, Key: key, Value: value, Call: call, Return: ret}
}

func check(ops []Op, grants []Grant, leases []LeaseRecord) *Report {
	r := NewRecorder()
	r.ops = ops
	for i := range grants {
		r.grants = append(r.grants, &grants[i])
	}
	for i := range leases {
		r.leases[leases[i].ID] = &leases[i]
	}
	return r.Check(Options{Timeout: 10 * time.Second})
}

func TestCheck_registry(t *testing.T) {
	for _, tc := range []struct {
		name      string
		ops       []Op
		anomalies int
	}{
		{"read after write", []Op{op(0, Put, "k", "a", 0, 10), op(1, Get, "k", "a", 20, 30)}, 0},
		{"concurrent read may miss", []Op{op(0, Put, "k", "a", 0, 10), op(1, Get, "k", "", 5, 30)}, 0},
		{"stale read", []Op{op(0, Put, "k", "a", 0, 10), op(0, Put, "k", "b", 11, 20), op(1, Get, "k", "a", 30, 40)}, 2},
		{"unknown write may land late", []Op{{Kind: Put, Key: "k", Value: "a", Outcome: Unknown, Call: 0, Return: math.MaxInt64},
			op(1, Get, "k", "", 20, 30), op(1, Get, "k", "a", 40, 50)}, 0},
		{"lost write", []Op{op(0, Put, "k", "a", 0, 10), op(1, Get, "k", "", 20, 30)}, 2},
		{"deleted", []Op{op(0, Put, "k", "a", 0, 10), {Kind: Del, Key: "k", Found: true, Call: 11, Return: 12}, op(1, Get, "k", "", 20, 30)}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := check(tc.ops, nil, nil)
			if len(rep.Anomalies) != tc.anomalies {
				t.Errorf("anomalies %d, want %d: %v", len(rep.Anomalies), tc.anomalies, rep.Anomalies)
			}
		})
	}
}

// checkOverwrittenReads: a consistent read that found a value replaced by
// a write acknowledged before it began (porcupine reports it as well).
func TestCheck_overwrittenReads(t *testing.T) {
	get := func(value string, call, ret int64) Op {
		return Op{Client: 1, Kind: Get, Key: "k", Value: value, Found: true, Call: call, Return: ret}
	}
	for _, tc := range []struct {
		name      string
		ops       []Op
		anomalies int
	}{
		{"latest", []Op{op(0, Put, "k", "a", 0, 10), op(0, Put, "k", "b", 11, 20), get("b", 30, 40)}, 0},
		// With porcupine's and the lost write's.
		{"overwritten", []Op{op(0, Put, "k", "a", 0, 10), op(0, Put, "k", "b", 11, 20), get("a", 30, 40)}, 3},
		{"deleted", []Op{op(0, Put, "k", "a", 0, 10), {Kind: Del, Key: "k", Found: true, Call: 11, Return: 20}, get("a", 30, 40)}, 3},
		{"overwrite concurrent with the read", []Op{op(0, Put, "k", "a", 0, 10), op(0, Put, "k", "b", 11, 35), get("a", 30, 40)}, 0},
		// Not this check's (porcupine and the lost write take every put as
		// applied).
		{"overwrite refused", []Op{op(0, Put, "k", "a", 0, 10), {Kind: Put, Key: "k", Value: "b", Err: "refused", Call: 11, Return: 20}, get("a", 30, 40)}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := check(tc.ops, nil, nil)
			if len(rep.Anomalies) != tc.anomalies {
				t.Errorf("anomalies %d, want %d: %v", len(rep.Anomalies), tc.anomalies, rep.Anomalies)
			}
		})
	}
}

// Early finds, on a history still being written, what only a violation
// explains, and nothing that an operation still in flight may explain.
func TestRecorder_Early(t *testing.T) {
	for _, tc := range []struct {
		name      string
		ops       []Op
		anomalies int
	}{
		// The put of "b" may still be in flight: porcupine would flag the
		// read, Early must not.
		{"value of a put in flight", []Op{op(0, Put, "k", "a", 0, 10), {Client: 1, Kind: Get, Key: "k", Value: "b", Found: true, Call: 30, Return: 40}}, 0},
		// A delete may be in flight too.
		{"absent after a put", []Op{op(0, Put, "k", "a", 0, 10), op(1, Get, "k", "", 30, 40)}, 0},
		{"overwritten", []Op{op(0, Put, "k", "a", 0, 10), op(0, Put, "k", "b", 11, 20), {Client: 1, Kind: Get, Key: "k", Value: "a", Found: true, Call: 30, Return: 40}}, 1},
		{"revoked lease granted", []Op{{Kind: Revoke, Lease: "a", Call: 0, Return: 1}, {Kind: TryLock, Key: "l", Lease: "a", Held: true, Token: 5, Call: 2, Return: 3}}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRecorder()
			r.ops = tc.ops
			if got := r.Early(); len(got) != tc.anomalies {
				t.Errorf("anomalies %d, want %d: %v", len(got), tc.anomalies, got)
			}
		})
	}
	r := NewRecorder()
	r.AddGrant(Grant{Name: "q", Lease: "a", Token: 3, Return: 10})
	r.AddGrant(Grant{Name: "q", Lease: "b", Token: 8, Return: 60})
	r.Add(Op{Kind: Fence, Key: "q", Token: 3, Held: true, Found: true, Call: 61, Return: 65})
	r.LeaseGranted("l", time.Second, 0)
	r.LeaseGone("l", "s0", int64(time.Second/2))
	r.Anomaly("restart failed")
	if got := r.Early(); len(got) != 3 {
		t.Errorf("stale fence, early expiry, recorded anomaly: got %v", got)
	}
}

func TestCheck_locks(t *testing.T) {
	try := func(client int, lease string, held bool, token uint64, call, ret int64) Op {
		return Op{Client: client, Kind: TryLock, Key: "l", Lease: lease, Held: held, Token: token, Call: call, Return: ret}
	}
	for _, tc := range []struct {
		name      string
		ops       []Op
		anomalies int
	}{
		{"handover", []Op{try(0, "a", true, 5, 0, 1), {Kind: Unlock, Key: "l", Lease: "a", Call: 2, Return: 3}, try(1, "b", true, 9, 4, 5)}, 0},
		{"busy", []Op{try(0, "a", true, 5, 0, 1), try(1, "b", false, 0, 2, 3)}, 0},
		{"expiry may free it", []Op{try(0, "a", true, 5, 0, 1), try(1, "b", true, 7, 2, 3)}, 0},
		{"token goes back", []Op{try(0, "a", true, 5, 0, 1), {Kind: Unlock, Key: "l", Lease: "a", Call: 2, Return: 3}, try(1, "b", true, 4, 4, 5)}, 1},
		// The lock model and checkRevokedLocks.
		{"revoked lease granted", []Op{{Kind: Revoke, Lease: "a", Call: 0, Return: 1}, try(0, "a", true, 5, 2, 3)}, 2},
		{"revoked during the attempt", []Op{{Kind: Revoke, Lease: "a", Call: 0, Return: 3}, try(0, "a", true, 5, 2, 4)}, 0},
		{"revoked lease refused", []Op{{Kind: Revoke, Lease: "a", Call: 0, Return: 1}, {Kind: TryLock, Key: "l", Lease: "a", Refused: true, Call: 2, Return: 3}}, 0},
		// Token-guarded release: an old token's unlock refused while the
		// same lease holds a newer acquisition is right; releasing it is not.
		{"guarded unlock of an old token refused", []Op{try(0, "a", true, 5, 0, 1), {Kind: Unlock, Key: "l", Lease: "a", Token: 5, Call: 2, Return: 3},
			try(0, "a", true, 9, 4, 5), {Kind: Unlock, Key: "l", Lease: "a", Token: 5, Refused: true, Call: 6, Return: 7}, try(1, "b", false, 0, 8, 9)}, 0},
		{"guarded unlock of an old token released", []Op{try(0, "a", true, 5, 0, 1), {Kind: Unlock, Key: "l", Lease: "a", Token: 5, Call: 2, Return: 3},
			try(0, "a", true, 9, 4, 5), {Kind: Unlock, Key: "l", Lease: "a", Token: 5, Call: 6, Return: 7}}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := check(tc.ops, nil, nil)
			if len(rep.Anomalies) != tc.anomalies {
				t.Errorf("anomalies %d, want %d: %v", len(rep.Anomalies), tc.anomalies, rep.Anomalies)
			}
		})
	}
}

func TestCheck_holdersAndTokens(t *testing.T) {
	ok := []Grant{
		{Name: "q", Lease: "a", Token: 3, Invoke: 0, Return: 10, LastLive: 50},
		{Name: "q", Lease: "b", Token: 8, Invoke: 20, Return: 60, LastLive: 90},
	}
	if rep := check(nil, ok, nil); len(rep.Anomalies) != 0 || rep.Handovers != 1 {
		t.Errorf("clean handover: anomalies %v, handovers %d", rep.Anomalies, rep.Handovers)
	}
	overlap := []Grant{
		{Name: "q", Lease: "a", Token: 3, Invoke: 0, Return: 10, LastLive: 70},
		{Name: "q", Lease: "b", Token: 8, Invoke: 20, Return: 60},
	}
	if rep := check(nil, overlap, nil); len(rep.Anomalies) != 1 || !strings.Contains(rep.Anomalies[0], "was live") {
		t.Errorf("two live holders: anomalies %v", rep.Anomalies)
	}
	dup := []Grant{
		{Name: "q", Lease: "a", Token: 3, Invoke: 0, Return: 10},
		{Name: "q", Lease: "b", Token: 3, Invoke: 20, Return: 30},
	}
	if rep := check(nil, dup, nil); len(rep.Anomalies) == 0 {
		t.Error("duplicate token not reported")
	}
}

// A fence check that began after a greater token was granted must not
// answer current; one that began before may.
func TestCheck_fences(t *testing.T) {
	grants := []Grant{
		{Name: "q", Lease: "a", Token: 3, Invoke: 0, Return: 10},
		{Name: "q", Lease: "b", Token: 8, Invoke: 20, Return: 60},
	}
	fence := func(token uint64, current bool, call, ret int64) Op {
		return Op{Client: 0, Kind: Fence, Key: "q", Token: token, Held: current, Found: true, Call: call, Return: ret}
	}
	for _, tc := range []struct {
		name      string
		op        Op
		anomalies int
	}{
		{"current before the successor", fence(3, true, 30, 40), 0},
		{"overlapping the successor's grant", fence(3, true, 50, 70), 0},
		{"stale current after the successor", fence(3, true, 61, 65), 1},
		{"not current after the successor", fence(3, false, 61, 65), 0},
		{"the successor's own", fence(8, true, 61, 65), 0},
		{"of an election, not the lock", Op{Kind: Fence, Key: "q", Election: true, Token: 3, Held: true, Found: true, Call: 61, Return: 65}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := check([]Op{tc.op}, grants, nil)
			if len(rep.Anomalies) != tc.anomalies {
				t.Errorf("anomalies %d, want %d: %v", len(rep.Anomalies), tc.anomalies, rep.Anomalies)
			}
		})
	}
}

func TestCheck_leases(t *testing.T) {
	sec := int64(time.Second)
	leases := []LeaseRecord{
		{ID: "fine", TTL: time.Second, LastAckSent: sec, Gone: 2*sec + 1},
		{ID: "early", TTL: time.Second, LastAckSent: sec, Gone: 2*sec - 1},
		{ID: "revoked", TTL: time.Second, LastAckSent: sec, Gone: sec, Revoked: true, RevokedAt: sec - 1},
		// Its holder asked to revoke it after it was gone, not knowing.
		{ID: "revokedlate", TTL: time.Second, LastAckSent: sec, Gone: sec + 1, Revoked: true, RevokedAt: sec + 2},
	}
	rep := check(nil, nil, leases)
	if len(rep.Anomalies) != 2 || !strings.Contains(rep.Anomalies[0], "lease early") || !strings.Contains(rep.Anomalies[1], "lease revokedlate") {
		t.Errorf("anomalies %v, want one for lease early and one for revokedlate", rep.Anomalies)
	}
}

func TestRecorder_Act_fencedResource(t *testing.T) {
	r := NewRecorder()
	old := r.AddGrant(Grant{Name: "q", Lease: "a", Token: 3})
	cur := r.AddGrant(Grant{Name: "q", Lease: "b", Token: 8})
	live := func() bool { return true }
	if !r.Act(cur, live) {
		t.Fatal("current token refused")
	}
	if r.Act(old, func() bool { return false }) {
		t.Fatal("stale token accepted")
	}
	if rep := r.Check(Options{}); len(rep.Anomalies) != 0 || rep.FencedRefused != 1 {
		t.Errorf("stale write by a demoted holder: anomalies %v, refused %d", rep.Anomalies, rep.FencedRefused)
	}
	r.Act(old, live)
	if rep := r.Check(Options{}); len(rep.Anomalies) == 0 || !strings.Contains(rep.Anomalies[0], "refused") {
		t.Errorf("stale write by a live holder: anomalies %v", rep.Anomalies)
	}
}
