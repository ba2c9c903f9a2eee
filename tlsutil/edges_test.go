package tlsutil

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Names a certificate may carry, at each edge of what is allowed.
func TestNames_edges(t *testing.T) {
	label63, label64 := strings.Repeat("a", 63), strings.Repeat("a", 64)
	for _, tc := range []struct {
		domain string
		ok     bool
	}{
		{"", true}, {"a", true}, {"z", true}, {"0", true}, {"9", true}, {"a-b_c", true}, {"Example.ORG.", true},
		{label63, true}, {label64, false}, {"a..b", false},
		{"`", false}, {"{", false}, {"/", false}, {":", false}, {"a b", false},
	} {
		if _, err := NormalizeDomain(tc.domain); (err == nil) != tc.ok {
			t.Errorf("NormalizeDomain(%.20q) = %v, want ok %v", tc.domain, err, tc.ok)
		}
	}

	long := strings.Repeat(label63+".", 3) + strings.Repeat("b", 253-3*64) // 253 bytes
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"a.example", true}, {"z9.example", true}, {"0-a.example", true}, {"*.example", true},
		{long, true}, {long + "b", false}, {label63 + ".x", true}, {label64 + ".x", false},
		{"-a.example", false}, {"a-.example", false}, {"", false}, {"*.", false},
		{"`.example", false}, {"{.example", false}, {"/.example", false}, {":.example", false}, {"a_b.example", false},
		{"server.sidecar", false}, {"client.sidecar.", false},
	} {
		if err := ValidExtraDNS(tc.name, "sidecar"); (err == nil) != tc.ok {
			t.Errorf("ValidExtraDNS(%.20q… %d bytes) = %v, want ok %v", tc.name, len(tc.name), err, tc.ok)
		}
	}

	for _, tc := range []struct {
		node string
		ok   bool
	}{
		{"n", true}, {strings.Repeat("n", 128), true}, {strings.Repeat("n", 129), false}, {"", false},
		{".", false}, {"..", false}, {"a/b", false}, {`a\b`, false}, {"a\x1fb", false}, {"a\x7fb", false}, {"a b~", true},
	} {
		if err := ValidNodeName(tc.node); (err == nil) != tc.ok {
			t.Errorf("ValidNodeName(%.20q) = %v, want ok %v", tc.node, err, tc.ok)
		}
	}
}

// A CA lives at least a day.
func TestNewCA_validity(t *testing.T) {
	if _, err := NewCA(0, time.Now()); err == nil {
		t.Fatal("a CA valid for 0 days")
	}
	ca, err := NewCA(1, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if d := ca.Cert.NotAfter.Sub(ca.Cert.NotBefore); d < 24*time.Hour {
		t.Fatalf("a 1-day CA is valid for %v", d)
	}
}

// A peer whose certificate has the server's name and the cluster CA's
// signature, but no node (so no identity), is refused by a dialer that
// wants a server: the name alone is no identity.
func TestHandshake_serverNameWithoutIdentityRefused(t *testing.T) {
	p := newPKI(t)
	cli := p.loader(RoleClient, "c1")
	cert := signRaw(t, p.ca, &x509.Certificate{Subject: pkix.Name{CommonName: "server.sidecar"}, DNSNames: []string{"server.sidecar"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	addr := startEchoAnyPeer(t, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}})
	if _, _, hello, err := dial(t, addr, cli.ClientConfig(RoleServer)); err == nil {
		t.Fatalf("a server name without a node was trusted: %q", hello)
	}
}

// servedSerial is the serial of the certificate the echo server at addr
// presents to a new connection.
func servedSerial(t *testing.T, addr string, cli *Loader) string {
	t.Helper()
	c, _, _, err := dial(t, addr, cli.ClientConfig(RoleServer))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return peerSerial(c)
}

// Files are looked at no more than once per interval: with an hour, a
// rotation is served only after Reload. 0 means the default interval.
func TestLoader_checkIntervalIsKept(t *testing.T) {
	p := newPKI(t)
	cert, key := p.issue(RoleServer, "s1")
	srv, err := New(Options{CAFile: p.caFile(), CertFile: cert, KeyFile: key, CheckInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cli := p.loader(RoleClient, "c1")
	es := startEcho(t, srv.ServerConfig(), srv)
	old := servedSerial(t, es.addr, cli)
	next := rotate(t, p, srv, RoleServer, "s1")
	for range 3 {
		if got := servedSerial(t, es.addr, cli); got != old {
			t.Fatalf("serving serial %s within the hour's interval, want %s until Reload", got, old)
		}
	}
	if err := srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := servedSerial(t, es.addr, cli); got != next {
		t.Fatalf("serving serial %s after Reload, want %s", got, next)
	}
	for _, c := range []struct{ set, want time.Duration }{{0, DefaultCheckInterval}, {20 * time.Millisecond, 20 * time.Millisecond}, {-1, -1}} {
		l, err := New(Options{CAFile: p.caFile(), CertFile: cert, KeyFile: key, CheckInterval: c.set})
		if err != nil {
			t.Fatal(err)
		}
		if l.interval != c.want {
			t.Errorf("CheckInterval %v: checks every %v, want %v", c.set, l.interval, c.want)
		}
	}
}

// A key file gone at Reload (a half-done rotation) is an error naming it;
// the certificate in use stays, and Reload works once it is back.
func TestLoader_reloadWithAFileGone(t *testing.T) {
	p := newPKI(t)
	srv := p.loader(RoleServer, "s1")
	cli := p.loader(RoleClient, "c1")
	es := startEcho(t, srv.ServerConfig(), srv)
	old := servedSerial(t, es.addr, cli)
	keyPEM, err := os.ReadFile(srv.opts.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(srv.opts.KeyFile); err != nil {
		t.Fatal(err)
	}
	if err := srv.Reload(); err == nil || !strings.Contains(err.Error(), srv.opts.KeyFile) {
		t.Fatalf("Reload without the key file: %v, want an error naming it", err)
	}
	if got := servedSerial(t, es.addr, cli); got != old {
		t.Fatalf("serving %s after a failed Reload, want %s", got, old)
	}
	replaceFile(t, srv.opts.KeyFile, keyPEM)
	if err := srv.Reload(); err != nil {
		t.Fatalf("Reload with the key file back: %v", err)
	}
}

// countingHandler counts the log records at error level.
type countingHandler struct{ errors atomic.Int64 }

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		h.errors.Add(1)
	}
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

// Files changed into something that does not load are reported once, not
// at every interval while they stay so.
func TestLoader_badChangedFilesReportedOnce(t *testing.T) {
	p := newPKI(t)
	cert, key := p.issue(RoleServer, "s1")
	const every = 5 * time.Millisecond
	srv, err := New(Options{CAFile: p.caFile(), CertFile: cert, KeyFile: key, CheckInterval: every})
	if err != nil {
		t.Fatal(err)
	}
	h := &countingHandler{}
	srv.SetLogger(slog.New(h))
	cli := p.loader(RoleClient, "c1")
	es := startEcho(t, srv.ServerConfig(), srv)
	old := servedSerial(t, es.addr, cli)
	replaceFile(t, cert, []byte("not a certificate"))
	deadline := time.Now().Add(5 * time.Second)
	for h.errors.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("a certificate file that does not load was never reported")
		}
		servedSerial(t, es.addr, cli)
		time.Sleep(every) // the interval must pass for a handshake to check
	}
	for range 10 {
		time.Sleep(2 * every)
		if got := servedSerial(t, es.addr, cli); got != old {
			t.Fatalf("serving %s with a broken file, want the old %s", got, old)
		}
	}
	if n := h.errors.Load(); n != 1 {
		t.Fatalf("the same broken file reported %d times, want once", n)
	}
}
