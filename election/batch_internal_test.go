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
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/fsm"
)

func sampleBatch() []*batchEntry {
	return []*batchEntry{
		{secret: "s3cr3t", data: []byte(`{"type":"a"}`), timeout: 1500},
		{data: []byte(`{}`)},
		{secret: "x", data: bytes.Repeat([]byte{'d'}, 300), timeout: 1},
		{secret: "empty data, last"},
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
		if out[i].secret != in[i].secret || !bytes.Equal(out[i].data, in[i].data) || out[i].timeout != in[i].timeout || out[i].data == nil {
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
	// The limits themselves are allowed: maxBatchEntries entries, and an
	// entry of maxEntryData bytes.
	most := make([]*batchEntry, maxBatchEntries)
	for i := range most {
		most[i] = &batchEntry{data: []byte{byte(i)}}
	}
	if out, err := decodeBatch(encodeBatch(most)); err != nil || len(out) != maxBatchEntries {
		t.Fatalf("a batch of %d entries: %d back, %v", maxBatchEntries, len(out), err)
	}
	if out, err := decodeBatch(encodeBatch([]*batchEntry{{data: make([]byte, maxEntryData)}})); err != nil || len(out[0].data) != maxEntryData {
		t.Fatalf("an entry of %d bytes: %v", maxEntryData, err)
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

// A batch takes from the head of the line up to batchMaxEntries writes and
// batchMaxBytes of data; a bigger write goes alone.
func TestBatchQueue_takeBounds(t *testing.T) {
	line := func(sizes ...int) *batchQueue {
		q := &batchQueue{}
		for _, n := range sizes {
			q.waiting = append(q.waiting, &batchEntry{data: make([]byte, n), lead: make(chan struct{}, 1)})
		}
		return q
	}
	takes := func(q *batchQueue) []int {
		var out []int
		for len(q.waiting) > 0 {
			out = append(out, len(q.take()))
		}
		return out
	}
	half := batchMaxBytes / 2
	many := make([]int, batchMaxEntries+44)
	for _, c := range []struct {
		what  string
		sizes []int
		want  []int
	}{
		{"exactly the byte bound", []int{half, half, 1}, []int{2, 1}},
		{"one byte over it", []int{half, half + 1, 1}, []int{1, 2}},
		{"a write over the bound alone", []int{batchMaxBytes + 1, 1, 1}, []int{1, 2}},
		{"the entry bound", many, []int{batchMaxEntries, 44}},
	} {
		if got := takes(line(c.sizes...)); !slices.Equal(got, c.want) {
			t.Errorf("%s: batches of %v, want %v", c.what, got, c.want)
		}
	}
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
	unblock := sync.OnceFunc(func() { close(release) })
	t.Cleanup(unblock) // see TestRemote_atMostBatchInFlightOut
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
	unblock()
	for range batchInFlight + 1 {
		if res := <-results; res.err != nil {
			t.Errorf("write %s: %v", res.name, res.err)
		}
	}
	// Once everything is answered no line is left behind.
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.batch.mu.Lock()
		left := len(r.batch.queues)
		r.batch.mu.Unlock()
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d lines left after every write was answered", left)
		}
		time.Sleep(time.Millisecond)
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

// No more than batchInFlight batches are out to one server at once, also
// after some of them were answered: the rest wait in line.
func TestRemote_atMostBatchInFlightOut(t *testing.T) {
	release := make(chan struct{})
	var out, most atomic.Int64
	r, addr := fakeServer(t, func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		entries, err := decodeBatch(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		n := out.Add(1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		<-release
		out.Add(-1)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(batchReply{Replies: make([]rpcReply, len(entries))})
	})
	// Before the server closes (cleanups run last first), even when the
	// test fails half-way: a handler still waiting would hold Close up.
	unblock := sync.OnceFunc(func() { close(release) })
	t.Cleanup(unblock)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	data, err := fsm.Encode(&fsm.RegisterNode{Name: "c1", Address: "10.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 3*batchInFlight)
	write := func() {
		_, err := r.applyBatched(ctx, addr, false, data)
		errs <- err
	}
	waitOut := func(n int64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for out.Load() != n {
			if time.Now().After(deadline) {
				t.Fatalf("%d batches out, want %d", out.Load(), n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	for i := range batchInFlight {
		go write() // alone in line each: a batch of its own
		waitOut(int64(i + 1))
	}
	release <- struct{}{} // one answered: three out, none waiting
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	waitOut(batchInFlight - 1)
	go write() // alone in line: out at once, the fourth
	waitOut(batchInFlight)
	for range 2*batchInFlight - 1 {
		go write()
	}
	waitQueued(t, r, 2*batchInFlight-1)
	if n := out.Load(); n != batchInFlight {
		t.Fatalf("%d batches out, want %d", n, batchInFlight)
	}
	unblock()
	for range 3*batchInFlight - 1 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if m := most.Load(); m > batchInFlight {
		t.Fatalf("%d batches were out at once, want at most %d", m, batchInFlight)
	}
}
