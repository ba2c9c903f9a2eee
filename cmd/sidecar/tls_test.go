package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sidecarhq/sidecar/tlsutil"
)

func TestCLI_tlsCreatesLoadableFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	if code, stdout, stderr := runCLI(t, "tls", "ca", "create", "--dir", dir); code != exitOK || stderr != "" ||
		!strings.Contains(stdout, tlsutil.CACertFile) {
		t.Fatalf("ca create: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if code, _, stderr := runCLI(t, "tls", "cert", "create", "--server", "--node", "s1", "--dir", dir,
		"--san", "s1.example.com", "--san", "10.0.0.5,db.internal"); code != exitOK {
		t.Fatalf("cert create --server: exit %d, %q", code, stderr)
	}
	// The CA named explicitly, the certificate written elsewhere.
	other := t.TempDir()
	if code, _, stderr := runCLI(t, "tls", "cert", "create", "--client", "--node", "c1", "--dir", other, "--days", "30",
		"--ca", filepath.Join(dir, tlsutil.CACertFile), "--ca-key", filepath.Join(dir, tlsutil.CAKeyFile)); code != exitOK {
		t.Fatalf("cert create --client --ca: exit %d, %q", code, stderr)
	}

	for _, f := range []struct {
		path string
		mode os.FileMode
	}{
		{filepath.Join(dir, "sidecar-ca.pem"), 0o644}, {filepath.Join(dir, "sidecar-ca-key.pem"), 0o600},
		{filepath.Join(dir, "s1.pem"), 0o644}, {filepath.Join(dir, "s1-key.pem"), 0o600},
		{filepath.Join(other, "c1.pem"), 0o644}, {filepath.Join(other, "c1-key.pem"), 0o600},
	} {
		fi, err := os.Stat(f.path)
		if err != nil || fi.Mode().Perm() != f.mode {
			t.Errorf("%s: %v, mode %v; want %v", f.path, err, fi.Mode().Perm(), f.mode)
		}
	}

	// What the commands made is what an agent loads.
	for node, want := range map[string]tlsutil.Identity{
		filepath.Join(dir, "s1"):   {Role: tlsutil.RoleServer, Node: "s1"},
		filepath.Join(other, "c1"): {Role: tlsutil.RoleClient, Node: "c1"},
	} {
		l, err := tlsutil.New(tlsutil.Options{CAFile: filepath.Join(dir, tlsutil.CACertFile), CertFile: node + ".pem", KeyFile: node + "-key.pem"})
		if err != nil {
			t.Fatalf("load %s: %v", node, err)
		}
		if l.Identity() != want {
			t.Errorf("%s: identity %v, want %v", node, l.Identity(), want)
		}
		if want.Role == tlsutil.RoleServer {
			c := l.Certificate()
			if err := c.VerifyHostname("s1.example.com"); err != nil {
				t.Errorf("--san name: %v", err)
			}
			if err := c.VerifyHostname("db.internal"); err != nil {
				t.Errorf("--san name in a list: %v", err)
			}
			if err := c.VerifyHostname("10.0.0.5"); err != nil {
				t.Errorf("--san IP: %v", err)
			}
		}
	}
}

func TestCLI_tlsRefusesToOverwrite(t *testing.T) {
	dir := t.TempDir()
	runCLI(t, "tls", "ca", "create", "--dir", dir)
	runCLI(t, "tls", "cert", "create", "--server", "--node", "s1", "--dir", dir)
	caKey, _ := os.ReadFile(filepath.Join(dir, tlsutil.CAKeyFile))
	key, _ := os.ReadFile(filepath.Join(dir, "s1-key.pem"))

	for _, args := range [][]string{
		{"tls", "ca", "create", "--dir", dir},
		{"tls", "cert", "create", "--client", "--node", "s1", "--dir", dir},
	} {
		code, stdout, stderr := runCLI(t, args...)
		if code != exitFailure || !strings.Contains(stderr, "already exists") || strings.Count(stderr, "\n") != 1 || stdout != "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 1 and one line", args, code, stdout, stderr)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, tlsutil.CAKeyFile)); string(b) != string(caKey) {
		t.Error("CA key changed")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "s1-key.pem")); string(b) != string(key) {
		t.Error("agent key changed")
	}
}

func TestCLI_tlsErrors(t *testing.T) {
	dir := t.TempDir()
	runCLI(t, "tls", "ca", "create", "--dir", dir)
	empty := t.TempDir()
	for _, tt := range []struct {
		args     []string
		wantCode int
		wantErr  string
	}{
		{[]string{"tls"}, exitUsage, "want 'ca create' or 'cert create'"},
		{[]string{"tls", "ca"}, exitUsage, "want 'tls ca create'"},
		{[]string{"tls", "key", "create"}, exitUsage, "unknown subcommand"},
		{[]string{"tls", "ca", "create", "extra"}, exitUsage, "unexpected argument"},
		{[]string{"tls", "ca", "create", "--days", "0"}, exitUsage, "--days"},
		{[]string{"tls", "cert", "create", "--node", "a", "--dir", dir}, exitUsage, "want --server or --client"},
		{[]string{"tls", "cert", "create", "--server", "--client", "--node", "a", "--dir", dir}, exitUsage, "exclude each other"},
		{[]string{"tls", "cert", "create", "--server", "--dir", dir}, exitUsage, "missing --node"},
		{[]string{"tls", "cert", "create", "--server", "--node", "a/b", "--dir", dir}, exitUsage, "--node"},
		{[]string{"tls", "cert", "create", "--server", "--node", "a", "--ca", "x.pem", "--dir", dir}, exitUsage, "--ca and --ca-key"},
		{[]string{"tls", "cert", "create", "--server", "--node", "a", "--days", "-1", "--dir", dir}, exitUsage, "--days"},
		{[]string{"tls", "cert", "create", "--server", "--node", "a", "--domain", "a..b", "--dir", dir}, exitUsage, "--domain"},
		{[]string{"tls", "cert", "create", "--server", "--node", "a", "--bogus"}, exitUsage, "bogus"},
		{[]string{"tls", "cert", "create", "--client", "--node", "a", "--san", "server.sidecar", "--dir", dir}, exitUsage, "role name"},
		{[]string{"tls", "cert", "create", "--client", "--node", "a", "--san", "bad_name", "--dir", dir}, exitUsage, "not a DNS name"},
		{[]string{"tls", "cert", "create", "--server", "--node", "a", "--dir", empty}, exitFailure, "sidecar tls ca create"},
		{[]string{"tls", "cert", "create", "--server", "--node", "a", "--dir", dir, "--days", "100000"}, exitFailure, "outlive the CA"},
		{[]string{"tls", "cert", "create", "--server", "--node", "a", "--dir", dir,
			"--ca", filepath.Join(dir, tlsutil.CACertFile), "--ca-key", filepath.Join(dir, tlsutil.CACertFile)}, exitFailure, "key"},
	} {
		code, stdout, stderr := runCLI(t, tt.args...)
		if code != tt.wantCode || !strings.Contains(stderr, tt.wantErr) || strings.Count(stderr, "\n") != 1 ||
			!strings.HasPrefix(stderr, "sidecar: ") || stdout != "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit %d and one line with %q", tt.args, code, stdout, stderr, tt.wantCode, tt.wantErr)
		}
	}
	if _, err := os.Stat(filepath.Join(empty, "a.pem")); err == nil {
		t.Error("a certificate was written without a CA")
	}
}

func TestCLI_tlsHelp(t *testing.T) {
	for _, args := range [][]string{
		{"tls", "--help"}, {"help", "tls"}, {"tls", "cert", "--help"},
		{"tls", "ca", "create", "--help"}, {"tls", "cert", "create", "-h"},
	} {
		code, stdout, stderr := runCLI(t, args...)
		if code != exitOK || !strings.Contains(stdout, "Usage: sidecar tls") || stderr != "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, stdout, stderr)
		}
	}
	if _, stdout, _ := runCLI(t, "help"); !strings.Contains(stdout, "tls") {
		t.Error("sidecar help does not list tls")
	}
}
