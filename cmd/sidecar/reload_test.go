//go:build unix

package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/tlsutil"
)

func TestWatchSIGHUP_reloadsTLSFiles(t *testing.T) {
	setupConfigTest(t)
	f := newTLSFixture(t)
	cert, key := f.cert(t, tlsutil.RoleServer, "web-1")
	c, err := parseAgentConfig([]string{"--server", "--encrypt", testKey,
		"--tls-ca-file", f.caFile(), "--tls-cert-file", cert, "--tls-key-file", key})
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	c.TLS.SetLogger(log)
	stop := watchSIGHUP(context.Background(), c, log, nil)
	defer stop()

	old := c.TLS.Certificate().SerialNumber.String()
	newCert, newKey, err := f.ca.Issue(tlsutil.CertRequest{Role: tlsutil.RoleServer, Node: "web-1"})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(cert)
	for name, b := range map[string][]byte{"web-1-key.pem": newKey, "web-1.pem": newCert} {
		if err := os.WriteFile(filepath.Join(dir, name+".tmp"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, name+".tmp"), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for c.TLS.Certificate().SerialNumber.String() == old {
		if time.Now().After(deadline) {
			t.Fatalf("certificate not reloaded after SIGHUP; logs: %s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}

	// A broken file: the process lives on, the certificate stays, the log
	// says why.
	current := c.TLS.Certificate().SerialNumber.String()
	if err := os.WriteFile(cert, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	for !strings.Contains(logs.String(), "TLS files not reloaded") {
		if time.Now().After(deadline) {
			t.Fatalf("no error logged for a broken certificate; logs: %s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := c.TLS.Certificate().SerialNumber.String(); got != current {
		t.Fatalf("serial %s after a failed reload, want %s", got, current)
	}
}
