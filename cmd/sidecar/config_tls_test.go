package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/discovery"
	"github.com/sidecarhq/sidecar/tlsutil"
)

// tlsFixture is a CA and certificates made the way 'sidecar tls' makes them.
type tlsFixture struct {
	dir string
	ca  *tlsutil.CA
}

func newTLSFixture(t *testing.T) *tlsFixture {
	t.Helper()
	ca, err := tlsutil.NewCA(30, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, _, err := tlsutil.WriteCA(dir, ca); err != nil {
		t.Fatal(err)
	}
	return &tlsFixture{dir: dir, ca: ca}
}

func (f *tlsFixture) caFile() string { return filepath.Join(f.dir, tlsutil.CACertFile) }

// cert writes a certificate for node into its own directory (so two
// fixtures can hold the same node name) and returns its and its key's path.
func (f *tlsFixture) cert(t *testing.T, role tlsutil.Role, node string) (string, string) {
	t.Helper()
	c, k, err := f.ca.Issue(tlsutil.CertRequest{Role: role, Node: node})
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := tlsutil.WriteCert(t.TempDir(), node, c, k)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// tlsArgs are the three flags for a certificate of f.
func (f *tlsFixture) tlsArgs(t *testing.T, role tlsutil.Role, node string) []string {
	cert, key := f.cert(t, role, node)
	return []string{"--tls-ca-file", f.caFile(), "--tls-cert-file", cert, "--tls-key-file", key}
}

func TestParseAgentConfig_TLS(t *testing.T) {
	setupConfigTest(t)
	f := newTLSFixture(t)
	args := append(f.tlsArgs(t, tlsutil.RoleServer, "s1"), "--server", "--name", "s1", "--encrypt", testKey, "--https-addr", "127.0.0.1:7443")
	c, err := parseAgentConfig(args)
	if err != nil {
		t.Fatal(err)
	}
	if c.TLS == nil || c.TLS.Identity() != (tlsutil.Identity{Role: tlsutil.RoleServer, Node: "s1"}) || c.HTTPSAddr != "127.0.0.1:7443" {
		t.Fatalf("TLS %v, https %q", c.TLS, c.HTTPSAddr)
	}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).LogAttrs(context.Background(), slog.LevelInfo, "start", c.Banner()...)
	for _, want := range []string{"tls=true", `tls_identity="server s1"`, "https_addr=127.0.0.1:7443", "tls_cert_not_after="} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("banner %q lacks %q", buf.String(), want)
		}
	}
	if w := c.SecurityWarnings(); len(w) != 0 {
		t.Errorf("warnings with TLS and encryption: %q", w)
	}

	// The environment (SIDECAR_TLS_*) and the config file work like any
	// setting; a client needs no server certificate.
	cert, key := f.cert(t, tlsutil.RoleClient, "web-1")
	t.Setenv("SIDECAR_TLS_CA_FILE", f.caFile())
	t.Setenv("SIDECAR_TLS_CERT_FILE", cert)
	file := writeConfig(t, "c.yaml", "tls-key-file: "+key+"\n")
	c, err = parseAgentConfig([]string{"--config-file", file, "--encrypt", testKey})
	if err != nil {
		t.Fatal(err)
	}
	if c.TLS == nil || c.TLS.Identity().Role != tlsutil.RoleClient {
		t.Fatal("TLS from env and file not loaded")
	}

	// --dev may run TLS without --encrypt.
	cert, key = f.cert(t, tlsutil.RoleServer, "web-1")
	t.Setenv("SIDECAR_TLS_CERT_FILE", cert)
	if _, err := parseAgentConfig([]string{"--dev", "--tls-key-file", key}); err != nil {
		t.Fatalf("--dev with TLS: %v", err)
	}
}

func TestParseAgentConfig_noTLSWarnsLoudly(t *testing.T) {
	setupConfigTest(t)
	c, err := parseAgentConfig([]string{"--server"})
	if err != nil {
		t.Fatal(err)
	}
	if c.TLS != nil {
		t.Fatal("TLS loaded without files")
	}
	w := strings.Join(c.SecurityWarnings(), "\n")
	for _, want := range []string{"TLS is off", "0.0.0.0:7947", "gossip is not encrypted"} {
		if !strings.Contains(w, want) {
			t.Errorf("warnings %q lack %q", w, want)
		}
	}
}

func TestRun_agentTLSConfigErrors(t *testing.T) {
	setupConfigTest(t)
	f, other := newTLSFixture(t), newTLSFixture(t)
	srvCert, srvKey := f.cert(t, tlsutil.RoleServer, "web-1")
	cliCert, cliKey := f.cert(t, tlsutil.RoleClient, "web-1")
	otherCert, otherKey := other.cert(t, tlsutil.RoleServer, "web-1")
	_, s2Key := f.cert(t, tlsutil.RoleServer, "s2")
	s2Cert, _ := f.cert(t, tlsutil.RoleServer, "s2")
	tlsArgs := func(ca, cert, key string) []string {
		return []string{"--tls-ca-file", ca, "--tls-cert-file", cert, "--tls-key-file", key, "--encrypt", testKey}
	}
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"cert only", []string{"--tls-cert-file", srvCert}, "--tls-cert-file is set but --tls-ca-file and --tls-key-file are missing"},
		{"key missing", []string{"--tls-ca-file", f.caFile(), "--tls-cert-file", srvCert}, "--tls-key-file is missing"},
		{"https without TLS", []string{"--https-addr", "127.0.0.1:7443"}, "--https-addr needs TLS"},
		{"https bad addr", []string{"--https-addr", "localhost:7443"}, "invalid --https-addr"},
		{"https port clash", append(tlsArgs(f.caFile(), srvCert, srvKey), "--https-addr", "127.0.0.1:7080"), "--http-addr 127.0.0.1:7080 and --https-addr 127.0.0.1:7080 use the same port"},
		{"no encrypt", []string{"--tls-ca-file", f.caFile(), "--tls-cert-file", srvCert, "--tls-key-file", srvKey}, "gossip is not encrypted: set --encrypt"},
		{"cert of another CA", tlsArgs(f.caFile(), otherCert, otherKey), "does not verify against CA file"},
		{"key of another cert", tlsArgs(f.caFile(), srvCert, s2Key), "private key does not match"},
		{"missing file", tlsArgs(filepath.Join(f.dir, "nope.pem"), srvCert, srvKey), "nope.pem"},
		{"server with client cert", append(tlsArgs(f.caFile(), cliCert, cliKey), "--server"), "--server needs a server certificate"},
		{"other node's cert", tlsArgs(f.caFile(), s2Cert, filepath.Join(filepath.Dir(s2Cert), "s2-key.pem")), `is for node "s2", but this agent's --name is "web-1"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, append([]string{"agent"}, tt.args...)...)
			if code != exitUsage || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "sidecar: ") {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit 2 and one line", code, stdout, stderr)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Fatalf("stderr %q lacks %q", stderr, tt.want)
			}
		})
	}
	// A keyring kept in the data dir by an earlier start encrypts gossip:
	// TLS without --encrypt is fine then.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, discovery.KeyringFileName), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := parseAgentConfig([]string{"--tls-ca-file", f.caFile(), "--tls-cert-file", srvCert, "--tls-key-file", srvKey, "--data-dir", dir}); err != nil {
		t.Fatalf("TLS with a kept keyring and no --encrypt: %v", err)
	}
	// The loader itself reports errors.Is-able identity errors; the config
	// layer only adds context.
	if _, err := parseAgentConfig(tlsArgs(f.caFile(), srvCert, srvKey)); err != nil {
		var ce *configError
		t.Fatalf("valid TLS refused: %v (config error: %v)", err, errors.As(err, &ce))
	}
}
