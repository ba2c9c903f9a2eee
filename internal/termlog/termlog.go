// Package termlog records, for tests, which servers led in which Raft
// term, from two sources: raft's "election won" log lines (Handler) and
// each server's state sampled every millisecond (Sample). Two leaders in
// one term is the split brain Raft must never allow.
package termlog

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Log is the record: term → the nodes seen leading in it.
type Log struct {
	mu      sync.Mutex
	leaders map[uint64]map[string]bool
}

// Record notes node as leader in term.
func (l *Log) Record(term uint64, node string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.leaders == nil {
		l.leaders = map[uint64]map[string]bool{}
	}
	if l.leaders[term] == nil {
		l.leaders[term] = map[string]bool{}
	}
	l.leaders[term][node] = true
}

// LeaderIn reports whether node was seen leading in term.
func (l *Log) LeaderIn(term uint64, node string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.leaders[term][node]
}

// TwoLeaders returns every term led by more than one node.
func (l *Log) TwoLeaders() map[uint64][]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[uint64][]string{}
	for term, nodes := range l.leaders {
		if len(nodes) > 1 {
			for n := range nodes {
				out[term] = append(out[term], n)
			}
		}
	}
	return out
}

// Terms is how many terms were recorded.
func (l *Log) Terms() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.leaders)
}

// Sample records r's leadership (as node) every millisecond until stop
// closes, keep returns false, or r shuts down. A leader's term cannot
// change while it leads: a state read between two equal term reads is its
// state in that term.
func (l *Log) Sample(node string, r *raft.Raft, stop <-chan struct{}, keep func() bool) {
	for keep == nil || keep() {
		t1 := r.CurrentTerm()
		st := r.State()
		if t2 := r.CurrentTerm(); st == raft.Leader && t1 == t2 {
			l.Record(t1, node)
		}
		if st == raft.Shutdown {
			return
		}
		select {
		case <-stop:
			return
		case <-time.After(time.Millisecond):
		}
	}
}

// Handler passes records on to h and notes raft's "election won" lines of
// node in l.
func Handler(h slog.Handler, node string, l *Log) slog.Handler {
	return handler{Handler: h, node: node, log: l}
}

type handler struct {
	slog.Handler
	node string
	log  *Log
}

func (h handler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "election won" {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "term" {
				var term uint64
				if _, err := fmt.Sscan(a.Value.String(), &term); err == nil {
					h.log.Record(term, h.node)
				}
			}
			return true
		})
	}
	return h.Handler.Handle(ctx, r)
}

func (h handler) WithAttrs(as []slog.Attr) slog.Handler {
	h.Handler = h.Handler.WithAttrs(as)
	return h
}

func (h handler) WithGroup(name string) slog.Handler {
	h.Handler = h.Handler.WithGroup(name)
	return h
}
