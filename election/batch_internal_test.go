package election

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/fsm"
)

func sampleBatch() []*batchEntry {
	return []*batchEntry{
		{secret: "s3cr3t", data: []byte(`{"type":"a"}`), timeout: 1500},
		{data: []byte(`{}`)},
		{secret: "x", data: bytes.Repeat([]byte{'d'}, 300), timeout: 1},
	}
}

func TestBatch_roundTripAndEveryCutRefused(t *testing.T) {
	in := sampleBatch()
	body := encodeBatch(in)
	out, err := decodeBatch(body)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(in) {
		t.Fatalf("%d entries back, want %d", len(out), len(in))
	}
	for i := range in {
		if out[i].secret != in[i].secret || !bytes.Equal(out[i].data, in[i].data) || out[i].timeout != in[i].timeout {
			t.Errorf("entry %d: %q %q %d, want %q %q %d", i, out[i].secret, out[i].data, out[i].timeout, in[i].secret, in[i].data, in[i].timeout)
		}
	}
	for n := range len(body) {
		if _, err := decodeBatch(body[:n]); !errors.Is(err, errBatchFormat) {
			t.Fatalf("a batch cut at %d of %d bytes: %v, want refused", n, len(body), err)
		}
	}
	if _, err := decodeBatch(append(body, 0)); !errors.Is(err, errBatchFormat) {
		t.Fatalf("a byte after the last entry: %v, want refused", err)
	}
	for _, count := range []uint32{0, maxBatchEntries + 1} {
		b := append([]byte(nil), body...)
		b[0], b[1], b[2], b[3] = byte(count>>24), byte(count>>16), byte(count>>8), byte(count)
		if _, err := decodeBatch(b); !errors.Is(err, errBatchFormat) {
			t.Fatalf("a count of %d: %v, want refused", count, err)
		}
	}
}

func FuzzDecodeBatch(f *testing.F) {
	f.Add(encodeBatch(sampleBatch()))
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, err := decodeBatch(b)
		if err != nil {
			return
		}
		back := make([]*batchEntry, len(entries))
		for i := range entries {
			back[i] = &entries[i]
		}
		if again := encodeBatch(back); !bytes.Equal(again, b) {
			t.Fatalf("decoded and encoded again: %x, want %x", again, b)
		}
	})
}

// fakeServer answers the internal RPC as handler does; its Remote speaks
// plain HTTP to it.
func fakeServer(t *testing.T, handler http.HandlerFunc) (*Remote, string) {
	t.Helper()
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "http://")
	r := NewRemote(nil, func() []string { return []string{addr} })
	r.rpc = &rpcClient{http: srv.Client()}
	t.Cleanup(r.Close)
	return r, addr
}

// A server from before batches (a rolling upgrade) answers their route
// with 404: the write goes on its own, and later ones go so directly.
func TestRemote_serverWithoutBatchesGetsSingleWrites(t *testing.T) {
	var mu sync.Mutex
	var paths []string
	r, addr := fakeServer(t, func(w http.ResponseWriter, req *http.Request) {
		mu.Lock()
		paths = append(paths, req.URL.Path)
		mu.Unlock()
		if req.URL.Path != rpcApply {
			http.NotFound(w, req)
			return
		}
		writeReply(w, rpcReply{Index: 42})
	})
	for range 2 {
		res, err := r.Apply(t.Context(), &fsm.RegisterNode{Name: "c1", Address: "10.0.0.1"})
		if err != nil || res.Index != 42 {
			t.Fatalf("write to an older server: %+v %v", res, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{rpcApplyBatch, rpcApply, rpcApply}; !slices.Equal(paths, want) {
		t.Fatalf("requests %v, want %v", paths, want)
	}
	if _, ok := r.unbatched.Load(addr); !ok {
		t.Fatal("the server is not remembered as taking no batches")
	}
}

// A write whose caller gives up while it waits in line is never sent, and
// says so (it surely did nothing).
func TestRemote_abandonedQueuedWriteIsNeverSent(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan int, 2*batchInFlight)
	var mu sync.Mutex
	var seen []string
	r, addr := fakeServer(t, func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		entries, err := decodeBatch(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		for _, e := range entries {
			seen = append(seen, string(e.data))
		}
		mu.Unlock()
		arrived <- len(entries)
		<-release
		replies := make([]rpcReply, len(entries))
		for i := range replies {
			replies[i] = rpcReply{Index: uint64(100 + i)}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(batchReply{Replies: replies})
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	encoded := func(name string) []byte {
		b, err := fsm.Encode(&fsm.RegisterNode{Name: name, Address: "10.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	type result struct {
		name string
		err  error
	}
	results := make(chan result, batchInFlight+1)
	// batchInFlight writes, each alone, fill what may be out at once.
	for i := range batchInFlight {
		name := string(rune('a' + i))
		go func() {
			_, err := r.applyBatched(ctx, addr, false, encoded(name))
			results <- result{name, err}
		}()
		select {
		case n := <-arrived:
			if n != 1 {
				t.Fatalf("a lone write went in a batch of %d", n)
			}
		case res := <-results:
			t.Fatalf("write %s answered before the server: %v", res.name, res.err)
		}
	}
	// The next one waits in line; its caller gives up.
	qctx, qcancel := context.WithCancel(ctx)
	queued := make(chan error, 1)
	go func() {
		_, err := r.applyBatched(qctx, addr, false, encoded("queued"))
		queued <- err
	}()
	waitQueued(t, r, 1)
	qcancel()
	if err := <-queued; !errors.Is(err, errNotSent) {
		t.Fatalf("a write abandoned in line: %v, want not sent", err)
	}
	// The line does not stall behind it: a later write goes once a batch
	// out is answered.
	go func() {
		_, err := r.applyBatched(ctx, addr, false, encoded("later"))
		results <- result{"later", err}
	}()
	waitQueued(t, r, 1)
	close(release)
	for range batchInFlight + 1 {
		if res := <-results; res.err != nil {
			t.Errorf("write %s: %v", res.name, res.err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, d := range seen {
		if strings.Contains(d, `"queued"`) {
			t.Fatal("the write abandoned in line reached the server")
		}
	}
}

// waitQueued waits until n writes wait in r's lines.
func waitQueued(t *testing.T, r *Remote, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.batch.mu.Lock()
		got := 0
		for _, q := range r.batch.queues {
			got += len(q.waiting)
		}
		r.batch.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d writes in line, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}
