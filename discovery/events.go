package discovery

import "sync"

// eventQueue is the FIFO between memberlist's callbacks, which must never
// block, and the Events channel. It holds at most max events; on overflow
// it drops them all for one EventResync.
type eventQueue struct {
	mu     sync.Mutex
	buf    []Event
	max    int
	closed bool
	ready  chan struct{} // a token when buf may be non-empty
}

func newEventQueue(max int) *eventQueue {
	return &eventQueue{max: max, ready: make(chan struct{}, 1)}
}

// push appends ev and returns how many queued events it dropped to make
// room (0 normally).
func (q *eventQueue) push(ev Event) (dropped int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return 0
	}
	if len(q.buf) >= q.max {
		for _, e := range q.buf {
			if e.Type != EventResync {
				dropped++
			}
		}
		clear(q.buf)
		q.buf = append(q.buf[:0], Event{Type: EventResync})
	}
	q.buf = append(q.buf, ev)
	select {
	case q.ready <- struct{}{}:
	default:
	}
	return dropped
}

// pop removes and returns the oldest event, waiting for one until stop is
// closed (then ok is false).
func (q *eventQueue) pop(stop <-chan struct{}) (ev Event, ok bool) {
	for {
		q.mu.Lock()
		if len(q.buf) > 0 {
			ev = q.buf[0]
			q.buf[0] = Event{}
			q.buf = q.buf[1:]
			if len(q.buf) == 0 {
				q.buf = nil // let the drained array go
			}
			q.mu.Unlock()
			return ev, true
		}
		q.mu.Unlock()
		select {
		case <-q.ready:
		case <-stop:
			return Event{}, false
		}
	}
}

// close discards queued events and refuses new ones.
func (q *eventQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	q.buf = nil
}
