// Package checker records what the clients of a chaos run did and checks the
// record against sidecar's guarantees.
package checker

import (
	"encoding/json"
	"io"
	"math"
	"sort"
	"sync"
	"time"
)

// Outcome is what a client learned of an operation.
type Outcome int

// Outcomes. A failed operation surely did nothing; an unknown one may or may
// not have taken effect.
const (
	OK Outcome = iota
	Failed
	Unknown
)

func (o Outcome) String() string {
	switch o {
	case OK:
		return "ok"
	case Failed:
		return "failed"
	}
	return "unknown"
}

// Kind is the kind of a recorded operation.
type Kind string

// Operation kinds.
const (
	// Registry, one key per service instance ID.
	Put       Kind = "put"
	Del       Kind = "del"
	Get       Kind = "get"       // consistent read
	StaleRead Kind = "staleread" // default read of a local copy
	// Try-locks (no waiting line), checked for linearizability.
	TryLock Kind = "trylock"
	Unlock  Kind = "unlock"
	Revoke  Kind = "revoke"
	// Fence is a holder's fence check of its token before it acts:
	// Held is the answer "current", Found that there was an answer.
	Fence Kind = "fence"
)

// Op is one client operation. Times are nanoseconds since the start of the
// run; an operation of unknown outcome returns at math.MaxInt64.
type Op struct {
	Client   int
	Kind     Kind
	Key      string // registry key or lock name
	Value    string // value written, or read
	Found    bool   // read found a value; del removed one
	Lease    string
	Election bool // a fence check of an election (else of a lock)
	Held     bool
	Token    uint64
	Outcome  Outcome
	// NotHeld is set when an unlock or lock was refused because the lease
	// held nothing or was unknown (a definite answer).
	Refused bool
	Err     string
	Call    int64
	Return  int64
}

// Grant is one acquisition of a lock or an election, and what its holder did
// with it.
type Grant struct {
	Name     string
	Election bool
	Client   int
	Lease    string
	Token    uint64
	Invoke   int64
	Return   int64
	// LastLive is when the holder last confirmed, after acting, that its
	// session was surely live (0: never acted).
	LastLive int64
	Acts     int
}

// LeaseRecord follows one lease granted by a client.
type LeaseRecord struct {
	ID  string
	TTL time.Duration
	// LastAckSent is the time a client sent the last keepalive the servers
	// acknowledged (the grant's invoke time at first): the lease cannot
	// expire before LastAckSent + TTL.
	LastAckSent int64
	// Revoked: a client asked to revoke it, first at RevokedAt; an end
	// seen after that says nothing of TTLs (one seen before it does: the
	// lease was gone before anyone asked).
	Revoked   bool
	RevokedAt int64
	// Gone is when a server's registry was first seen without it (0: never).
	Gone     int64
	GoneNode string
}

// Fault is one fault injected.
type Fault struct {
	Kind        string
	Detail      string
	Start, Stop int64
}

// Recorder collects a run's history. It is safe for concurrent use.
type Recorder struct {
	start time.Time

	mu     sync.Mutex
	ops    []Op
	grants []*Grant
	leases map[string]*LeaseRecord
	faults []Fault
	// Fenced resource: the highest token accepted per name, and the writes
	// it rejected although their holder was surely live after writing.
	fenced        map[string]uint64
	fencedOK      int
	fencedStale   int
	staleWhenLive []string
}

// NewRecorder starts the clock of a run.
func NewRecorder() *Recorder {
	return &Recorder{start: time.Now(), leases: map[string]*LeaseRecord{}, fenced: map[string]uint64{}}
}

// Now is the time since the start of the run, in nanoseconds.
func (r *Recorder) Now() int64 { return int64(time.Since(r.start)) }

// At converts a wall time to run time.
func (r *Recorder) At(t time.Time) int64 { return int64(t.Sub(r.start)) }

// Add records an operation; one of unknown outcome never returns.
func (r *Recorder) Add(op Op) {
	if op.Outcome == Unknown {
		op.Return = math.MaxInt64
	}
	r.mu.Lock()
	r.ops = append(r.ops, op)
	r.mu.Unlock()
}

// AddGrant records an acquisition and returns it for the holder to update
// through Act.
func (r *Recorder) AddGrant(g Grant) *Grant {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := &g
	r.grants = append(r.grants, p)
	return p
}

// RecentGrant returns a copy of one of the last 32 grants, picked with
// pick (rand.Intn), for a fence check by someone who is not its holder.
func (r *Recorder) RecentGrant(pick func(int) int) (Grant, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := min(len(r.grants), 32)
	if n == 0 {
		return Grant{}, false
	}
	return *r.grants[len(r.grants)-1-pick(n)], true
}

// Act is a holder's write to the fenced resource with its token: the
// resource accepts tokens no lower than the highest it accepted for the
// name. live reports, after the write, whether the holder was still surely
// live; a write refused as stale although its holder was live after it is
// an anomaly (two holders live at once).
func (r *Recorder) Act(g *Grant, live func() bool) bool {
	r.mu.Lock()
	ok := g.Token >= r.fenced[g.Name]
	if ok {
		r.fenced[g.Name] = g.Token
		r.fencedOK++
	} else {
		r.fencedStale++
	}
	max := r.fenced[g.Name]
	r.mu.Unlock()
	after := live()
	now := r.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	g.Acts++
	if after {
		g.LastLive = now
		if !ok {
			r.staleWhenLive = append(r.staleWhenLive,
				sprintf("%s: token %d refused (resource at %d) while its holder (client %d) was live", g.Name, g.Token, max, g.Client))
		}
	}
	return ok
}

// LeaseGranted records a lease a client was granted.
func (r *Recorder) LeaseGranted(id string, ttl time.Duration, invoke int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.leases[id]; !ok {
		r.leases[id] = &LeaseRecord{ID: id, TTL: ttl, LastAckSent: invoke}
	}
}

// KeepAliveAcked records the send time of an acknowledged keepalive.
func (r *Recorder) KeepAliveAcked(id string, sent int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if l := r.leases[id]; l != nil && sent > l.LastAckSent {
		l.LastAckSent = sent
	}
}

// Revoking marks a lease a client asks to revoke, before the request is
// sent.
func (r *Recorder) Revoking(id string) {
	now := r.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.leases[id]
	if l == nil {
		l = &LeaseRecord{ID: id}
		r.leases[id] = l
	}
	if !l.Revoked {
		l.Revoked, l.RevokedAt = true, now
	}
}

// LeaseGone records that a node's registry no longer holds a lease.
func (r *Recorder) LeaseGone(id, node string, at int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if l := r.leases[id]; l != nil && l.Gone == 0 {
		l.Gone, l.GoneNode = at, node
	}
}

// AddFault records a fault.
func (r *Recorder) AddFault(f Fault) {
	r.mu.Lock()
	r.faults = append(r.faults, f)
	r.mu.Unlock()
}

// snapshot copies the record for checking.
func (r *Recorder) snapshot() (ops []Op, grants []Grant, leases []LeaseRecord, faults []Fault) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ops = append(ops, r.ops...)
	for _, g := range r.grants {
		grants = append(grants, *g)
	}
	for _, l := range r.leases {
		leases = append(leases, *l)
	}
	sort.Slice(leases, func(i, j int) bool { return leases[i].ID < leases[j].ID })
	faults = append(faults, r.faults...)
	return
}

// WriteHistory writes the whole record as one JSON document (operations,
// grants, leases, faults; times in nanoseconds since the start), so that an
// anomaly can be read in its context after the run.
func (r *Recorder) WriteHistory(w io.Writer) error {
	ops, grants, leases, faults := r.snapshot()
	enc := json.NewEncoder(w)
	enc.SetIndent("", " ")
	return enc.Encode(struct {
		Ops    []Op
		Grants []Grant
		Leases []LeaseRecord
		Faults []Fault
	}{ops, grants, leases, faults})
}
