package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/agent/agenttest"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// demo is one sidecar-demo running in the test process.
type demo struct {
	name, url string
	cancel    context.CancelFunc
	done      chan int
	log       *logBuffer
}

type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startDemo(t *testing.T, name, sidecarHTTP, sidecarDNS string) *demo {
	t.Helper()
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	d := &demo{name: name, url: "http://" + addr, cancel: cancel, done: make(chan int, 1), log: &logBuffer{}}
	args := []string{"-name", name, "-listen", addr, "-election", "primary", "-hold-ttl", "2s",
		"-sidecar-http", sidecarHTTP, "-sidecar-dns", sidecarDNS, "-interval", "100ms"}
	go func() { d.done <- run(ctx, args, d.log) }()
	t.Cleanup(func() {
		d.stop(t)
		if t.Failed() {
			t.Logf("log of %s:\n%s", name, d.log.String())
		}
	})
	return d
}

func (d *demo) stop(t *testing.T) {
	d.cancel()
	select {
	case code := <-d.done:
		if code != 0 {
			t.Errorf("%s exited %d", d.name, code)
		}
		d.done <- code
	case <-time.After(10 * time.Second):
		t.Errorf("%s did not stop within 10s", d.name)
	}
}

func (d *demo) status(t *testing.T) Report {
	t.Helper()
	resp, err := http.Get(d.url + "/status")
	if err != nil {
		return Report{}
	}
	defer resp.Body.Close()
	var r Report
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("%s /status: %v: %s", d.name, err, b)
	}
	return r
}

func names(r Report) []string {
	var n []string
	for _, p := range r.Peers {
		n = append(n, p.Name)
	}
	sort.Strings(n)
	return n
}

// Two demo apps beside one dev agent: they find each other over DNS SRV,
// exactly one leads and runs its job; when it stops (resigning), the other
// leads with a greater token.
func TestDemo_resolvesPeersAndFailsOver(t *testing.T) {
	ag := agenttest.Start(t, nil)
	a := startDemo(t, "a", ag.HTTPAddr(), ag.DNSAddr())
	b := startDemo(t, "b", ag.HTTPAddr(), ag.DNSAddr())

	var leader, follower *demo
	var token uint64
	agenttest.WaitFor(t, 15*time.Second, "both resolve both, one leads", func() bool {
		ra, rb := a.status(t), b.status(t)
		if ra.Leader && rb.Leader {
			t.Fatalf("both lead: %+v %+v", ra, rb)
		}
		if !slices.Equal(names(ra), []string{"a", "b"}) || !slices.Equal(names(rb), []string{"a", "b"}) {
			return false
		}
		switch {
		case ra.Leader && rb.CurrentLeader == "a":
			leader, follower, token = a, b, ra.Token
		case rb.Leader && ra.CurrentLeader == "b":
			leader, follower, token = b, a, rb.Token
		default:
			return false
		}
		return true
	})
	agenttest.WaitFor(t, 5*time.Second, "the leader's job ticks", func() bool { return leader.status(t).WorkTicks > 2 })
	if r := follower.status(t); r.WorkTicks != 0 || r.Terms != 0 {
		t.Fatalf("the follower ran its leader-only job: %+v", r)
	}

	leader.stop(t)
	agenttest.WaitFor(t, 10*time.Second, "the follower leads with a greater token", func() bool {
		r := follower.status(t)
		return r.Leader && r.Token > token && slices.Equal(names(r), []string{follower.name})
	})
	if !strings.Contains(leader.log.String(), "leadership lost: leader-only job stopped") {
		t.Errorf("the stopped leader did not log that its job stopped:\n%s", leader.log.String())
	}
}

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"-listen", "127.0.0.1:8080"}, ""},
		{[]string{"-listen", "127.0.0.1:0"}, "fixed port"},
		{[]string{"-listen", "127.0.0.1:0", "-port", "9"}, ""},
		{[]string{"-interval", "0s"}, "positive"},
		{[]string{"extra"}, "unexpected argument"},
	} {
		_, err := parseFlags(tc.args, io.Discard)
		if got := fmt.Sprint(err); (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(got, tc.wantErr)) {
			t.Errorf("parseFlags(%q) = %v, want error containing %q", tc.args, err, tc.wantErr)
		}
	}
}
