package tlsutil

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"strings"
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
