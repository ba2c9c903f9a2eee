package fsm

import "sort"

// A node's journal lists which of its instances changed, entry by entry,
// for the one replica that asked (an agent tracks its own node): its
// anti-entropy then looks at what changed, not at every instance of the
// node, so a registration costs the same at 100 instances as at 100,000.

// journalLimit bounds a journal; a reader further behind compares in full.
// A reader looks about once a second, so the bound is well above what a
// node registers in a second (4096 was not: at 4,500 registrations a second
// every pass compared all of the node's instances, a cost that grew with
// the registry). Entries a reader has seen are dropped, so a journal holds
// only what is unread.
const journalLimit = 1 << 16

type nodeJournal struct {
	// from: every change after this index is listed (or the journal says
	// it cannot tell).
	from    uint64
	entries []journalEntry
}

type journalEntry struct {
	index uint64
	id    string
}

func (j *nodeJournal) record(index uint64, id string) {
	// equivalent mutant: skipping a repeat of the last entry only saves room
	// (NodeChanges lists each id once either way).
	if n := len(j.entries); n > 0 && j.entries[n-1].index == index && j.entries[n-1].id == id {
		return
	}
	if len(j.entries) >= journalLimit {
		half := len(j.entries) / 2
		j.from = j.entries[half-1].index
		j.entries = append(j.entries[:0:0], j.entries[half:]...)
	}
	j.entries = append(j.entries, journalEntry{index, id})
}

// forget drops the entries up to index: from then says the journal is
// complete after index.
func (j *nodeJournal) forget(index uint64) {
	i := sort.Search(len(j.entries), func(i int) bool { return j.entries[i].index > index })
	if i == 0 {
		return
	}
	// A copy, so that a journal once full gives its memory back.
	j.entries = append([]journalEntry(nil), j.entries[i:]...)
	j.from = max(j.from, index)
}

// journal records a change of one instance of node, if node is tracked.
func (s *state) journal(node, id string) {
	if j := s.tracked[node]; j != nil {
		j.record(s.index, id)
	}
}

// TrackNode starts the journal of node's changes that NodeChanges reads.
func (f *FSM) TrackNode(node string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.st.tracked[node] == nil {
		f.st.tracked[node] = &nodeJournal{from: f.st.index}
	}
}

// NodeChanges lists the ids of node's instances that changed (registered,
// changed, deregistered, a check's status) in entries after since, and the
// index it is complete up to. ok is false when it cannot tell: node is not
// tracked, the journal was cut short, or a restore replaced everything
// since then; compare in full then.
//
// since is what the reader has put right; it is never asked for again, so
// the entries up to it are dropped (one reader per journal: the agent's own
// anti-entropy).
func (f *FSM) NodeChanges(node string, since uint64) (ids []string, upTo uint64, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	j := f.st.tracked[node]
	if j == nil || since < j.from {
		return nil, f.st.index, false
	}
	j.forget(since)
	seen := map[string]bool{}
	for i := len(j.entries) - 1; i >= 0; i-- { // all after since: forget dropped the rest
		if id := j.entries[i].id; !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	return ids, f.st.index, true
}
