package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// seen is what a fake agent recorded about the last request.
type seen struct {
	mu       sync.Mutex
	method   string
	path     string // escaped path as sent
	rawQuery string
	body     []byte
}

func (s *seen) get() (method, path, rawQuery string, body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.method, s.path, s.rawQuery, s.body
}

// fakeAgent serves handler and records every request into the returned
// seen; the client is closed with the test.
func fakeAgent(t *testing.T, handler http.HandlerFunc) (*Client, *seen) {
	t.Helper()
	s := &seen{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.method, s.path, s.rawQuery, s.body = r.Method, r.URL.EscapedPath(), r.URL.RawQuery, b
		s.mu.Unlock()
		handler(w, r)
	}))
	c, err := NewClient(srv.URL)
	if err != nil {
		t.Fatalf("NewClient(%q): %v", srv.URL, err)
	}
	t.Cleanup(func() {
		c.CloseIdleConnections()
		srv.Close()
	})
	return c, s
}

func reply(code int, index uint64, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if index > 0 {
			w.Header().Set(HeaderIndex, fmt.Sprint(index))
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		io.WriteString(w, body)
	}
}

func TestNewClient_addr(t *testing.T) {
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{in: "127.0.0.1:7080", want: "http://127.0.0.1:7080"},
		{in: "[::1]:7080", want: "http://[::1]:7080"},
		{in: "http://127.0.0.1:7080/", want: "http://127.0.0.1:7080"},
		{in: "https://agent.example:443/prefix/", want: "https://agent.example:443/prefix"},
		{in: " localhost:1 ", want: "http://localhost:1"},
		{in: "", wantErr: true},
		{in: "127.0.0.1", wantErr: true},
		{in: "ftp://x:1", wantErr: true},
		{in: "http://", wantErr: true},
	}
	for _, tt := range tests {
		c, err := NewClient(tt.in)
		if tt.wantErr {
			if err == nil {
				t.Errorf("NewClient(%q) = %q, want error", tt.in, c.Addr())
			}
			continue
		}
		if err != nil {
			t.Errorf("NewClient(%q): %v", tt.in, err)
			continue
		}
		if c.Addr() != tt.want {
			t.Errorf("NewClient(%q).Addr() = %q, want %q", tt.in, c.Addr(), tt.want)
		}
	}
}

func TestClient_Status(t *testing.T) {
	c, s := fakeAgent(t, reply(200, 0, `{"node":"n1","role":"server","leader":"n2","term":3,"commit_index":10,"applied_index":9,"peers":["n1","n2"]}`))
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if m, p, _, _ := s.get(); m != "GET" || p != "/v1/status" {
		t.Errorf("request = %s %s", m, p)
	}
	want := Status{Node: "n1", Role: "server", Leader: "n2", Term: 3, CommitIndex: 10, AppliedIndex: 9, Peers: []string{"n1", "n2"}}
	if fmt.Sprint(*st) != fmt.Sprint(want) {
		t.Errorf("Status = %+v, want %+v", *st, want)
	}
}

func TestClient_Members(t *testing.T) {
	c, s := fakeAgent(t, reply(200, 0, `[{"name":"a","addr":"10.0.0.1","port":7946,"role":"client","status":"alive"}]`))
	ms, err := c.Members(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, p, _, _ := s.get(); p != "/v1/members" {
		t.Errorf("path = %s", p)
	}
	if len(ms) != 1 || ms[0].Name != "a" || ms[0].Port != 7946 || ms[0].Status != "alive" {
		t.Errorf("Members = %+v", ms)
	}
}

func TestClient_Services_blockingQuery(t *testing.T) {
	c, s := fakeAgent(t, reply(200, 42, `{"web":["v1","prod"],"db":[]}`))
	svcs, m, err := c.Services(context.Background(), &QueryOptions{Index: 7, Wait: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, p, q, _ := s.get(); p != "/v1/services" || q != "index=7&wait=30s" {
		t.Errorf("request = %s?%s", p, q)
	}
	if m.Index != 42 {
		t.Errorf("index = %d, want 42", m.Index)
	}
	if len(svcs) != 2 || len(svcs["web"]) != 2 {
		t.Errorf("Services = %v", svcs)
	}
}

func TestClient_Service_query(t *testing.T) {
	tests := []struct {
		name      string
		passing   bool
		tag       string
		q         *QueryOptions
		wantPath  string
		wantQuery string
	}{
		{name: "web", wantPath: "/v1/services/web"},
		{name: "web", passing: true, wantPath: "/v1/services/web", wantQuery: "passing"},
		{name: "web", tag: "v1", wantPath: "/v1/services/web", wantQuery: "tag=v1"},
		{name: "web", passing: true, tag: "a b", q: &QueryOptions{Index: 3, Consistent: true}, wantPath: "/v1/services/web", wantQuery: "index=3&tag=a+b&consistent&passing"},
		{name: "we/b", wantPath: "/v1/services/we%2Fb"},
	}
	for _, tt := range tests {
		c, s := fakeAgent(t, reply(200, 5, `[{"id":"web-1","name":"web","node":"n1","address":"10.0.0.1","port":80,"tags":["v1"],"meta":{"k":"v"},"status":"passing","weight":3}]`))
		in, m, err := c.Service(context.Background(), tt.name, tt.passing, tt.tag, tt.q)
		if err != nil {
			t.Fatal(err)
		}
		if _, p, q, _ := s.get(); p != tt.wantPath || q != tt.wantQuery {
			t.Errorf("Service(%q, %v, %q) sent %s?%s, want %s?%s", tt.name, tt.passing, tt.tag, p, q, tt.wantPath, tt.wantQuery)
		}
		if m.Index != 5 || len(in) != 1 || in[0].Meta["k"] != "v" || in[0].Status != StatusPassing || in[0].Weight != 3 {
			t.Errorf("Service = %+v, %+v", in, m)
		}
	}
}

func TestClient_Register(t *testing.T) {
	c, s := fakeAgent(t, reply(200, 0, `{"id":"web-1","index":12}`))
	reg := ServiceRegistration{ID: "web-1", Name: "web", Port: 8080, Tags: []string{"v1"}, Weight: 7,
		Checks: []CheckDefinition{{Type: "http", HTTP: "http://127.0.0.1:8080/health", Interval: "1s"}}}
	r, err := c.Register(context.Background(), reg)
	if err != nil {
		t.Fatal(err)
	}
	if r.ID != "web-1" || r.Index != 12 {
		t.Errorf("Register = %+v", r)
	}
	m, p, _, body := s.get()
	if m != "PUT" || p != "/v1/services" {
		t.Errorf("request = %s %s", m, p)
	}
	var got ServiceRegistration
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("body %s: %v", body, err)
	}
	if got.Name != "web" || got.Port != 8080 || got.Weight != 7 || len(got.Checks) != 1 || got.Checks[0].HTTP == "" {
		t.Errorf("sent %s", body)
	}
}

func TestClient_errors(t *testing.T) {
	tests := []struct {
		name     string
		handler  http.HandlerFunc
		wantCode int
		wantMsg  string
	}{
		{"envelope", reply(404, 0, `{"error":"no such instance"}`), 404, "no such instance"},
		{"plain text", reply(500, 0, "boom\n"), 500, "boom"},
		{"empty", reply(502, 0, ""), 502, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := fakeAgent(t, tt.handler)
			err := c.Deregister(context.Background(), "web-1")
			var se *StatusError
			if !errors.As(err, &se) {
				t.Fatalf("Deregister error = %v, want *StatusError", err)
			}
			if se.Code != tt.wantCode || se.Message != tt.wantMsg {
				t.Errorf("StatusError = %+v, want %d %q", se, tt.wantCode, tt.wantMsg)
			}
			if !strings.Contains(se.Error(), fmt.Sprint(tt.wantCode)) {
				t.Errorf("Error() = %q lacks the code", se.Error())
			}
		})
	}
}

func TestClient_unreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := srv.Listener.Addr().String()
	srv.Close()
	c, err := NewClient(addr)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Status(context.Background())
	if err == nil || !strings.HasPrefix(err.Error(), "GET /v1/status: ") {
		t.Errorf("Status on a closed port = %v, want a GET /v1/status: error", err)
	}
}

func TestClient_UpdateCheck(t *testing.T) {
	tests := []struct {
		status, note, wantPath, wantQuery string
		wantErr                           bool
	}{
		{status: "pass", wantPath: "/v1/checks/web-1:0/pass"},
		{status: StatusWarning, note: "slow disk", wantPath: "/v1/checks/web-1:0/warn", wantQuery: "note=slow+disk"},
		{status: StatusCritical, wantPath: "/v1/checks/web-1:0/fail"},
		{status: "maybe", wantErr: true},
	}
	for _, tt := range tests {
		c, s := fakeAgent(t, reply(200, 0, `{}`))
		err := c.UpdateCheck(context.Background(), "web-1:0", tt.status, tt.note)
		if tt.wantErr {
			if err == nil {
				t.Errorf("UpdateCheck(%q) succeeded", tt.status)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if m, p, q, _ := s.get(); m != "PUT" || p != tt.wantPath || q != tt.wantQuery {
			t.Errorf("UpdateCheck(%q) sent %s %s?%s", tt.status, m, p, q)
		}
	}
}

func TestClient_leases(t *testing.T) {
	ctx := context.Background()
	c, s := fakeAgent(t, reply(200, 0, `{"id":"L1","ttl":"10s"}`))
	l, err := c.GrantLease(ctx, 10*time.Second)
	if err != nil || l.ID != "L1" || l.TTL != "10s" {
		t.Fatalf("GrantLease = %+v, %v", l, err)
	}
	if m, p, _, b := s.get(); m != "POST" || p != "/v1/leases" || string(b) != `{"ttl":"10s"}` {
		t.Errorf("GrantLease sent %s %s %s", m, p, b)
	}
	if _, err := c.KeepAlive(ctx, "L1"); err != nil {
		t.Fatal(err)
	}
	if m, p, _, _ := s.get(); m != "PUT" || p != "/v1/leases/L1/keepalive" {
		t.Errorf("KeepAlive sent %s %s", m, p)
	}
	if err := c.RevokeLease(ctx, "L1"); err != nil {
		t.Fatal(err)
	}
	if m, p, _, _ := s.get(); m != "DELETE" || p != "/v1/leases/L1" {
		t.Errorf("RevokeLease sent %s %s", m, p)
	}

	gone, _ := fakeAgent(t, reply(404, 0, `{"error":"lease expired"}`))
	if _, err := gone.KeepAlive(ctx, "L1"); !IsNotFound(err) {
		t.Errorf("KeepAlive of an expired lease = %v, want not found", err)
	}
}

func TestClient_Lock(t *testing.T) {
	tests := []struct {
		name     string
		handler  http.HandlerFunc
		wantHeld bool
		wantTok  uint64
		wantErr  int // StatusError code, 0 for none
	}{
		{"acquired", reply(200, 0, `{"held":true,"token":17}`), true, 17, 0},
		{"held elsewhere", reply(409, 0, `{"held":false,"holder":{"node":"n2","lease":"L9","value":"x","token":16}}`), false, 0, 0},
		{"conflict error", reply(409, 0, `{"error":"lease belongs to another node"}`), false, 0, 409},
		{"bad request", reply(400, 0, `{"error":"bad wait"}`), false, 0, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, s := fakeAgent(t, tt.handler)
			r, err := c.Lock(context.Background(), "db-migrate", LockRequest{Wait: "5s", Value: "me"})
			if tt.wantErr != 0 {
				var se *StatusError
				if !errors.As(err, &se) || se.Code != tt.wantErr {
					t.Fatalf("Lock error = %v, want status %d", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.Held != tt.wantHeld || r.Token != tt.wantTok {
				t.Errorf("Lock = %+v", r)
			}
			if !r.Held && (r.Holder == nil || r.Holder.Node != "n2") {
				t.Errorf("Lock holder = %+v", r.Holder)
			}
			if m, p, _, b := s.get(); m != "PUT" || p != "/v1/locks/db-migrate" || !bytes.Contains(b, []byte(`"wait":"5s"`)) {
				t.Errorf("Lock sent %s %s %s", m, p, b)
			}
		})
	}
}

func TestClient_Lock_rejectsHold(t *testing.T) {
	c, _ := fakeAgent(t, reply(200, 0, `{}`))
	if _, err := c.Lock(context.Background(), "x", LockRequest{Hold: HoldConnection}); err == nil {
		t.Error("Lock with Hold succeeded; want a pointer to HoldLock")
	}
	if _, err := c.Campaign(context.Background(), "x", CampaignRequest{Hold: HoldConnection}); err == nil {
		t.Error("Campaign with Hold succeeded; want a pointer to HoldCampaign")
	}
}

func TestClient_Unlock(t *testing.T) {
	c, s := fakeAgent(t, reply(200, 0, `{}`))
	if err := c.Unlock(context.Background(), "db", "L1"); err != nil {
		t.Fatal(err)
	}
	if m, p, _, b := s.get(); m != "DELETE" || p != "/v1/locks/db" || string(b) != `{"lease":"L1"}` {
		t.Errorf("Unlock sent %s %s %s", m, p, b)
	}
}

func TestClient_LockInfo(t *testing.T) {
	c, _ := fakeAgent(t, reply(200, 9, `{"holder":"n1","lease":"L1","value":"v","token":8,"since":"2024-01-02T03:04:05Z"}`))
	li, m, err := c.LockInfo(context.Background(), "db", nil)
	if err != nil || li == nil || li.Token != 8 || li.Holder != "n1" || m.Index != 9 || li.Since.Year() != 2024 {
		t.Errorf("LockInfo = %+v, %+v, %v", li, m, err)
	}
	free, _ := fakeAgent(t, reply(404, 11, `{"error":"lock is free"}`))
	li, m, err = free.LockInfo(context.Background(), "db", nil)
	if err != nil || li != nil || m.Index != 11 {
		t.Errorf("LockInfo of a free lock = %+v, %+v, %v; want nil, index 11, nil", li, m, err)
	}
}

func TestClient_elections(t *testing.T) {
	ctx := context.Background()
	c, s := fakeAgent(t, reply(200, 0, `{"leader":true,"token":5,"expires_in":"9s"}`))
	r, err := c.Campaign(ctx, "primary", CampaignRequest{Candidate: "c1", Value: "10.0.0.1:5432"})
	if err != nil || !r.Leader || r.Token != 5 {
		t.Fatalf("Campaign = %+v, %v", r, err)
	}
	if m, p, _, b := s.get(); m != "PUT" || p != "/v1/elections/primary/campaign" || !bytes.Contains(b, []byte(`"candidate":"c1"`)) {
		t.Errorf("Campaign sent %s %s %s", m, p, b)
	}

	lost, _ := fakeAgent(t, reply(409, 0, `{"leader":false,"current":{"candidate":"c2","node":"n2","value":"v","token":4}}`))
	r, err = lost.Campaign(ctx, "primary", CampaignRequest{Candidate: "c1", Value: "v", Wait: "1s"})
	if err != nil || r.Leader || r.Current == nil || r.Current.Candidate != "c2" {
		t.Errorf("Campaign after wait = %+v, %v", r, err)
	}

	if err := c.Resign(ctx, "primary", "c 1"); err != nil {
		t.Fatal(err)
	}
	if m, p, q, _ := s.get(); m != "DELETE" || p != "/v1/elections/primary/campaign" || q != "candidate=c+1" {
		t.Errorf("Resign sent %s %s?%s", m, p, q)
	}
}

func TestClient_Election(t *testing.T) {
	c, _ := fakeAgent(t, reply(200, 3, `{"leader":{"candidate":"c1","node":"n1","value":"10.0.0.1:5432","token":5}}`))
	e, m, err := c.Election(context.Background(), "primary", &QueryOptions{Index: 2})
	if err != nil || e.Leader == nil || e.Leader.Value != "10.0.0.1:5432" || m.Index != 3 {
		t.Errorf("Election = %+v, %+v, %v", e, m, err)
	}
	vacant, _ := fakeAgent(t, reply(404, 4, `{"error":"no leader"}`))
	e, m, err = vacant.Election(context.Background(), "primary", nil)
	if err != nil || e == nil || e.Leader != nil || m.Index != 4 {
		t.Errorf("Election when vacant = %+v, %+v, %v; want empty, index 4, nil", e, m, err)
	}
}

func TestClient_Self(t *testing.T) {
	tests := []struct {
		name       string
		handler    http.HandlerFunc
		wantLeader bool
		wantErr    bool
	}{
		{"leader", reply(200, 7, `{"leader":true,"token":5,"expires_in":"8.5s"}`), true, false},
		{"follower", reply(503, 7, `{"leader":false}`), false, false},
		{"agent error", reply(503, 7, `{"error":"no raft leader"}`), false, true},
		{"garbage", reply(503, 7, `<html>`), false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, s := fakeAgent(t, tt.handler)
			st, m, err := c.Self(context.Background(), "primary", &QueryOptions{Index: 6, Wait: time.Second})
			if _, p, q, _ := s.get(); p != "/v1/elections/primary/self" || q != "index=6&wait=1s" {
				t.Errorf("Self sent %s?%s", p, q)
			}
			if m == nil || m.Index != 7 {
				t.Errorf("meta = %+v", m)
			}
			if tt.wantErr {
				if err == nil {
					t.Errorf("Self = %+v, want error", st)
				}
				return
			}
			if err != nil || st.Leader != tt.wantLeader {
				t.Errorf("Self = %+v, %v", st, err)
			}
		})
	}
}

func TestClient_snapshot(t *testing.T) {
	ctx := context.Background()
	data := []byte("\x00snapshot bytes\xff")
	c, s := fakeAgent(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			w.Write(data)
		}
	})
	var buf bytes.Buffer
	if err := c.SnapshotSave(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), data) {
		t.Errorf("SnapshotSave wrote %q", buf.Bytes())
	}
	if err := c.SnapshotRestore(ctx, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if m, p, _, b := s.get(); m != "PUT" || p != "/v1/snapshot" || !bytes.Equal(b, data) {
		t.Errorf("SnapshotRestore sent %s %s %q", m, p, b)
	}

	bad, _ := fakeAgent(t, reply(400, 0, `{"error":"not a snapshot"}`))
	if err := bad.SnapshotRestore(ctx, strings.NewReader("x")); err == nil || !strings.Contains(err.Error(), "not a snapshot") {
		t.Errorf("SnapshotRestore error = %v", err)
	}
}

func TestClient_healthAndMetrics(t *testing.T) {
	ctx := context.Background()
	c, s := fakeAgent(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/readyz":
			w.WriteHeader(http.StatusServiceUnavailable)
		case "/metrics":
			io.WriteString(w, "sidecar_up 1\n")
		}
	})
	if err := c.Health(ctx); err != nil {
		t.Errorf("Health: %v", err)
	}
	if _, p, _, _ := s.get(); p != "/healthz" {
		t.Errorf("Health sent %s", p)
	}
	var se *StatusError
	if err := c.Ready(ctx); !errors.As(err, &se) || se.Code != 503 {
		t.Errorf("Ready = %v, want 503", err)
	}
	var buf bytes.Buffer
	if err := c.Metrics(ctx, &buf); err != nil || buf.String() != "sidecar_up 1\n" {
		t.Errorf("Metrics = %q, %v", buf.String(), err)
	}
}

// streamAgent answers a hold with the given lines, flushing each, then waits
// until the client goes away and reports that on released.
func streamAgent(t *testing.T, lines []string, released chan<- struct{}) (*Client, *seen) {
	return fakeAgent(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		fl := w.(http.Flusher)
		for _, l := range lines {
			io.WriteString(w, l+"\n")
			fl.Flush()
		}
		<-r.Context().Done()
		close(released)
	})
}

func TestClient_HoldLock(t *testing.T) {
	released := make(chan struct{})
	c, s := streamAgent(t, []string{`{"held":false,"holder":{"node":"n2"}}`, ``, `{"held":true,"token":21}`}, released)
	st, err := c.HoldLock(context.Background(), "db", LockRequest{TTL: "5s"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r, err := st.Next()
	if err != nil || r.Held || r.Holder == nil || r.Holder.Node != "n2" {
		t.Fatalf("first line = %+v, %v", r, err)
	}
	r, err = st.Next()
	if err != nil || !r.Held || r.Token != 21 {
		t.Fatalf("second line = %+v, %v", r, err)
	}
	m, p, _, b := s.get()
	if m != "PUT" || p != "/v1/locks/db" || !bytes.Contains(b, []byte(`"hold":"connection"`)) || !bytes.Contains(b, []byte(`"ttl":"5s"`)) {
		t.Errorf("HoldLock sent %s %s %s", m, p, b)
	}

	// Close must reach the agent as a closed connection: that is the release.
	next := make(chan error, 1)
	go func() { _, err := st.Next(); next <- err }()
	st.Close()
	st.Close() // safe twice
	select {
	case <-released:
	case <-time.After(5 * time.Second):
		t.Fatal("agent did not see the connection close")
	}
	if err := <-next; !errors.Is(err, ErrStreamClosed) {
		t.Errorf("Next after Close = %v, want ErrStreamClosed", err)
	}
}

func TestClient_HoldCampaign(t *testing.T) {
	released := make(chan struct{})
	c, s := streamAgent(t, []string{`{"leader":true,"token":3,"expires_in":"10s"}`}, released)
	ctx, cancel := context.WithCancel(context.Background())
	st, err := c.HoldCampaign(ctx, "primary", CampaignRequest{Candidate: "c1", Value: "v"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r, err := st.Next()
	if err != nil || !r.Leader || r.Token != 3 {
		t.Fatalf("line = %+v, %v", r, err)
	}
	if _, p, _, b := s.get(); p != "/v1/elections/primary/campaign" || !bytes.Contains(b, []byte(`"hold":"connection"`)) {
		t.Errorf("HoldCampaign sent %s %s", p, b)
	}
	// Cancelling the context is as good as Close.
	cancel()
	select {
	case <-released:
	case <-time.After(5 * time.Second):
		t.Fatal("agent did not see the connection close")
	}
	if _, err := st.Next(); !errors.Is(err, ErrStreamClosed) {
		t.Errorf("Next after cancel = %v, want ErrStreamClosed", err)
	}
}

func TestStream_serverEnds(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		wantErr func(error) bool
	}{
		{"eof", `{"held":true,"token":1}` + "\n", func(err error) bool { return errors.Is(err, ErrStreamClosed) }},
		{"error line", `{"held":true,"token":1}` + "\n" + `{"error":"lease expired"}` + "\n", func(err error) bool {
			var se *StatusError
			return errors.As(err, &se) && se.Code == 0 && err.Error() == "lease expired"
		}},
		{"garbage", `{"held":true,"token":1}` + "\nnot json\n", func(err error) bool { return err != nil && !errors.Is(err, ErrStreamClosed) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := fakeAgent(t, reply(200, 0, tt.body))
			st, err := c.HoldLock(context.Background(), "db", LockRequest{})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if r, err := st.Next(); err != nil || !r.Held {
				t.Fatalf("first line = %+v, %v", r, err)
			}
			if _, err := st.Next(); !tt.wantErr(err) {
				t.Errorf("Next = %v", err)
			}
		})
	}
}

func TestClient_HoldLock_refused(t *testing.T) {
	c, _ := fakeAgent(t, reply(400, 0, `{"error":"ttl below 1s"}`))
	_, err := c.HoldLock(context.Background(), "db", LockRequest{TTL: "1ms"})
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 400 || se.Message != "ttl below 1s" {
		t.Errorf("HoldLock = %v, want 400 ttl below 1s", err)
	}
}
