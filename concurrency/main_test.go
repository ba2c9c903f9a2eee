package concurrency_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/api"
)

// sidecarAddr is the HTTP address of the dev agent TestMain starts for the
// package's tests and examples: in an application, the local sidecar's
// (api.DefaultAddr unless --http-addr says otherwise).
var sidecarAddr string

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	// One dev agent for every test and example: each uses names of its
	// own, and starting an agent per test would cost more than the tests.
	dev, err := agenttest.StartDev(nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	sidecarAddr = dev.URL
	code := m.Run()
	if err := dev.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "dev agent stop:", err)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
			return 1
		}
	}
	return code
}

// newClient returns a client of the dev agent, closed with the test.
func newClient(t *testing.T) *api.Client {
	t.Helper()
	return clientOf(t, sidecarAddr)
}

func clientOf(t *testing.T, addr string) *api.Client {
	t.Helper()
	c, err := api.NewClient(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// testCtx is a context that ends with the test, bounded so that a hang
// fails the test instead of the run.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// partition is a proxy in front of the dev agent that can be cut off: while
// cut, every request fails at once with 503, as if the application could
// not reach its sidecar (or the sidecar the cluster).
type partition struct {
	url string
	cut atomic.Bool
}

func newPartition(t *testing.T) *partition {
	t.Helper()
	target, err := url.Parse(sidecarAddr)
	if err != nil {
		t.Fatal(err)
	}
	p := &partition{}
	rp := httputil.NewSingleHostReverseProxy(target)
	tr := &http.Transport{}
	rp.Transport = tr
	// Blocking answers pass through as they come.
	rp.FlushInterval = -1
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.cut.Load() {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `{"error":"partitioned by the test"}`)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		tr.CloseIdleConnections()
	})
	p.url = srv.URL
	return p
}

// statusCode is the HTTP status of an agent's answer inside err, 0 if none.
func statusCode(err error) int {
	var se *api.StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// closedWithin reports whether ch closes within d.
func closedWithin(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
