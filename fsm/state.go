package fsm

import (
	"fmt"
	"strconv"
	"strings"
)

// state is the registry's content. It is only touched under FSM.mu.
type state struct {
	index  uint64
	tables [numTables]uint64

	nodes     map[string]*Node
	instances map[instanceKey]*Instance
	// checks finds the instance of a check: check IDs are unique per node.
	checks map[instanceKey]instanceKey
	// byService indexes instances by lower-cased service name, because
	// service lookups (DNS above all) are by name and case-insensitive.
	byService map[string]map[instanceKey]struct{}
	// byNode indexes instances by their node, and nodeIndex is the index of
	// the last entry that changed a node's instances: an agent follows its
	// own instances (to run their checks) without scanning everyone's.
	// Both derive from instances and are rebuilt on restore.
	byNode    map[string]map[instanceKey]struct{}
	nodeIndex map[string]uint64
	// byLease indexes the instances that hang on a lease, so that a lease's
	// end does not scan every instance.
	byLease map[string]map[instanceKey]struct{}
	// svcIndex is the index of the last entry that changed a service's
	// instances or their health, by lower-cased name. It outlives the
	// service's last instance, so that a blocking read of a service wakes
	// when that service changes and never for a write elsewhere.
	svcIndex map[string]uint64
	// svcTags counts the instances of each service (by name as registered)
	// and their tags, so that the services list is not rebuilt from every
	// instance.
	svcTags map[string]*serviceTags
	// floor is what a name never seen in this state reports as its index:
	// the index of the snapshot the state was restored from (0 when new),
	// so a blocking read from before a restore wakes once after it.
	floor     uint64
	leases    map[string]*Lease
	locks     map[string]*Mutex
	elections map[string]*Mutex
	// ACL tokens by ID, and IDs by secret hash.
	tokens          map[string]*ACLToken
	bySecret        map[string]string
	aclBootstrapped bool

	// touched collects what the entry being applied changed, for the FSM's
	// watchers; reset before each entry.
	touched []watchKey
	// tracked holds the journals of the nodes this replica follows
	// (journal.go); not part of the registry's content.
	tracked map[string]*nodeJournal
}

type serviceTags struct {
	instances int
	tags      map[string]int
}

type instanceKey struct{ node, id string }

func newState() *state {
	return &state{
		nodes:     map[string]*Node{},
		instances: map[instanceKey]*Instance{},
		checks:    map[instanceKey]instanceKey{},
		byService: map[string]map[instanceKey]struct{}{},
		byNode:    map[string]map[instanceKey]struct{}{},
		nodeIndex: map[string]uint64{},
		byLease:   map[string]map[instanceKey]struct{}{},
		svcIndex:  map[string]uint64{},
		svcTags:   map[string]*serviceTags{},
		tracked:   map[string]*nodeJournal{},
		leases:    map[string]*Lease{},
		locks:     map[string]*Mutex{},
		elections: map[string]*Mutex{},
		tokens:    map[string]*ACLToken{},
		bySecret:  map[string]string{},
	}
}

func (s *state) touch(index uint64, tables ...Table) {
	for _, t := range tables {
		s.tables[t] = index
		s.touched = append(s.touched, watchKey{kind: watchTable, table: t})
	}
}

// touchService records a change of one service (lower-cased name).
func (s *state) touchService(svc string) {
	s.svcIndex[svc] = s.index
	s.touched = append(s.touched, watchKey{kind: watchService, name: svc})
}

// touchNodeServices records a change of every service with an instance on
// node (its status or address changed).
func (s *state) touchNodeServices(node string) {
	seen := map[string]bool{}
	for key := range s.byNode[node] {
		svc := strings.ToLower(s.instances[key].Name)
		if !seen[svc] {
			seen[svc] = true
			s.touchService(svc)
		}
	}
}

// touchMutex records a change of one lock or election.
func (s *state) touchMutex(kind watchKind, name string) {
	s.touched = append(s.touched, watchKey{kind: kind, name: name})
}

// apply runs one command. It reports whether anything changed; a command
// that fails changes nothing.
func (s *state) apply(index uint64, cmd Command) (*Result, bool) {
	if err := validate(cmd); err != nil {
		return &Result{Err: err}, false
	}
	switch c := cmd.(type) {
	case *RegisterNode:
		return s.registerNode(index, c)
	case *DeregisterNode:
		return s.deregisterNode(index, c)
	case *SetNodeStatus:
		return s.setNodeStatus(index, c)
	case *RegisterInstance:
		return s.registerInstance(index, c)
	case *DeregisterInstance:
		return s.deregisterInstance(index, c)
	case *UpdateCheck:
		return s.updateCheck(index, c)
	case *GrantLease:
		return s.grantLease(index, c)
	case *RevokeLease:
		if l, ok := s.leases[c.ID]; ok && !s.mayUseLease(l, c.By, c.OnSession, c.Node) {
			return &Result{Err: s.leaseOwnerErr(l, c.By)}, false
		}
		return s.dropLease(index, c.ID, c.Now, false)
	case *ExpireLease:
		return s.dropLease(index, c.ID, c.Now, true)
	case *AcquireLock:
		return s.acquireLock(index, c)
	case *ReleaseLock:
		return s.releaseLock(index, c)
	case *Campaign:
		return s.campaign(index, c)
	case *Resign:
		return s.resign(index, c)
	case *Transfer:
		return s.transfer(index, c)
	case *ACLBootstrap:
		return s.aclBootstrap(index, c)
	case *ACLSetToken:
		return s.aclSetToken(index, c)
	case *ACLDeleteToken:
		return s.aclDeleteToken(index, c)
	}
	return &Result{Err: fmt.Errorf("%w: unhandled command %T", ErrInvalid, cmd)}, false
}

func (s *state) registerNode(index uint64, c *RegisterNode) (*Result, bool) {
	n, ok := s.nodes[c.Name]
	if !ok {
		n = &Node{Name: c.Name}
		s.nodes[c.Name] = n
	}
	if n.Address != c.Address || n.Status != NodeAlive {
		// Instances without an address of their own answer with the node's,
		// and a node's status is its instances'.
		s.touchNodeServices(c.Name)
	}
	n.Address = c.Address
	n.Meta = cloneMap(c.Meta)
	n.Status = NodeAlive
	n.ModifyIndex = index
	s.touch(index, TableNodes, TableServices)
	return &Result{}, true
}

func (s *state) deregisterNode(index uint64, c *DeregisterNode) (*Result, bool) {
	if _, ok := s.nodes[c.Name]; !ok {
		return &Result{Err: fmt.Errorf("%w: %q", ErrUnknownNode, c.Name)}, false
	}
	delete(s.nodes, c.Name)
	for key := range s.byNode[c.Name] {
		s.removeInstance(key)
	}
	s.touch(index, TableNodes, TableServices)
	return &Result{}, true
}

func (s *state) setNodeStatus(index uint64, c *SetNodeStatus) (*Result, bool) {
	n, ok := s.nodes[c.Name]
	if !ok {
		return &Result{Err: fmt.Errorf("%w: %q", ErrUnknownNode, c.Name)}, false
	}
	if n.Status == c.Status {
		return &Result{}, false
	}
	n.Status = c.Status
	n.ModifyIndex = index
	// Instance status derives from node status, so DNS answers change too.
	s.touchNodeServices(c.Name)
	s.touch(index, TableNodes, TableServices)
	return &Result{}, true
}

func (s *state) registerInstance(index uint64, c *RegisterInstance) (*Result, bool) {
	in := c.Instance.clone()
	in.intern()
	key := instanceKey{in.Node, in.ID}
	if err := s.checkPrecondition(key, c.If); err != nil {
		return &Result{Err: err}, false
	}
	if _, ok := s.nodes[in.Node]; !ok {
		return &Result{Err: fmt.Errorf("%w: %q", ErrUnknownNode, in.Node)}, false
	}
	if in.Lease != "" {
		if _, ok := s.leases[in.Lease]; !ok {
			return &Result{Err: fmt.Errorf("%w: %q", ErrUnknownLease, in.Lease)}, false
		}
	}
	for _, ch := range in.Checks {
		if owner, ok := s.checks[instanceKey{in.Node, ch.ID}]; ok && owner != key {
			return &Result{Err: fmt.Errorf("%w: %q", ErrCheckConflict, ch.ID)}, false
		}
	}
	old := s.instances[key]
	in.CreateIndex = index
	if old != nil {
		in.CreateIndex = old.CreateIndex
		// A re-registration keeps what the checks last reported, so that an
		// agent restart does not flap its services.
		prev := map[string]Check{}
		for _, ch := range old.Checks {
			prev[ch.ID] = ch
		}
		for i := range in.Checks {
			if p, ok := prev[in.Checks[i].ID]; ok && p.Type == in.Checks[i].Type {
				in.Checks[i].Status, in.Checks[i].Output = p.Status, p.Output
			}
		}
		s.removeInstance(key)
	}
	for i := range in.Checks {
		if in.Checks[i].Status == "" {
			in.Checks[i].Status = StatusCritical
		}
		in.Checks[i].ModifyIndex = index
		s.checks[instanceKey{in.Node, in.Checks[i].ID}] = key
	}
	in.ModifyIndex = index
	s.addInstance(key, in)
	s.touch(index, TableServices)
	return &Result{}, true
}

// checkPrecondition refuses a conditional write whose instance changed
// since its writer read it.
func (s *state) checkPrecondition(key instanceKey, p *Precondition) error {
	if p == nil {
		return nil
	}
	var cur uint64
	if in, ok := s.instances[key]; ok {
		cur = in.ModifyIndex
	}
	if cur != p.ModifyIndex {
		return fmt.Errorf("%w: %q on node %q is at index %d, not %d", ErrChanged, key.id, key.node, cur, p.ModifyIndex)
	}
	return nil
}

func (s *state) removeInstance(key instanceKey) {
	in, ok := s.instances[key]
	if !ok {
		return
	}
	for _, ch := range in.Checks {
		delete(s.checks, instanceKey{key.node, ch.ID})
	}
	delete(s.instances, key)
	svc := strings.ToLower(in.Name)
	delete(s.byService[svc], key)
	if len(s.byService[svc]) == 0 {
		delete(s.byService, svc)
	}
	delete(s.byNode[key.node], key)
	if len(s.byNode[key.node]) == 0 {
		delete(s.byNode, key.node)
	}
	if in.Lease != "" {
		delete(s.byLease[in.Lease], key)
		if len(s.byLease[in.Lease]) == 0 {
			delete(s.byLease, in.Lease)
		}
	}
	if st := s.svcTags[in.Name]; st != nil {
		st.instances--
		for _, t := range in.Tags {
			if st.tags[t]--; st.tags[t] <= 0 {
				delete(st.tags, t)
			}
		}
		if st.instances <= 0 {
			delete(s.svcTags, in.Name)
		}
	}
	s.nodeIndex[key.node] = s.index
	s.journal(key.node, key.id)
	s.touchService(svc)
}

func (s *state) addInstance(key instanceKey, in *Instance) {
	s.instances[key] = in
	svc := strings.ToLower(in.Name)
	if s.byService[svc] == nil {
		s.byService[svc] = map[instanceKey]struct{}{}
	}
	s.byService[svc][key] = struct{}{}
	if s.byNode[key.node] == nil {
		s.byNode[key.node] = map[instanceKey]struct{}{}
	}
	s.byNode[key.node][key] = struct{}{}
	if in.Lease != "" {
		if s.byLease[in.Lease] == nil {
			s.byLease[in.Lease] = map[instanceKey]struct{}{}
		}
		s.byLease[in.Lease][key] = struct{}{}
	}
	st := s.svcTags[in.Name]
	if st == nil {
		st = &serviceTags{tags: map[string]int{}}
		s.svcTags[in.Name] = st
	}
	st.instances++
	for _, t := range in.Tags {
		st.tags[t]++
	}
	s.nodeIndex[key.node] = s.index
	s.journal(key.node, key.id)
	s.touchService(svc)
}

func (s *state) deregisterInstance(index uint64, c *DeregisterInstance) (*Result, bool) {
	key := instanceKey{c.Node, c.ID}
	if err := s.checkPrecondition(key, c.If); err != nil {
		return &Result{Err: err}, false
	}
	if _, ok := s.instances[key]; !ok {
		return &Result{Err: fmt.Errorf("%w: %q on node %q", ErrUnknownInstance, c.ID, c.Node)}, false
	}
	s.removeInstance(key)
	s.touch(index, TableServices)
	return &Result{}, true
}

func (s *state) updateCheck(index uint64, c *UpdateCheck) (*Result, bool) {
	owner, ok := s.checks[instanceKey{c.Node, c.CheckID}]
	if !ok {
		return &Result{Err: fmt.Errorf("%w: %q on node %q", ErrUnknownCheck, c.CheckID, c.Node)}, false
	}
	in := s.instances[owner]
	for i := range in.Checks {
		ch := &in.Checks[i]
		if ch.ID != c.CheckID {
			continue
		}
		if ch.Status == c.Status && ch.Output == c.Output {
			return &Result{}, false
		}
		ch.Status, ch.Output, ch.ModifyIndex = c.Status, c.Output, index
		in.ModifyIndex = index
		s.nodeIndex[c.Node] = index
		s.journal(c.Node, in.ID)
		s.touchService(strings.ToLower(in.Name))
		s.touch(index, TableServices)
		return &Result{}, true
	}
	return &Result{Err: fmt.Errorf("%w: %q", ErrUnknownCheck, c.CheckID)}, false
}

// LeaseIDFromIndex is the ID a lease granted without one gets: derived from
// the log index, so every replica picks the same.
func LeaseIDFromIndex(index uint64) string {
	id := strconv.FormatUint(index, 16)
	for len(id) < 16 {
		id = "0" + id
	}
	return id
}

func (s *state) grantLease(index uint64, c *GrantLease) (*Result, bool) {
	id := c.ID
	if id == "" {
		id = LeaseIDFromIndex(index)
	}
	if _, ok := s.leases[id]; ok {
		return &Result{Err: fmt.Errorf("%w: %q", ErrLeaseExists, id)}, false
	}
	if c.Session && c.Node == "" {
		return &Result{Err: invalid("a node session names its node")}, false
	}
	owner := c.Owner
	if c.Session {
		owner = ""
	}
	s.leases[id] = &Lease{ID: id, TTL: c.TTL, Node: c.Node, Owner: owner, Session: c.Session, CreateIndex: index}
	s.touch(index, TableLeases)
	return &Result{LeaseID: id}, true
}

// dropLease revokes or expires a lease: its locks and candidacies go to the
// next in line within this same entry, its instances are deregistered.
func (s *state) dropLease(index uint64, id string, now int64, expired bool) (*Result, bool) {
	if _, ok := s.leases[id]; !ok {
		return &Result{Err: fmt.Errorf("%w: %q", ErrUnknownLease, id)}, false
	}
	delete(s.leases, id)
	s.touch(index, TableLeases)
	for _, name := range sortedKeys(s.locks) {
		m := s.locks[name]
		if s.dropFromMutex(index, m, id, now, expired) {
			s.touch(index, TableLocks)
			s.touchMutex(watchLock, name)
		}
	}
	for _, name := range sortedKeys(s.elections) {
		m := s.elections[name]
		if s.dropFromMutex(index, m, id, now, false) {
			s.touch(index, TableElections)
			s.touchMutex(watchElection, name)
		}
	}
	for key := range s.byLease[id] {
		s.removeInstance(key)
		s.touch(index, TableServices)
	}
	return &Result{}, true
}

// dropFromMutex removes every hold of a lease from a mutex and reports
// whether the mutex changed.
func (s *state) dropFromMutex(index uint64, m *Mutex, lease string, now int64, expired bool) bool {
	changed := false
	kept := m.Waiters[:0]
	for _, w := range m.Waiters {
		if w.Lease == lease {
			changed = true
			continue
		}
		kept = append(kept, w)
	}
	m.Waiters = kept
	if m.Holder != nil && m.Holder.Lease == lease {
		m.Holder = nil
		changed = true
		// equivalent mutant: a delay of 0 sets DelayUntil to now, which
		// holds no one back (promote waits while now < DelayUntil).
		if expired && m.LockDelay > 0 {
			m.DelayUntil = now + m.LockDelay
		}
	}
	if changed {
		s.promote(index, m, now)
		m.ModifyIndex = index
	}
	return changed
}

// promote hands a vacant mutex to the first waiter, unless a lock delay
// runs, and reports whether it did. The token is the index of this entry,
// and never less than one above the last token of the name.
func (s *state) promote(index uint64, m *Mutex, now int64) bool {
	if m.Holder != nil || len(m.Waiters) == 0 || now < m.DelayUntil {
		return false
	}
	h := m.Waiters[0]
	m.Waiters = append(m.Waiters[:0:0], m.Waiters[1:]...)
	token := index
	if token <= m.LastToken {
		token = m.LastToken + 1
	}
	h.Token, h.Since = token, now
	m.LastToken = token
	m.Holder = &h
	// The delay is the one asked for by the hold that begins, also when it
	// was asked for while waiting in line.
	m.LockDelay = h.LockDelay
	m.ModifyIndex = index
	return true
}

// find returns the hold (holder or waiter) with this ID, or nil.
func (m *Mutex) find(id string) *Holder {
	if m.Holder != nil && m.Holder.ID == id {
		return m.Holder
	}
	if i := m.waiterIndex(id); i >= 0 {
		return &m.Waiters[i]
	}
	return nil
}

// mayActFor is the ownership rule of a candidate: the token that
// campaigned, a management token, or the candidate's own node acting on
// its node session (a restart's re-campaign, a resign when its service
// fails or the sidecar stops).
func (s *state) mayActFor(h *Holder, a Auth, node string) bool {
	if h.Owner == a.By || s.isManagement(a.By) {
		return true
	}
	if a.OnSession && node != "" && h.Node == node {
		if l, ok := s.leases[h.Lease]; ok && l.Session && l.Node == node {
			return true
		}
	}
	return false
}

func candidateOwnerErr(election, candidate, by string) error {
	who := "a request without token"
	if by != "" {
		who = fmt.Sprintf("token %q", by)
	}
	return fmt.Errorf("%w: candidate %q of election %q was entered by another token; %s may not act for it", ErrNotOwner, candidate, election, who)
}

func (m *Mutex) waiterIndex(id string) int {
	for i, w := range m.Waiters {
		if w.ID == id {
			return i
		}
	}
	return -1
}

func mutexResult(m *Mutex, id string) *Result {
	r := &Result{}
	if m.Holder != nil {
		h := *m.Holder
		r.Holder = &h
		if h.ID == id {
			r.Held, r.Token = true, h.Token
		}
	}
	return r
}

// enter puts a would-be holder in line (or updates it in place) and hands
// the mutex over if it is free. It is shared by locks and elections. A
// request that repeats what the mutex already records changes nothing.
func (s *state) enter(index uint64, m *Mutex, h Holder, queue bool, now int64) (*Result, bool) {
	changed := true
	switch i := m.waiterIndex(h.ID); {
	case m.Holder != nil && m.Holder.ID == h.ID:
		if m.Holder.Lease == h.Lease && m.Holder.Value == h.Value && m.Holder.Service == h.Service && m.Holder.Node == h.Node && m.Holder.Owner == h.Owner {
			return mutexResult(m, h.ID), false
		}
		if m.Holder.Lease != h.Lease {
			// Another lease is another session: the candidate goes on
			// leading, but as a new acquisition with a greater token, so
			// whatever still acts on the old lease's token is fenced off.
			token := max(index, m.LastToken+1)
			m.Holder.Token, m.Holder.Since, m.LastToken = token, now, token
		}
		m.Holder.Lease, m.Holder.Value, m.Holder.Service, m.Holder.Node, m.Holder.Owner = h.Lease, h.Value, h.Service, h.Node, h.Owner
	case i >= 0:
		changed = m.Waiters[i] != h
		m.Waiters[i] = h
	case queue || m.Holder == nil && len(m.Waiters) == 0 && now >= m.DelayUntil:
		m.Waiters = append(m.Waiters, h)
	default:
		changed = false
	}
	// Whoever asks, a mutex left vacant by a lock delay that ended goes to
	// the head of its line here.
	if s.promote(index, m, now) {
		changed = true
	}
	if changed {
		m.ModifyIndex = index
	}
	return mutexResult(m, h.ID), changed
}

func (s *state) acquireLock(index uint64, c *AcquireLock) (*Result, bool) {
	l, ok := s.leases[c.Lease]
	if !ok && !bugLockIgnoresLease {
		return &Result{Err: fmt.Errorf("%w: %q", ErrUnknownLease, c.Lease)}, false
	}
	if ok && !s.mayUseLease(l, c.By, c.OnSession, c.Node) {
		return &Result{Err: s.leaseOwnerErr(l, c.By)}, false
	}
	m, existed := s.locks[c.Name]
	if !existed {
		m = &Mutex{Name: c.Name}
	}
	h := Holder{ID: c.Lease, Lease: c.Lease, Node: c.Node, Value: c.Value, LockDelay: c.LockDelay}
	res, changed := s.enter(index, m, h, c.Queue, c.Now)
	if changed {
		s.locks[c.Name] = m
		s.touch(index, TableLocks)
		s.touchMutex(watchLock, c.Name)
		return res, true
	}
	return res, false
}

func (s *state) releaseLock(index uint64, c *ReleaseLock) (*Result, bool) {
	m, ok := s.locks[c.Name]
	if !ok {
		return &Result{Err: fmt.Errorf("%w: %q", ErrUnknownLock, c.Name)}, false
	}
	if l, ok := s.leases[c.Lease]; ok && !s.mayUseLease(l, c.By, c.OnSession, c.Node) {
		return &Result{Err: s.leaseOwnerErr(l, c.By)}, false
	}
	if c.Token != 0 && (m.Holder == nil || m.Holder.ID != c.Lease || m.Holder.Token != c.Token) {
		// Token-guarded: only the acquisition that got this token ends.
		var cur uint64
		if m.Holder != nil {
			cur = m.Holder.Token
		}
		return &Result{Err: fmt.Errorf("%w: lock %q: token %d is not the current hold of lease %q (current token %d)",
			ErrStaleToken, c.Name, c.Token, c.Lease, cur), Token: cur, Holder: holderCopy(m.Holder)}, false
	}
	res, changed, err := s.leave(index, m, c.Lease, c.OnlyWaiting, c.Now)
	if err != nil {
		return &Result{Err: fmt.Errorf("%w: lock %q, lease %q", ErrNotHolder, c.Name, c.Lease)}, false
	}
	if changed {
		s.touch(index, TableLocks)
		s.touchMutex(watchLock, c.Name)
	}
	return res, changed
}

func (s *state) campaign(index uint64, c *Campaign) (*Result, bool) {
	l, ok := s.leases[c.Lease]
	if !ok {
		return &Result{Err: fmt.Errorf("%w: %q", ErrUnknownLease, c.Lease)}, false
	}
	if !s.mayUseLease(l, c.By, c.OnSession, c.Node) {
		return &Result{Err: s.leaseOwnerErr(l, c.By)}, false
	}
	m, existed := s.elections[c.Election]
	if !existed {
		m = &Mutex{Name: c.Election}
	}
	owner := c.By
	if cur := m.find(c.Candidate); cur != nil {
		if !s.mayActFor(cur, c.Auth, c.Node) {
			return &Result{Err: candidateOwnerErr(c.Election, c.Candidate, c.By)}, false
		}
		// The node's own re-campaign (after a restart, on a new session)
		// keeps the candidate's owner.
		owner = cur.Owner
	}
	h := Holder{ID: c.Candidate, Lease: c.Lease, Node: c.Node, Value: c.Value, Service: c.Service, Owner: owner}
	res, changed := s.enter(index, m, h, true, c.Now)
	if changed {
		s.elections[c.Election] = m
		s.touch(index, TableElections)
		s.touchMutex(watchElection, c.Election)
	}
	return res, changed
}

func (s *state) resign(index uint64, c *Resign) (*Result, bool) {
	m, ok := s.elections[c.Election]
	if !ok {
		return &Result{Err: fmt.Errorf("%w: %q", ErrUnknownElection, c.Election)}, false
	}
	if cur := m.find(c.Candidate); cur != nil && !s.mayActFor(cur, c.Auth, c.Node) {
		return &Result{Err: candidateOwnerErr(c.Election, c.Candidate, c.By)}, false
	}
	res, changed, err := s.leave(index, m, c.Candidate, c.OnlyWaiting, c.Now)
	if err != nil {
		return &Result{Err: fmt.Errorf("%w: election %q, candidate %q", ErrNotCandidate, c.Election, c.Candidate)}, false
	}
	if changed {
		s.touch(index, TableElections)
		s.touchMutex(watchElection, c.Election)
	}
	return res, changed
}

// transfer hands an election from its leader to a waiting candidate in
// this one entry: the successor's token is max(index, LastToken+1), and
// the leader leaves the election.
func (s *state) transfer(index uint64, c *Transfer) (*Result, bool) {
	m, ok := s.elections[c.Election]
	if !ok {
		return &Result{Err: fmt.Errorf("%w: %q", ErrUnknownElection, c.Election)}, false
	}
	if m.Holder == nil || m.Holder.ID != c.From {
		return &Result{Err: fmt.Errorf("%w: candidate %q does not lead election %q", ErrNotLeading, c.From, c.Election),
			Holder: holderCopy(m.Holder)}, false
	}
	if !s.mayActFor(m.Holder, c.Auth, c.Node) {
		return &Result{Err: candidateOwnerErr(c.Election, c.From, c.By)}, false
	}
	if c.Node != "" && m.Holder.Node != c.Node {
		return &Result{Err: fmt.Errorf("%w: candidate %q of election %q campaigns through node %q, not %q",
			ErrNotLeading, c.From, c.Election, m.Holder.Node, c.Node), Holder: holderCopy(m.Holder)}, false
	}
	i := m.waiterIndex(c.To)
	if i < 0 {
		return &Result{Err: fmt.Errorf("%w: candidate %q is not waiting in election %q", ErrNotCandidate, c.To, c.Election),
			Holder: holderCopy(m.Holder)}, false
	}
	h := m.Waiters[i]
	m.Waiters = append(m.Waiters[:i:i], m.Waiters[i+1:]...)
	token := max(index, m.LastToken+1)
	h.Token, h.Since = token, c.Now
	m.LastToken = token
	m.Holder = &h
	m.LockDelay = h.LockDelay
	m.ModifyIndex = index
	s.touch(index, TableElections)
	s.touchMutex(watchElection, c.Election)
	return mutexResult(m, h.ID), true
}

func holderCopy(h *Holder) *Holder {
	if h == nil {
		return nil
	}
	c := *h
	return &c
}

// leave takes id out of a mutex: out of line, or out of the hold (handing
// it to the next in line) unless onlyWaiting.
func (s *state) leave(index uint64, m *Mutex, id string, onlyWaiting bool, now int64) (*Result, bool, error) {
	if m.Holder != nil && m.Holder.ID == id {
		if onlyWaiting {
			return mutexResult(m, id), false, nil
		}
		m.Holder = nil
		s.promote(index, m, now)
		m.ModifyIndex = index
		return mutexResult(m, id), true, nil
	}
	if i := m.waiterIndex(id); i >= 0 {
		m.Waiters = append(m.Waiters[:i:i], m.Waiters[i+1:]...)
		s.promote(index, m, now)
		m.ModifyIndex = index
		return mutexResult(m, id), true, nil
	}
	return nil, false, ErrNotHolder
}
