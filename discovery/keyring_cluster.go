package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// Cluster-wide keyring operations.
//
// Like Consul's `keyring`, an operation acts on every member and reports
// what each one holds afterwards. memberlist has no queries (Serf adds
// them on top), so this package adds the smallest request/response it
// needs on memberlist's user messages: the node asked sends each alive
// member a request over memberlist's reliable stream (SendReliable, a TCP
// connection per message), and each member answers with its keyring the
// same way, matched by a random request id.
//
// Why gossip rather than each member's HTTP API (whose address is in the
// meta): the HTTP API listens on loopback by default, so it cannot be
// reached from other hosts, and an HTTP route that changes keys on the
// say-so of anyone who reaches it would need its own authentication. Gossip
// reaches every member by construction, and with encryption on (the only
// case with a keyring) memberlist drops every message not sealed with one
// of the receiver's keys (AES-GCM, GossipVerifyIncoming): only a member of
// the cluster can ask. Keys travel inside those sealed messages, as in
// Consul.
//
// Safety of a rotation: install adds a key everywhere (every member then
// decrypts with it); use is refused unless every alive member answered
// that it holds the key, so no member starts encrypting with a key some
// other member cannot read; remove is refused while any member still
// encrypts with the key, or when a member did not answer. Members that are
// down during a rotation miss it (see README).

// Message types of the keyring exchange (see delegate.go).
const (
	msgKeyringRequest  byte = 2
	msgKeyringResponse byte = 3
)

// Keyring operations.
const (
	KeyringList    = "list"
	KeyringInstall = "install"
	KeyringUse     = "use"
	KeyringRemove  = "remove"
)

var (
	// ErrKeyNotEverywhere: use of a key that some members do not hold.
	ErrKeyNotEverywhere = errors.New("discovery: key not installed on every member")
	// ErrMembersUnreachable: use or remove was refused because members did
	// not answer the check before it; nothing was changed.
	ErrMembersUnreachable = errors.New("discovery: members did not answer")
)

// keyringQueueSize bounds the keyring requests waiting to be applied on a
// member. An operator runs one operation at a time; 64 leaves room for a
// few agents asked at once, and a request dropped on overflow is reported
// by its sender as not answered.
const keyringQueueSize = 64

// keyringSendConcurrency bounds the streams one operation opens at once,
// so that asking a thousand members does not open a thousand connections.
const keyringSendConcurrency = 32

// keyringRequest asks a member to list its keys or change them.
type keyringRequest struct {
	ID   string `json:"id"`
	From string `json:"from"` // the member to answer
	Op   string `json:"op"`
	Key  string `json:"key,omitempty"`
}

// keyringResponse is a member's answer: its keys after the operation,
// primary first, or why the operation failed there.
type keyringResponse struct {
	ID    string   `json:"id"`
	Node  string   `json:"node"`
	Keys  []string `json:"keys,omitempty"`
	Error string   `json:"error,omitempty"`
}

// MemberKeyring is one member's part of a KeyringReport.
type MemberKeyring struct {
	Node string
	// Keys is the member's keyring after the operation (primary first);
	// empty when it did not answer.
	Keys KeyringState
	// Err says why the operation failed on this member: no answer, or its
	// refusal. "" when it succeeded.
	Err string
}

// KeyringReport is the outcome of a cluster-wide keyring operation: every
// member asked (the alive members when it began, this node included),
// sorted by name.
type KeyringReport struct {
	Op      string
	Members []MemberKeyring
}

// Failed returns the members on which the operation failed.
func (r KeyringReport) Failed() []MemberKeyring {
	var out []MemberKeyring
	for _, m := range r.Members {
		if m.Err != "" {
			out = append(out, m)
		}
	}
	return out
}

// LocalKeyring returns this node's keyring, or ErrNoEncryption.
func (g *Gossip) LocalKeyring() (KeyringState, error) {
	if g.keyring == nil {
		return KeyringState{}, ErrNoEncryption
	}
	return g.keyring.state(), nil
}

// ListKeys asks every alive member for its keyring.
func (g *Gossip) ListKeys(ctx context.Context) (KeyringReport, error) {
	return g.keyringOp(ctx, KeyringList, nil)
}

// InstallKey installs key on every alive member: they all decrypt with it
// from then on. Members that fail are in the report's Failed.
func (g *Gossip) InstallKey(ctx context.Context, key []byte) (KeyringReport, error) {
	return g.keyringOp(ctx, KeyringInstall, key)
}

// UseKey makes key the primary (the key messages are encrypted with) on
// every alive member. It first checks that every alive member holds key,
// and changes nothing (ErrKeyNotEverywhere, ErrMembersUnreachable) unless
// all do.
func (g *Gossip) UseKey(ctx context.Context, key []byte) (KeyringReport, error) {
	return g.keyringOp(ctx, KeyringUse, key)
}

// RemoveKey removes key from every alive member. It first checks that no
// member uses key as its primary (ErrPrimaryKey), that some member holds it
// (ErrKeyNotInstalled) and that every member answered
// (ErrMembersUnreachable), and changes nothing otherwise.
func (g *Gossip) RemoveKey(ctx context.Context, key []byte) (KeyringReport, error) {
	return g.keyringOp(ctx, KeyringRemove, key)
}

func (g *Gossip) keyringOp(ctx context.Context, op string, key []byte) (KeyringReport, error) {
	if g.keyring == nil {
		return KeyringReport{}, ErrNoEncryption
	}
	if op != KeyringList && !validKey(key) {
		return KeyringReport{}, ErrInvalidKey
	}
	// One operation at a time from this node, so that the check before a
	// use or remove is not overtaken by another operation sent from here.
	g.keyOpMu.Lock()
	defer g.keyOpMu.Unlock()

	if op == KeyringUse || op == KeyringRemove {
		pre, err := g.askAll(ctx, KeyringList, nil)
		if err != nil {
			return pre, err
		}
		if err := checkRotation(pre, op, EncodeKey(key)); err != nil {
			return pre, err
		}
	}
	rep, err := g.askAll(ctx, op, key)
	if err != nil {
		return rep, err
	}
	if f := rep.Failed(); len(f) > 0 {
		g.log.Warn("keyring operation failed on some members", "op", op, "failed", len(f), "members", len(rep.Members))
	} else if op != KeyringList {
		g.log.Info("keyring operation done on every member", "op", op, "members", len(rep.Members))
	}
	return rep, nil
}

// checkRotation refuses a use or remove that could cut a member off,
// given every member's keyring (pre).
func checkRotation(pre KeyringReport, op, key string) error {
	var silent, lacking, primary []string
	holders := 0
	for _, m := range pre.Members {
		switch {
		case m.Err != "":
			silent = append(silent, m.Node)
		case !m.Keys.Has(key):
			lacking = append(lacking, m.Node)
		default:
			holders++
			if m.Keys.Primary() == key {
				primary = append(primary, m.Node)
			}
		}
	}
	if len(silent) > 0 {
		return fmt.Errorf("%w: %s; nothing was changed, try again once they are reachable", ErrMembersUnreachable, listNames(silent))
	}
	switch op {
	case KeyringUse:
		if len(lacking) > 0 {
			return fmt.Errorf("%w: missing on %s; install it first", ErrKeyNotEverywhere, listNames(lacking))
		}
	case KeyringRemove:
		if holders == 0 {
			return fmt.Errorf("%w on any member", ErrKeyNotInstalled)
		}
		if len(primary) > 0 {
			return fmt.Errorf("%w on %s; use another key first", ErrPrimaryKey, listNames(primary))
		}
	}
	return nil
}

// listNames lists members for an error message, at most ten.
func listNames(ns []string) string {
	slices.Sort(ns)
	if len(ns) > 10 {
		return fmt.Sprintf("%s and %d more", strings.Join(ns[:10], ", "), len(ns)-10)
	}
	return strings.Join(ns, ", ")
}

// askAll sends one request to every alive member (this node answers
// itself directly) and collects the answers until all came, or
// Config.KeyringTimeout or ctx ends; members without an answer by then
// are reported as failed.
func (g *Gossip) askAll(ctx context.Context, op string, key []byte) (KeyringReport, error) {
	req := keyringRequest{ID: newBootID(), From: g.cfg.Name, Op: op}
	if key != nil {
		req.Key = EncodeKey(key)
	}
	body, _ := json.Marshal(req) // strings only: cannot fail
	msg := append([]byte{msgKeyringRequest}, body...)

	nodes := g.aliveNodes()
	results := make(map[string]*MemberKeyring, len(nodes))
	answered := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		results[n.Name] = &MemberKeyring{Node: n.Name}
	}
	answers := make(chan keyringResponse, len(nodes))
	g.pendingMu.Lock()
	g.pending[req.ID] = answers
	g.pendingMu.Unlock()
	defer func() {
		g.pendingMu.Lock()
		delete(g.pending, req.ID)
		g.pendingMu.Unlock()
	}()

	type sendErr struct {
		node string
		err  error
	}
	sendErrs := make(chan sendErr, len(nodes))
	sem := make(chan struct{}, keyringSendConcurrency)
	waiting := 0
	g.lifeMu.RLock() // Shutdown waits for the senders: none may start after it
	switch {
	case g.closed.Load():
		g.lifeMu.RUnlock()
		return KeyringReport{}, ErrShutdown
	case g.left.Load():
		g.lifeMu.RUnlock()
		return KeyringReport{}, ErrLeft
	}
	for _, n := range nodes {
		if n.Name == g.cfg.Name {
			continue
		}
		waiting++
		g.wg.Add(1)
		go func(n *memberlist.Node) {
			defer g.wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := g.ml.SendReliable(n, msg); err != nil {
				sendErrs <- sendErr{n.Name, err}
			}
		}(n)
	}
	g.lifeMu.RUnlock()

	if self, ok := results[g.cfg.Name]; ok {
		applyResponse(self, g.applyKeyringRequest(req))
		answered[g.cfg.Name] = true
	}
	timer := time.NewTimer(g.cfg.KeyringTimeout)
	defer timer.Stop()
	for waiting > 0 {
		select {
		case r := <-answers:
			if m, ok := results[r.Node]; ok && !answered[r.Node] {
				applyResponse(m, r)
				answered[r.Node] = true
				waiting--
			}
		case e := <-sendErrs:
			if !answered[e.node] {
				results[e.node].Err = "unreachable: " + oneLine(e.err)
				answered[e.node] = true
				waiting--
			}
		case <-timer.C:
			g.log.Warn("keyring: members did not answer in time", "op", op, "missing", waiting, "timeout", g.cfg.KeyringTimeout)
			waiting = 0
		case <-ctx.Done():
			waiting = 0
		case <-g.stop:
			return KeyringReport{}, ErrShutdown
		}
	}
	rep := KeyringReport{Op: op}
	for name, m := range results {
		if !answered[name] {
			m.Err = fmt.Sprintf("no answer within %v", g.cfg.KeyringTimeout)
		}
		rep.Members = append(rep.Members, *m)
	}
	slices.SortFunc(rep.Members, func(a, b MemberKeyring) int { return strings.Compare(a.Node, b.Node) })
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("discovery: keyring %s: %w", op, err)
	}
	return rep, nil
}

func applyResponse(m *MemberKeyring, r keyringResponse) {
	m.Keys = KeyringState{Keys: r.Keys}
	m.Err = r.Error
}

// applyKeyringRequest carries out req on this node and returns the answer.
func (g *Gossip) applyKeyringRequest(req keyringRequest) keyringResponse {
	resp := keyringResponse{ID: req.ID, Node: g.cfg.Name}
	if g.keyring == nil {
		resp.Error = "gossip encryption is off on this member"
		return resp
	}
	var err error
	if req.Op != KeyringList {
		key, perr := ParseKey(req.Key)
		switch {
		case perr != nil:
			err = perr
		case req.Op == KeyringInstall:
			err = g.keyring.install(key)
		case req.Op == KeyringUse:
			err = g.keyring.use(key)
		case req.Op == KeyringRemove:
			err = g.keyring.remove(key)
		default:
			err = fmt.Errorf("unknown keyring operation %q", req.Op)
		}
	}
	if err != nil {
		g.log.Warn("keyring request failed", "op", req.Op, "from", req.From, "err", err)
		resp.Error = strings.TrimPrefix(err.Error(), "discovery: ")
	}
	resp.Keys = g.keyring.state().Keys
	return resp
}

// keyringLoop applies the requests of other members, one at a time, and
// sends each answer back. It runs off memberlist's goroutines: a change
// writes the keyring file with fsync, and an answer opens a stream. An
// answer to an asker that vanished can hold the loop up to memberlist's
// TCPTimeout; operations are rare and run one at a time, so one loop is
// enough.
func (g *Gossip) keyringLoop() {
	defer g.wg.Done()
	for {
		select {
		case <-g.stop:
			return
		case req := <-g.keyQueue:
			resp := g.applyKeyringRequest(req)
			b, _ := json.Marshal(resp)
			to := g.aliveNode(req.From)
			if to == nil {
				g.log.Warn("keyring: asker is not an alive member; answer dropped", "from", req.From)
				continue
			}
			if err := g.ml.SendReliable(to, append([]byte{msgKeyringResponse}, b...)); err != nil {
				g.log.Warn("keyring: cannot answer", "to", req.From, "err", oneLine(err))
			}
		}
	}
}

// aliveNode returns the alive member called name as a memberlist send
// target, nil if there is none.
func (g *Gossip) aliveNode(name string) *memberlist.Node {
	g.mu.Lock()
	defer g.mu.Unlock()
	if ms, ok := g.members[name]; ok && ms.m.Status == StatusAlive {
		return sendTarget(ms.m)
	}
	return nil
}

// aliveNodes returns every alive member, this node included, as memberlist
// send targets. They are built from this node's own member table, not
// taken from memberlist.Members: that hands out memberlist's own records,
// which it rewrites under its lock when an alive message arrives (a
// refuted suspicion, a meta update), so reading one's address after the
// call raced with that.
func (g *Gossip) aliveNodes() []*memberlist.Node {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]*memberlist.Node, 0, len(g.members))
	for _, ms := range g.members {
		if ms.m.Status == StatusAlive {
			out = append(out, sendTarget(ms.m))
		}
	}
	return out
}

// sendTarget is what memberlist's SendReliable reads of a node: its name
// and gossip address.
func sendTarget(m Member) *memberlist.Node {
	return &memberlist.Node{Name: m.Name, Addr: net.ParseIP(m.Addr), Port: uint16(m.Port)}
}

// handleKeyringRequest queues a peer's request for keyringLoop; it runs in
// NotifyMsg and must not block.
func (g *Gossip) handleKeyringRequest(b []byte) {
	var req keyringRequest
	if err := json.Unmarshal(b, &req); err != nil || req.ID == "" || req.From == "" {
		g.log.Debug("ignoring malformed keyring request", "size", len(b))
		return
	}
	switch req.Op {
	case KeyringList, KeyringInstall, KeyringUse, KeyringRemove:
	default:
		g.log.Debug("ignoring keyring request of unknown op", "op", req.Op)
		return
	}
	select {
	case g.keyQueue <- req:
	default:
		g.log.Warn("keyring request queue full; request dropped", "from", req.From)
	}
}

// handleKeyringResponse hands an answer to the operation waiting for it;
// it runs in NotifyMsg and must not block.
func (g *Gossip) handleKeyringResponse(b []byte) {
	var resp keyringResponse
	if err := json.Unmarshal(b, &resp); err != nil || resp.ID == "" || resp.Node == "" {
		g.log.Debug("ignoring malformed keyring response", "size", len(b))
		return
	}
	g.pendingMu.Lock()
	ch := g.pending[resp.ID]
	g.pendingMu.Unlock()
	if ch == nil {
		return // late: the operation has given up on it
	}
	select {
	case ch <- resp:
	default: // more answers than members asked: not from them
	}
}
