package election

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/fsm"
)

// fakeStream serves change streams from handler (flush sends what it
// wrote) and returns a replica filling a new registry from it (plain HTTP,
// no protocol byte), running until the test ends.
func fakeStream(t *testing.T, handler func(w *bufio.Writer, flush func(), req *http.Request)) *Replica {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		bw := bufio.NewWriter(w)
		handler(bw, func() { bw.Flush(); w.(http.Flusher).Flush() }, req)
		bw.Flush()
	}))
	r := NewReplica(fsm.New(), func() []string { return []string{srv.Listener.Addr().String()} }, nil)
	r.rpc = &rpcClient{http: srv.Client()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; srv.Close() })
	return r
}

func encodeT(t *testing.T, cmd fsm.Command) []byte {
	t.Helper()
	data, err := fsm.Encode(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// A snapshot frame the copy cannot restore ends the stream: the entries
// after it were meant for the snapshot's registry, not for the copy's, so
// the copy resumes elsewhere from its own index instead of applying them.
func TestReplica_badSnapshotEndsTheStream(t *testing.T) {
	t.Parallel()
	entry := encodeT(t, &fsm.RegisterNode{Name: "after-bad-snapshot", Address: "10.0.0.1"})
	indexes := make(chan string, 16)
	r := fakeStream(t, func(w *bufio.Writer, flush func(), req *http.Request) {
		select {
		case indexes <- req.URL.Query().Get("index"):
		default:
		}
		writeFrame(w, frameSnapshot, 4, []byte("not a snapshot"))
		writeFrame(w, frameEntry, 5, entry)
		writeFrame(w, frameHeartbeat, 5, nil)
	})
	for i := range 2 {
		select {
		case idx := <-indexes:
			if idx != "0" {
				t.Fatalf("stream %d asked from index %s, want 0: the copy took entries after a snapshot it could not restore", i+1, idx)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no stream %d within 10s", i+1)
		}
	}
	if _, ok := r.FSM().Node("after-bad-snapshot"); ok {
		t.Fatal("an entry after a bad snapshot was applied")
	}
}

// A copy that applied the last entry it was sent is current; it does not
// wait for the next heartbeat to say so.
func TestReplica_currentOnceTheLastEntryIsApplied(t *testing.T) {
	t.Parallel()
	entry := encodeT(t, &fsm.RegisterNode{Name: "n1", Address: "10.0.0.1"})
	r := fakeStream(t, func(w *bufio.Writer, flush func(), req *http.Request) {
		writeFrame(w, frameEntry, 1, entry)
		flush()
		<-req.Context().Done() // no heartbeat: the copy's watchdog ends this
	})
	waitUntil(t, 10*time.Second, "the copy current after its last entry", func() bool {
		_, ok := r.FSM().Node("n1")
		return ok && r.Current() == nil
	})
}
