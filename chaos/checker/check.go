package checker

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

var sprintf = fmt.Sprintf

// Report is what a run did and what the checks found.
type Report struct {
	Ops        int
	ByOutcome  map[Outcome]int
	ByKind     map[Kind]int
	Faults     int
	FaultKinds map[string]int
	// Grants are acquisitions of locks and elections; Handovers count, per
	// name, each change of holder to a strictly greater token.
	Grants    int
	Handovers int
	// The fenced resource's accepted and refused writes.
	FencedAccepted, FencedRefused int
	// Leases whose end was seen and that were not revoked: each checked
	// against its TTL.
	LeasesExpired int
	// Partitions porcupine could not decide in time (not anomalies).
	Undetermined int
	Anomalies    []string
	// Visualizations written for partitions that are not linearizable.
	Visualizations []string
}

// Anomaly records a violation found outside the history (convergence, final
// state).
func (r *Recorder) Anomaly(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.staleWhenLive = append(r.staleWhenLive, fmt.Sprintf(format, args...))
}

// Options tune Check.
type Options struct {
	// OutDir receives porcupine visualizations of failed partitions.
	OutDir string
	// Timeout bounds porcupine on each model.
	Timeout time.Duration
}

// Check runs every check on the record.
func (r *Recorder) Check(opt Options) *Report {
	if opt.Timeout <= 0 {
		opt.Timeout = time.Minute
	}
	ops, grants, leases, faults := r.snapshot()
	r.mu.Lock()
	rep := &Report{
		Ops: len(ops), ByOutcome: map[Outcome]int{}, ByKind: map[Kind]int{},
		Faults: len(faults), FaultKinds: map[string]int{},
		Grants: len(grants), FencedAccepted: r.fencedOK, FencedRefused: r.fencedStale,
		Anomalies: append([]string(nil), r.staleWhenLive...),
	}
	r.mu.Unlock()
	for _, o := range ops {
		rep.ByOutcome[o.Outcome]++
		rep.ByKind[o.Kind]++
	}
	for _, f := range faults {
		rep.FaultKinds[f.Kind]++
	}
	rep.checkLinearizable(ops, opt)
	rep.checkStaleReads(ops)
	rep.checkLostWrites(ops)
	rep.checkPartial(ops, grants, leases)
	return rep
}

// Early runs, on the history recorded so far, the checks that stay sound
// while it is still being written: operations in flight are missing from
// it and keepalives may yet be acknowledged, and none of these checks can
// find an anomaly there that the whole history would clear (porcupine,
// the default reads and the lost writes can, so they wait for Check).
// Whatever it returns, Check reports too. A run calls it while its clients
// work, to stop once a planted bug has shown.
func (r *Recorder) Early() []string {
	ops, grants, leases, _ := r.snapshot()
	r.mu.Lock()
	rep := &Report{Anomalies: append([]string(nil), r.staleWhenLive...)}
	r.mu.Unlock()
	rep.checkPartial(ops, grants, leases)
	return rep.Anomalies
}

// checkPartial runs the checks that Early may run on a history still being
// written; Check runs them too.
func (rep *Report) checkPartial(ops []Op, grants []Grant, leases []LeaseRecord) {
	rep.checkOverwrittenReads(ops)
	rep.checkRevokedLocks(ops)
	rep.checkTokens(grants)
	rep.checkHolders(grants)
	rep.checkFences(ops, grants)
	rep.checkLeases(leases)
}

func (rep *Report) fail(format string, args ...any) {
	rep.Anomalies = append(rep.Anomalies, fmt.Sprintf(format, args...))
}

func toPorcupine(ops []Op) []porcupine.Operation {
	out := make([]porcupine.Operation, 0, len(ops))
	for _, o := range ops {
		out = append(out, porcupine.Operation{ClientId: o.Client, Input: o, Call: o.Call, Return: o.Return})
	}
	return out
}

func (rep *Report) checkLinearizable(ops []Op, opt Options) {
	var reg []Op
	var locks []Op
	var revokes []Op
	leaseLocks := map[string]map[string]bool{}
	for _, o := range ops {
		if o.Outcome == Failed {
			continue // surely did nothing
		}
		switch o.Kind {
		case Put, Del, Get:
			reg = append(reg, o)
		case TryLock, Unlock:
			locks = append(locks, o)
			if leaseLocks[o.Lease] == nil {
				leaseLocks[o.Lease] = map[string]bool{}
			}
			leaseLocks[o.Lease][o.Key] = true
		case Revoke:
			revokes = append(revokes, o)
		}
	}
	// A revoke takes part in the history of every lock its lease touched.
	for _, rv := range revokes {
		for name := range leaseLocks[rv.Lease] {
			c := rv
			c.Key = name
			locks = append(locks, c)
		}
	}
	rep.porcupine("registry", registryModel, reg, opt)
	rep.porcupine("locks", lockModel.ToModel(), locks, opt)
}

func (rep *Report) porcupine(name string, model porcupine.Model, ops []Op, opt Options) {
	if len(ops) == 0 {
		return
	}
	// Check each partition alone so that a slow one only costs itself.
	for _, part := range model.Partition(toPorcupine(ops)) {
		res, info := porcupine.CheckOperationsVerbose(model, part, opt.Timeout)
		switch res {
		case porcupine.Ok:
			continue
		case porcupine.Unknown:
			rep.Undetermined++
			continue
		}
		key := part[0].Input.(Op).Key
		msg := fmt.Sprintf("%s: history of %q (%d operations) is not linearizable", name, key, len(part))
		if opt.OutDir != "" {
			if err := os.MkdirAll(opt.OutDir, 0o755); err == nil {
				path := filepath.Join(opt.OutDir, fmt.Sprintf("%s-%s.html", name, sanitize(key)))
				if err := porcupine.VisualizePath(model, info, path); err == nil {
					rep.Visualizations = append(rep.Visualizations, path)
					msg += ", see " + path
				}
			}
		}
		rep.fail("%s", msg)
	}
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '_'
	}, s)
}

// checkStaleReads: a default read may be stale but must return a value that
// some write put, invoked before the read returned.
func (rep *Report) checkStaleReads(ops []Op) {
	written := map[string]int64{}
	for _, o := range ops {
		if o.Kind == Put && o.Outcome != Failed {
			if t, ok := written[o.Value]; !ok || o.Call < t {
				written[o.Value] = o.Call
			}
		}
	}
	for _, o := range ops {
		if o.Kind != StaleRead || o.Value == "" {
			continue
		}
		if t, ok := written[o.Value]; !ok || t > o.Return {
			rep.fail("read of %q by client %d returned %q, which no write put before", o.Key, o.Client, o.Value)
		}
	}
}

// checkLostWrites: where one acknowledged write on a key is surely the last
// (every other write on the key returned before it was invoked, and none
// has an unknown outcome), the last consistent read of the key returns it.
func (rep *Report) checkLostWrites(ops []Op) {
	byKey := map[string][]Op{}
	for _, o := range ops {
		if o.Outcome != Failed && (o.Kind == Put || o.Kind == Del || o.Kind == Get) {
			byKey[o.Key] = append(byKey[o.Key], o)
		}
	}
	for key, kops := range byKey {
		var last *Op
		for i := range kops {
			o := &kops[i]
			if (o.Kind == Put || o.Kind == Del) && o.Outcome == OK && (last == nil || o.Call > last.Call) {
				last = o
			}
		}
		if last == nil {
			continue
		}
		sure := true
		var read *Op
		for i := range kops {
			o := &kops[i]
			if o == last {
				continue
			}
			if (o.Kind == Put || o.Kind == Del) && o.Return >= last.Call {
				sure = false
			}
			if o.Kind == Get && o.Call > last.Return && (read == nil || o.Call > read.Call) {
				read = o
			}
		}
		if !sure || read == nil {
			continue
		}
		want := ""
		if last.Kind == Put {
			want = last.Value
		}
		if read.Value != want {
			rep.fail("lost write: %q acknowledged %s(%q) by client %d, the last read by client %d returned %q",
				key, last.Kind, last.Value, last.Client, read.Client, read.Value)
		}
	}
}

// checkOverwrittenReads: a consistent read never returns a value that a
// write acknowledged before the read began had replaced (every put writes
// a value of its own, so the value names the put). Porcupine finds these
// too; this check names them, and stays sound on an incomplete history
// (Early): the put, the overwrite and the read are all recorded.
func (rep *Report) checkOverwrittenReads(ops []Op) {
	put := map[string]Op{}       // by value
	written := map[string][]Op{} // applied puts and deletes, by key
	for _, o := range ops {
		if o.Kind == Put && o.Outcome == OK && o.Err == "" {
			put[o.Value] = o
		}
		if (o.Kind == Put || o.Kind == Del) && o.Outcome == OK && o.Err == "" {
			written[o.Key] = append(written[o.Key], o)
		}
	}
	for _, rd := range ops {
		if rd.Kind != Get || !rd.Found {
			continue
		}
		p, ok := put[rd.Value]
		if !ok || p.Key != rd.Key {
			continue
		}
		for _, w := range written[rd.Key] {
			if w.Call > p.Return && w.Return < rd.Call {
				rep.fail("%s: client %d's consistent read at %v returned %q, which client %d's %s acknowledged at %v had replaced",
					rd.Key, rd.Client, time.Duration(rd.Call), rd.Value, w.Client, w.Kind, time.Duration(w.Return))
				break
			}
		}
	}
}

// checkRevokedLocks: a lease whose revocation was answered (revoked, or
// already unknown) never gets a lock afterwards. The lock model finds
// these too; this check names them and holds on an incomplete history.
func (rep *Report) checkRevokedLocks(ops []Op) {
	revoked := map[string]int64{} // lease -> earliest answered revocation
	for _, o := range ops {
		if o.Kind == Revoke && o.Outcome == OK {
			if t, ok := revoked[o.Lease]; !ok || o.Return < t {
				revoked[o.Lease] = o.Return
			}
		}
	}
	for _, o := range ops {
		if o.Kind != TryLock || o.Outcome != OK || !o.Held {
			continue
		}
		if t, ok := revoked[o.Lease]; ok && t < o.Call {
			rep.fail("%s: token %d granted to client %d on lease %s, whose revocation was answered at %v",
				o.Key, o.Token, o.Client, o.Lease, time.Duration(t))
		}
	}
}

// checkTokens: per name, a token belongs to one lease, and a grant that
// returned before another was invoked has the smaller token.
func (rep *Report) checkTokens(grants []Grant) {
	byName := groupGrants(grants)
	for name, gs := range byName {
		owner := map[uint64]string{}
		for _, g := range gs {
			if o, ok := owner[g.Token]; ok && o != g.Lease {
				rep.fail("%s: token %d handed to leases %s and %s", name, g.Token, o, g.Lease)
			}
			owner[g.Token] = g.Lease
		}
		sort.Slice(gs, func(i, j int) bool { return gs[i].Return < gs[j].Return })
		for i := range gs {
			for j := i + 1; j < len(gs); j++ {
				if gs[i].Return < gs[j].Invoke && gs[i].Lease != gs[j].Lease && gs[j].Token <= gs[i].Token {
					rep.fail("%s: token %d (client %d) granted after token %d (client %d) returned", name,
						gs[j].Token, gs[j].Client, gs[i].Token, gs[i].Client)
				}
			}
		}
		sort.Slice(gs, func(i, j int) bool { return gs[i].Token < gs[j].Token })
		for i := 1; i < len(gs); i++ {
			if gs[i].Token > gs[i-1].Token && gs[i].Lease != gs[i-1].Lease {
				rep.Handovers++
			}
		}
	}
}

// checkHolders: a holder that confirmed its session live after acting did
// so before any later holder's grant returned; else two holders were live
// at once.
func (rep *Report) checkHolders(grants []Grant) {
	for name, gs := range groupGrants(grants) {
		sort.Slice(gs, func(i, j int) bool { return gs[i].Token < gs[j].Token })
		for i := range gs {
			if gs[i].LastLive == 0 {
				continue
			}
			for j := i + 1; j < len(gs); j++ {
				if gs[j].Token > gs[i].Token && gs[j].Lease != gs[i].Lease && gs[i].LastLive > gs[j].Return {
					rep.fail("%s: client %d (token %d) was live %v after client %d (token %d) was granted it", name,
						gs[i].Client, gs[i].Token, time.Duration(gs[i].LastLive-gs[j].Return), gs[j].Client, gs[j].Token)
				}
			}
		}
	}
}

// checkFences: a fence check is linearizable, so one that began after a
// greater token of its name was granted (the grant acknowledged) must not
// answer that its own token is current.
func (rep *Report) checkFences(ops []Op, grants []Grant) {
	by := groupGrants(grants)
	for _, o := range ops {
		if o.Kind != Fence || o.Outcome != OK || !o.Held {
			continue
		}
		k := o.Key
		if o.Election {
			k = "election/" + k
		}
		for _, g := range by[k] {
			if g.Token > o.Token && g.Return < o.Call {
				rep.fail("%s: client %d's fence check of token %d at %v answered current, but token %d was granted to client %d at %v",
					k, o.Client, o.Token, time.Duration(o.Call), g.Token, g.Client, time.Duration(g.Return))
				break
			}
		}
	}
}

func groupGrants(grants []Grant) map[string][]Grant {
	out := map[string][]Grant{}
	for _, g := range grants {
		k := g.Name
		if g.Election {
			k = "election/" + k
		}
		out[k] = append(out[k], g)
	}
	return out
}

// checkLeases: a lease nobody had asked to revoke when it was seen gone
// (a revocation asked for later, by a client that did not know, explains
// nothing) is never gone before the send time of its last acknowledged
// keepalive plus its TTL.
func (rep *Report) checkLeases(leases []LeaseRecord) {
	for _, l := range leases {
		if l.Gone == 0 || l.TTL == 0 || l.Revoked && l.RevokedAt <= l.Gone {
			continue
		}
		rep.LeasesExpired++
		if early := l.LastAckSent + int64(l.TTL) - l.Gone; early > 0 {
			rep.fail("lease %s (ttl %v) expired %v early: gone on %s at %v, last acknowledged keepalive sent at %v",
				l.ID, l.TTL, time.Duration(early), l.GoneNode, time.Duration(l.Gone), time.Duration(l.LastAckSent))
		}
	}
}

// String summarises the report.
func (rep *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "operations %d (ok %d, failed %d, unknown %d):", rep.Ops, rep.ByOutcome[OK], rep.ByOutcome[Failed], rep.ByOutcome[Unknown])
	kinds := make([]string, 0, len(rep.ByKind))
	for k := range rep.ByKind {
		kinds = append(kinds, string(k))
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		fmt.Fprintf(&b, " %s %d", k, rep.ByKind[Kind(k)])
	}
	fmt.Fprintf(&b, "\nfaults %d:", rep.Faults)
	fk := make([]string, 0, len(rep.FaultKinds))
	for k := range rep.FaultKinds {
		fk = append(fk, k)
	}
	sort.Strings(fk)
	for _, k := range fk {
		fmt.Fprintf(&b, " %s %d", k, rep.FaultKinds[k])
	}
	fmt.Fprintf(&b, "\ngrants %d, handovers with strictly increasing tokens %d; fenced resource accepted %d, refused %d; leases expired and checked against TTL %d; undetermined partitions %d",
		rep.Grants, rep.Handovers, rep.FencedAccepted, rep.FencedRefused, rep.LeasesExpired, rep.Undetermined)
	fmt.Fprintf(&b, "\nanomalies %d", len(rep.Anomalies))
	for i, a := range rep.Anomalies {
		if i == 20 {
			fmt.Fprintf(&b, "\n  ... and %d more", len(rep.Anomalies)-20)
			break
		}
		fmt.Fprintf(&b, "\n  - %s", a)
	}
	return b.String()
}
