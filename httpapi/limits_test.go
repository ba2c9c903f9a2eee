package httpapi_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/agent"
	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/api"
)

// One address holding many idle connections gets 429 past the limit; a
// caller from another address is served meanwhile, and the first address
// is served again once it closes them.
func TestLimits_connectionsPerClient(t *testing.T) {
	a := agenttest.Start(t, func(c *agent.Config) {
		c.HTTPMaxConnsPerClient = 20
		// The 20 held connections send nothing: the default 10 s for a
		// request's headers would close them inside the polling below on
		// a slow run, and the 21st would be served.
		c.HTTPReadHeaderTimeout = time.Minute
	})
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < 20; i++ {
		c, err := net.Dial("tcp", a.HTTPAddr())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// The accept loop counts a connection once it took it: poll until the
	// 21st is refused.
	var resp *http.Response
	agenttest.WaitFor(t, 20*time.Second, "the 21st connection refused", func() bool {
		c, err := net.Dial("tcp", a.HTTPAddr())
		if err != nil {
			return false
		}
		defer c.Close()
		fmt.Fprintf(c, "GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
		resp, err = http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusTooManyRequests
	})
	if resp.Header.Get("Retry-After") == "" {
		t.Fatal("429 without Retry-After")
	}
	// Another address (127.0.0.2 is loopback too) is served.
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	hc := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	defer hc.CloseIdleConnections()
	start := time.Now()
	r, err := hc.Post("http://"+a.HTTPAddr()+"/v1/leases", "application/json", strings.NewReader(`{"ttl":"10s"}`))
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusOK {
		t.Fatalf("another address while one is at its limit: %d", r.StatusCode)
	}
	t.Logf("another address served in %v while one held %d connections", time.Since(start), len(conns))
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	agenttest.WaitFor(t, 5*time.Second, "served again after closing", func() bool {
		r, err := http.Get(a.URL + "/v1/status")
		if err != nil {
			return false
		}
		r.Body.Close()
		return r.StatusCode == http.StatusOK
	})
	http.DefaultClient.CloseIdleConnections()
}

// Past the bound on waiting blocking queries a new one gets 429 with
// Retry-After at once; reads without ?index and writes are served.
func TestLimits_blockingQueries(t *testing.T) {
	const limit = 30
	a := agenttest.Start(t, func(c *agent.Config) { c.HTTPMaxBlockingQueries = limit })
	r := do(t, "GET", a.URL+"/v1/services/web", "")
	idx := r.header.Get(api.HeaderIndex)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: limit + 5}}
	defer hc.CloseIdleConnections()
	done := make(chan int, limit)
	for i := 0; i < limit; i++ {
		go func() {
			for {
				r, err := hc.Get(a.URL + "/v1/services/web?index=" + idx + "&wait=30s")
				if err != nil {
					done <- 0
					return
				}
				r.Body.Close()
				if r.StatusCode == http.StatusTooManyRequests {
					// A probe held the place: come back, as Retry-After says.
					time.Sleep(10 * time.Millisecond)
					continue
				}
				done <- r.StatusCode
				return
			}
		}()
	}
	var refused *http.Response
	agenttest.WaitFor(t, 5*time.Second, "a blocking query past the bound refused", func() bool {
		// Short waits, so that a probe taken before the others arrived
		// does not keep their place.
		r, err := http.Get(a.URL + "/v1/services/db?index=" + idx + "&wait=50ms")
		if err != nil {
			return false
		}
		r.Body.Close()
		refused = r
		return r.StatusCode == http.StatusTooManyRequests
	})
	if refused.Header.Get("Retry-After") == "" {
		t.Fatal("429 without Retry-After")
	}
	mustOK(t, do(t, "GET", a.URL+"/v1/services/web", ""))
	mustOK(t, do(t, "PUT", a.URL+"/v1/services", `{"id":"db-1","name":"db","port":1}`))
	// Their service changes: every waiting query answers.
	mustOK(t, do(t, "PUT", a.URL+"/v1/services", `{"id":"web-1","name":"web","port":1}`))
	for i := 0; i < limit; i++ {
		if code := <-done; code != http.StatusOK {
			t.Fatalf("a blocking query within the bound answered %d", code)
		}
	}
	http.DefaultClient.CloseIdleConnections()
}

// A client that sends its body slowly is cut off by the read timeout (408)
// and changes nothing: a registration whose body stops after 5 bytes, and
// a restore whose body stops arriving (a restore may take long, but each
// read must make progress within the timeout).
func TestLimits_slowBody(t *testing.T) {
	a := agenttest.Start(t, func(c *agent.Config) { c.HTTPReadTimeout = 300 * time.Millisecond })
	body := `{"id":"slow","name":"slow","port":1}`
	for _, tc := range []struct{ name, request string }{
		{"registration", fmt.Sprintf("PUT /v1/services HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s", len(body), body[:5])},
		{"restore", "PUT /v1/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4096\r\n\r\nsidecar-snapshot v1 "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := a.FSM().Digest()
			c, err := net.Dial("tcp", a.HTTPAddr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fmt.Fprint(c, tc.request)
			start := time.Now()
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("no answer to a slow body: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusRequestTimeout || time.Since(start) > 5*time.Second {
				t.Fatalf("slow body: %d after %v, want 408 after the read timeout", resp.StatusCode, time.Since(start))
			}
			if a.FSM().Digest() != before {
				t.Fatal("a cut-off request changed the registry")
			}
		})
	}
}

// A restore larger than allowed is refused: with its size declared, before
// a byte is read; streamed without a size, once the bound is passed, having
// gone to a temporary file rather than memory. Nothing changes; a restore
// within the bound still works.
func TestLimits_restoreSize(t *testing.T) {
	const max = 16 << 20
	a := agenttest.Start(t, func(c *agent.Config) { c.MaxRestoreBytes = max })
	var snap strings.Builder
	r := do(t, "GET", a.URL+"/v1/snapshot", "")
	mustOK(t, r)
	snap.Write(r.body)
	before := a.FSM().Digest()

	// Declared: 2 GiB.
	c, err := net.Dial("tcp", a.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "PUT /v1/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\nsidecar-snapshot", int64(2)<<30)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("declared 2 GiB restore: %d, want 413", resp.StatusCode)
	}

	// Streamed, no size: 64 MiB of it, four times the bound; reading it
	// into memory first (as before) grew the heap by the bound at least.
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	heapBefore := ms.HeapAlloc
	pr, pw := io.Pipe()
	go func() {
		chunk := make([]byte, 1<<20)
		for i := 0; i < 64; i++ {
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("PUT", a.URL+"/v1/snapshot", pr)
	req.ContentLength = -1
	resp, err = http.DefaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("streamed 64 MiB restore: %d, want 413", resp.StatusCode)
		}
	} // else: the agent closed the connection mid-upload, also a refusal
	pr.CloseWithError(io.ErrClosedPipe)
	runtime.GC()
	runtime.ReadMemStats(&ms)
	if grown := int64(ms.HeapAlloc) - int64(heapBefore); grown > 4<<20 {
		t.Fatalf("heap grew by %d MiB over a refused streamed restore", grown>>20)
	}
	if a.FSM().Digest() != before {
		t.Fatal("a refused restore changed the registry")
	}
	mustOK(t, do(t, "PUT", a.URL+"/v1/snapshot", snap.String()))
	http.DefaultClient.CloseIdleConnections()
}

// Past its write rate a token gets 429 with Retry-After and its write
// changes nothing; its reads, other tokens' writes and other addresses'
// anonymous writes go on.
func TestLimits_writeRatePerToken(t *testing.T) {
	a := agenttest.Start(t, func(c *agent.Config) { c.HTTPWriteRate, c.HTTPWriteBurst = 0.01, 3 })
	mgmt := bootstrap(t, a) // one anonymous write of 127.0.0.1
	tok := createToken(t, a, mgmt, `{"rules":{"service":"write"}}`)
	other := createToken(t, a, mgmt, `{"rules":{"service":"write"}}`)
	for i := 0; i < 3; i++ {
		mustOK(t, doAs(t, tok.Secret, "PUT", a.URL+"/v1/services", `{"id":"web-`+strconv.Itoa(i)+`","name":"web","port":80}`))
	}
	before := a.FSM().Digest()
	r := doAs(t, tok.Secret, "PUT", a.URL+"/v1/services", `{"id":"web-9","name":"web","port":80}`)
	if r.code != http.StatusTooManyRequests || r.header.Get("Retry-After") == "" || !strings.Contains(string(r.body), `"error"`) {
		t.Fatalf("past the burst: %d Retry-After %q %s", r.code, r.header.Get("Retry-After"), r.body)
	}
	if a.FSM().Digest() != before {
		t.Fatal("a limited write changed the registry")
	}
	mustOK(t, doAs(t, tok.Secret, "GET", a.URL+"/v1/services/web", ""))
	mustOK(t, doAs(t, other.Secret, "PUT", a.URL+"/v1/services", `{"id":"web-8","name":"web","port":80}`))
	// Anonymous writes count per address: 127.0.0.1 spent one on the
	// bootstrap, 127.0.0.2 none.
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	hc := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	defer hc.CloseIdleConnections()
	for i := 0; i < 3; i++ {
		resp, err := hc.Post("http://"+a.HTTPAddr()+"/v1/leases", "application/json", strings.NewReader(`{"ttl":"1h"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("anonymous write %d from 127.0.0.2: %d", i, resp.StatusCode)
		}
	}
	resp, err := hc.Post("http://"+a.HTTPAddr()+"/v1/leases", "application/json", strings.NewReader(`{"ttl":"1h"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("fourth anonymous write from 127.0.0.2: %d, want 429", resp.StatusCode)
	}
}
