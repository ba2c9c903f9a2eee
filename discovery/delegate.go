package discovery

import (
	"encoding/json"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Why a leave intent: memberlist knows whether a node left or failed (a
// node that calls Leave broadcasts a "dead" message about itself, and
// receivers set its state to StateLeft instead of StateDead), but in
// v0.5.4 it does not tell: the state lives in an unexported field that
// shadows Node.State, so the *Node given to EventDelegate.NotifyLeave (and
// returned by Members) always says StateAlive (hashicorp/memberlist#266,
// #293; PR #321 would fix it). So, like Serf, Gossip.Leave first gossips
// its own "leave intent" message naming the node and its boot id, and a
// node that later sees the member go is "left" if it received that intent,
// "failed" otherwise. The intent spreads like a rumour (every receiver
// re-gossips it once) and in every push/pull sync (LocalState), so a node
// that learned of the departure before the intent corrects "failed" to
// "left" (a second event) when the intent arrives.

// Message types sent through memberlist's user-message channel. The first
// byte of every message is its type; unknown types are ignored, so that
// later versions may add some.
const (
	msgLeaveIntent byte = 1
	// msgKeyringRequest (2) and msgKeyringResponse (3): keyring_cluster.go.
)

// pushStateVersion is the first byte of LocalState's data.
const pushStateVersion byte = 1

// maxPushIntents bounds the intents in one push/pull sync.
const maxPushIntents = 1024

// intentMsg announces that the node Name, in its run Boot, is leaving.
type intentMsg struct {
	Name string `json:"n"`
	Boot string `json:"b"`
}

// pushState is what a push/pull sync carries besides memberlist's state.
type pushState struct {
	Left []intentMsg `json:"left,omitempty"`
}

// intentBroadcast is a leave intent in the broadcast queue. A newer intent
// for the same node replaces an older one.
type intentBroadcast struct {
	name string
	msg  []byte
	once sync.Once
	sent chan struct{} // closed when done retransmitting; may be nil
}

func newIntentBroadcast(in intentMsg, sent chan struct{}) *intentBroadcast {
	b, _ := json.Marshal(in) // strings only: cannot fail
	return &intentBroadcast{name: in.Name, msg: append([]byte{msgLeaveIntent}, b...), sent: sent}
}

func (b *intentBroadcast) Invalidates(other memberlist.Broadcast) bool {
	o, ok := other.(*intentBroadcast)
	return ok && o.name == b.name
}

func (b *intentBroadcast) Message() []byte { return b.msg }

func (b *intentBroadcast) Finished() {
	b.once.Do(func() {
		if b.sent != nil {
			close(b.sent)
		}
	})
}

// gossipDelegate is memberlist's Delegate. memberlist calls it from its
// goroutines, concurrently; NotifyMsg and GetBroadcasts run on the packet
// path and must not block.
type gossipDelegate struct{ g *Gossip }

// NodeMeta returns the encoded local Meta (validated to fit in New and
// UpdateMeta).
func (d gossipDelegate) NodeMeta(limit int) []byte {
	b := *d.g.meta.Load()
	if len(b) > limit {
		d.g.log.Error("meta exceeds memberlist's limit; sending none", "size", len(b), "limit", limit)
		return nil
	}
	return b
}

// NotifyMsg handles a user message from a peer; arbitrary bytes are safe
// (FuzzNotifyMsg).
func (d gossipDelegate) NotifyMsg(b []byte) {
	if len(b) == 0 {
		return
	}
	switch b[0] {
	case msgLeaveIntent:
		var in intentMsg
		if err := json.Unmarshal(b[1:], &in); err != nil || in.Name == "" || in.Boot == "" {
			d.g.log.Debug("ignoring malformed leave intent", "size", len(b))
			return
		}
		if d.g.applyIntent(in) {
			// First time heard: pass the rumour on.
			d.g.bcast.QueueBroadcast(newIntentBroadcast(in, nil))
		}
	case msgKeyringRequest:
		d.g.handleKeyringRequest(b[1:])
	case msgKeyringResponse:
		d.g.handleKeyringResponse(b[1:])
	default:
		d.g.log.Debug("ignoring gossip message of unknown type", "type", b[0])
	}
}

// GetBroadcasts hands memberlist the queued leave intents.
func (d gossipDelegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.g.bcast.GetBroadcasts(overhead, limit)
}

// LocalState sends the leave intents this node knows of (of members not
// yet reaped), newest first, so that a node that missed one learns it at
// the next push/pull sync.
func (d gossipDelegate) LocalState(join bool) []byte {
	g := d.g
	type entry struct {
		in    intentMsg
		since time.Time
	}
	var es []entry
	g.mu.Lock()
	for name, ms := range g.members {
		if ms.leaving && ms.boot != "" {
			es = append(es, entry{intentMsg{Name: name, Boot: ms.boot}, ms.m.Since})
		}
	}
	g.mu.Unlock()
	if len(es) == 0 {
		return nil
	}
	slices.SortFunc(es, func(a, b entry) int { return b.since.Compare(a.since) })
	var st pushState
	for _, e := range es[:min(len(es), maxPushIntents)] {
		st.Left = append(st.Left, e.in)
	}
	b, _ := json.Marshal(st)
	return append([]byte{pushStateVersion}, b...)
}

// MergeRemoteState applies the leave intents of a peer's LocalState;
// arbitrary bytes are safe (FuzzNotifyMsg).
func (d gossipDelegate) MergeRemoteState(buf []byte, join bool) {
	if len(buf) == 0 || buf[0] != pushStateVersion {
		return
	}
	var st pushState
	if err := json.Unmarshal(buf[1:], &st); err != nil {
		d.g.log.Debug("ignoring malformed push/pull state", "size", len(buf))
		return
	}
	for _, in := range st.Left[:min(len(st.Left), maxPushIntents)] {
		if in.Name != "" && in.Boot != "" {
			d.g.applyIntent(in)
		}
	}
}

// applyIntent records that member in.Name is leaving, if in.Boot is the
// run of it this node knows, and reports whether that is news. A member
// already marked failed turns left (EventLeave).
func (g *Gossip) applyIntent(in intentMsg) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	ms := g.members[in.Name]
	if ms == nil || ms.boot != in.Boot || ms.leaving {
		return false
	}
	ms.leaving = true
	if ms.m.Status == StatusFailed {
		ms.m.Status = StatusLeft
		ms.m.Since = time.Now()
		g.log.Info("member left (leave heard after its failure)", "member", in.Name)
		g.emitLocked(Event{Type: EventLeave, Member: ms.snapshot()})
		g.recountLocked()
	}
	return true
}

// eventDelegate is memberlist's EventDelegate. memberlist calls it with
// its node lock held, from several goroutines but never concurrently, in
// the order it applies changes; it must not block and must not call back
// into memberlist.
type eventDelegate struct{ g *Gossip }

func (d eventDelegate) NotifyJoin(n *memberlist.Node)   { d.g.nodeAlive(n, true) }
func (d eventDelegate) NotifyUpdate(n *memberlist.Node) { d.g.nodeAlive(n, false) }
func (d eventDelegate) NotifyLeave(n *memberlist.Node)  { d.g.nodeGone(n) }

// nodeAlive records a member that joined (join) or updated its meta.
func (g *Gossip) nodeAlive(n *memberlist.Node, join bool) {
	meta, boot, err := decodeMeta(n.Meta)
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	ms := g.members[n.Name]
	typ := EventUpdate
	if ms == nil {
		ms = &memberState{}
		g.members[n.Name] = ms
		typ = EventJoin
	}
	if join || ms.m.Status != StatusAlive {
		typ = EventJoin
	}
	if ms.boot != boot {
		ms.leaving = false // a new run of the node: an old intent does not apply
	}
	g.noteMetaErrLocked(n.Name, ms, err)
	since := ms.m.Since
	if typ == EventJoin || since.IsZero() {
		since = now
	}
	ms.boot = boot
	ms.m = Member{
		Name:   n.Name,
		Addr:   n.Addr.String(),
		Port:   int(n.Port),
		Meta:   meta,
		Status: StatusAlive,
		Since:  since,
	}
	if typ == EventJoin {
		g.log.Info("member joined", "member", n.Name, "addr", ms.m.Addr, "port", ms.m.Port, "role", meta.Role)
	} else {
		g.log.Debug("member updated", "member", n.Name, "addr", ms.m.Addr, "port", ms.m.Port, "role", meta.Role)
	}
	g.emitLocked(Event{Type: typ, Member: ms.snapshot()})
	g.recountLocked()
}

// nodeGone records a member memberlist declared dead or left.
func (g *Gossip) nodeGone(n *memberlist.Node) {
	g.mu.Lock()
	defer g.mu.Unlock()
	ms := g.members[n.Name]
	if ms == nil {
		// Not seen alive here (cannot happen with memberlist today): take
		// what the node carries.
		meta, boot, err := decodeMeta(n.Meta)
		ms = &memberState{boot: boot, m: Member{Name: n.Name, Addr: n.Addr.String(), Port: int(n.Port), Meta: meta}}
		g.noteMetaErrLocked(n.Name, ms, err)
		g.members[n.Name] = ms
	}
	ms.m.Status = StatusFailed
	typ := EventFail
	if ms.leaving {
		ms.m.Status = StatusLeft
		typ = EventLeave
	}
	ms.m.Since = time.Now()
	if typ == EventFail {
		g.log.Warn("member failed", "member", n.Name, "addr", ms.m.Addr, "role", ms.m.Meta.Role)
	} else {
		g.log.Info("member left", "member", n.Name, "addr", ms.m.Addr, "role", ms.m.Meta.Role)
	}
	g.emitLocked(Event{Type: typ, Member: ms.snapshot()})
	g.recountLocked()
}

// noteMetaErrLocked logs a member's undecodable meta once per distinct
// error.
func (g *Gossip) noteMetaErrLocked(name string, ms *memberState, err error) {
	if err == nil {
		ms.metaErr = ""
		return
	}
	if msg := err.Error(); msg != ms.metaErr {
		ms.metaErr = msg
		g.log.Warn("member has no usable sidecar meta", "member", name, "err", msg)
	}
}
