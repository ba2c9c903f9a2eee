package tlsutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestCA_Issue_carriesRoleAndNode(t *testing.T) {
	ca, err := NewCA(30, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		role Role
		node string
		dns  string
	}{
		{RoleServer, "db-1", "server.sidecar"},
		{RoleClient, "web 1 (ü:x)", "client.sidecar"}, // not DNS-safe: carried in the URI SAN
	} {
		certPEM, _, err := ca.Issue(CertRequest{Role: tc.role, Node: tc.node, Domain: "Sidecar."})
		if err != nil {
			t.Fatal(err)
		}
		certs, err := parseCerts(certPEM)
		if err != nil {
			t.Fatal(err)
		}
		c := certs[0]
		if !slices.Contains(c.DNSNames, tc.dns) || c.Subject.CommonName != tc.node {
			t.Errorf("%s %q: DNS names %v, CN %q", tc.role, tc.node, c.DNSNames, c.Subject.CommonName)
		}
		if _, ok := c.PublicKey.(*ecdsa.PublicKey); !ok {
			t.Errorf("public key is %T, want ECDSA", c.PublicKey)
		}
		id, err := IdentityOf(c, "sidecar")
		if err != nil || id != (Identity{Role: tc.role, Node: tc.node}) {
			t.Errorf("IdentityOf = %v, %v; want %s %q", id, err, tc.role, tc.node)
		}
		if _, err := IdentityOf(c, "other"); !errors.Is(err, ErrNoRole) {
			t.Errorf("IdentityOf in another domain: err = %v, want ErrNoRole", err)
		}
	}
}

func TestCA_Issue_refusesBadRequests(t *testing.T) {
	ca, err := NewCA(30, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for name, req := range map[string]CertRequest{
		"no role":          {Node: "a"},
		"no node":          {Role: RoleServer},
		"slash in node":    {Role: RoleServer, Node: "../etc/passwd"},
		"outlives the CA":  {Role: RoleServer, Node: "a", Days: 31},
		"negative days":    {Role: RoleServer, Node: "a", Days: -1},
		"bad domain":       {Role: RoleServer, Node: "a", Domain: "a..b"},
		"control char":     {Role: RoleServer, Node: "a\nb"},
		"dot-dot for node": {Role: RoleServer, Node: ".."},
	} {
		if _, _, err := ca.Issue(req); err == nil {
			t.Errorf("%s: Issue succeeded", name)
		}
	}
}

func TestWriteCA_refusesToOverwrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new") // created on demand
	ca, _ := NewCA(30, time.Now())
	certPath, keyPath, err := WriteCA(dir, ca)
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]fs.FileMode{certPath: 0o644, keyPath: 0o600} {
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, %v; want %v", path, fi.Mode().Perm(), err, want)
		}
	}
	before, _ := os.ReadFile(keyPath)
	ca2, _ := NewCA(30, time.Now())
	if _, _, err := WriteCA(dir, ca2); !errors.Is(err, ErrExists) {
		t.Fatalf("second WriteCA: err = %v, want ErrExists", err)
	}
	after, _ := os.ReadFile(keyPath)
	if string(before) != string(after) {
		t.Fatal("refused WriteCA changed the key file")
	}

	// A key left alone (its certificate deleted) also blocks, and the
	// certificate is not written without it.
	os.Remove(certPath)
	if _, _, err := WriteCA(dir, ca2); !errors.Is(err, ErrExists) {
		t.Fatalf("WriteCA over a lone key: err = %v, want ErrExists", err)
	}
	if _, err := os.Stat(certPath); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("certificate written beside a foreign key: %v", err)
	}

	parsed, err := ParseCA(ca.CertPEM(), before)
	if err != nil || !parsed.Cert.Equal(ca.Cert) {
		t.Fatalf("ParseCA of the written files: %v", err)
	}
	if _, err := ParseCA(ca2.CertPEM(), before); err == nil {
		t.Fatal("ParseCA accepted a key of another CA")
	}
}

func TestWriteCert_refusesToOverwrite(t *testing.T) {
	p := newPKI(t)
	cert, key := p.issue(RoleServer, "s1")
	for path, want := range map[string]fs.FileMode{cert: 0o644, key: 0o600} {
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, %v; want %v", path, fi.Mode().Perm(), err, want)
		}
	}
	if filepath.Base(cert) != "s1.pem" || filepath.Base(key) != "s1-key.pem" {
		t.Errorf("files %s, %s; want s1.pem, s1-key.pem", cert, key)
	}
	c, k, _ := p.ca.Issue(CertRequest{Role: RoleClient, Node: "s1"})
	if _, _, err := WriteCert(p.dir, "s1", c, k); !errors.Is(err, ErrExists) {
		t.Fatalf("second WriteCert: err = %v, want ErrExists", err)
	}
}

func TestNew_refusesBadFiles(t *testing.T) {
	p, other := newPKI(t), newPKI(t)
	cert, key := p.issue(RoleServer, "s1")
	otherCert, otherKey := other.issue(RoleServer, "s1")
	_, c2key := p.issue(RoleServer, "s2")

	expired, expiredKey, err := p.ca.Issue(CertRequest{Role: RoleServer, Node: "old", Days: 1, Now: time.Now().AddDate(0, 0, -3)})
	if err != nil {
		t.Fatal(err)
	}
	expiredPath, expiredKeyPath, _ := WriteCert(p.dir, "old", expired, expiredKey)

	for name, o := range map[string]Options{
		"cert of another CA":   {CAFile: p.caFile(), CertFile: otherCert, KeyFile: otherKey},
		"key of another cert":  {CAFile: p.caFile(), CertFile: cert, KeyFile: c2key},
		"expired cert":         {CAFile: p.caFile(), CertFile: expiredPath, KeyFile: expiredKeyPath},
		"missing CA file":      {CAFile: filepath.Join(p.dir, "nope.pem"), CertFile: cert, KeyFile: key},
		"leaf as CA":           {CAFile: cert, CertFile: cert, KeyFile: key},
		"role of other domain": {CAFile: p.caFile(), CertFile: cert, KeyFile: key, Domain: "corp"},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("%s: New succeeded", name)
		} else if strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error spans lines: %q", name, err)
		}
	}
	l, err := New(Options{CAFile: p.caFile(), CertFile: cert, KeyFile: key})
	if err != nil {
		t.Fatal(err)
	}
	if l.Identity() != (Identity{RoleServer, "s1"}) {
		t.Fatalf("Identity = %v", l.Identity())
	}
}

func TestHandshake_mutualVerification(t *testing.T) {
	p := newPKI(t)
	srv, cli := p.loader(RoleServer, "s1"), p.loader(RoleClient, "c1")
	es := startEcho(t, srv.ServerConfig(), srv)

	c, r, hello, err := dial(t, es.addr, cli.ClientConfig(RoleServer))
	if err != nil {
		t.Fatal(err)
	}
	if hello != "hello client c1" {
		t.Fatalf("server saw %q, want client c1", hello)
	}
	if id, err := cli.PeerIdentity(c.ConnectionState()); err != nil || id != (Identity{RoleServer, "s1"}) {
		t.Fatalf("client saw %v, %v; want server s1", id, err)
	}
	if v := c.ConnectionState().Version; v != tls.VersionTLS13 {
		t.Fatalf("version %x, want TLS 1.3", v)
	}
	echo(t, c, r, "ping")
}

func TestHandshake_refusesTLS12(t *testing.T) {
	p := newPKI(t)
	srv, cli := p.loader(RoleServer, "s1"), p.loader(RoleClient, "c1")
	es := startEcho(t, srv.ServerConfig(), srv)
	cfg := cli.ClientConfig(RoleServer)
	cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	if _, _, _, err := dial(t, es.addr, cfg); err == nil {
		t.Fatal("TLS 1.2 handshake succeeded")
	}
	if n := es.reachedCount(); n != 0 {
		t.Fatalf("%d TLS 1.2 connections reached the server", n)
	}
}

func TestHandshake_otherCARefusedBothWays(t *testing.T) {
	p, other := newPKI(t), newPKI(t)
	srv, cli := p.loader(RoleServer, "s1"), p.loader(RoleClient, "c1")
	evilSrv, evilCli := other.loader(RoleServer, "s1"), other.loader(RoleServer, "s9")

	// A peer with a certificate of another CA dials our server.
	es := startEcho(t, srv.ServerConfig(), srv)
	evilCfg := evilCli.ClientConfig(RoleServer)
	evilCfg.RootCAs = srv.cur.Load().pool // it even trusts our server
	if _, _, _, err := dial(t, es.addr, evilCfg); err == nil {
		t.Fatal("client certificate of another CA was accepted")
	}
	if n := es.reachedCount(); n != 0 {
		t.Fatalf("%d foreign connections reached the server", n)
	}

	// We dial a server holding a certificate of another CA.
	evilSrv.cur.Load().server.ClientCAs = srv.cur.Load().pool // it would accept us
	evil := startEcho(t, evilSrv.ServerConfig(), evilSrv)
	if _, _, _, err := dial(t, evil.addr, cli.ClientConfig(RoleServer)); err == nil {
		t.Fatal("server certificate of another CA was accepted")
	}
	if n := evil.reachedCount(); n != 0 {
		t.Fatalf("our client completed %d connections to a foreign server", n)
	}
}

func TestHandshake_plaintextGetsNothing(t *testing.T) {
	p := newPKI(t)
	srv := p.loader(RoleServer, "s1")
	es := startEcho(t, srv.ServerConfig(), srv)

	c, err := net.DialTimeout("tcp", es.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "\x02POST /rpc/v1/apply HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
	got, _ := io.ReadAll(c) // until the server closes
	if strings.Contains(string(got), "hello") || strings.Contains(string(got), "HTTP/") {
		t.Fatalf("plaintext client got an answer: %q", got)
	}
	if n := es.reachedCount(); n != 0 {
		t.Fatalf("%d plaintext connections reached the server", n)
	}
}

func TestHandshake_certificateLessClientGetsNothing(t *testing.T) {
	p := newPKI(t)
	srv := p.loader(RoleServer, "s1")
	es := startEcho(t, srv.ServerConfig(), srv)
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: srv.cur.Load().pool, ServerName: "server.sidecar"}
	if _, _, _, err := dial(t, es.addr, cfg); err == nil {
		t.Fatal("a client without a certificate was answered")
	}
	if n := es.reachedCount(); n != 0 {
		t.Fatalf("%d certificate-less connections reached the server", n)
	}
}

func TestHandshake_clientCertCannotPassAsServer(t *testing.T) {
	p := newPKI(t)
	impostor, cli := p.loader(RoleClient, "c9"), p.loader(RoleClient, "c1")
	// A client agent listens where a server should be, with its own
	// (valid, same-CA) client certificate.
	es := startEcho(t, impostor.ServerConfig(), impostor)
	_, _, _, err := dial(t, es.addr, cli.ClientConfig(RoleServer))
	if err == nil {
		t.Fatal("a client certificate passed as a server")
	}
	if n := es.reachedCount(); n != 0 {
		t.Fatalf("%d connections reached the impostor", n)
	}
	// The same listener is fine for a dialer that wants a client.
	if _, _, hello, err := dial(t, es.addr, cli.ClientConfig(RoleClient)); err != nil || hello != "hello client c1" {
		t.Fatalf("dial wanting a client: %q, %v", hello, err)
	}
}

func TestHandshake_certificateWithoutRoleRefused(t *testing.T) {
	p := newPKI(t)
	srv := p.loader(RoleServer, "s1")
	es := startEcho(t, srv.ServerConfig(), srv)
	// Signed by the cluster CA, but for some other purpose: no role name.
	cert := signRaw(t, p.ca, &x509.Certificate{Subject: pkix.Name{CommonName: "printer"}, DNSNames: []string{"printer.example"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: srv.cur.Load().pool, ServerName: "server.sidecar", Certificates: []tls.Certificate{cert}}
	if _, _, _, err := dial(t, es.addr, cfg); err == nil {
		t.Fatal("a certificate without a role was answered")
	}
	if n := es.reachedCount(); n != 0 {
		t.Fatalf("%d role-less connections reached the server", n)
	}
}

// signRaw signs tmpl with ca as it is, for certificates sidecar would
// never issue.
func signRaw(t *testing.T, ca *CA, tmpl *x509.Certificate) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

func TestPeerIdentity_errors(t *testing.T) {
	p, other := newPKI(t), newPKI(t)
	l := p.loader(RoleServer, "s1")
	leafOf := func(pemBytes []byte) *x509.Certificate {
		cs, err := parseCerts(pemBytes)
		if err != nil {
			t.Fatal(err)
		}
		return cs[0]
	}
	good, _, _ := p.ca.Issue(CertRequest{Role: RoleClient, Node: "c1"})
	foreign, _, _ := other.ca.Issue(CertRequest{Role: RoleServer, Node: "s1"})
	expired, _, _ := p.ca.Issue(CertRequest{Role: RoleServer, Node: "s2", Days: 1, Now: time.Now().AddDate(0, 0, -2)})
	noNode := signRaw(t, p.ca, &x509.Certificate{DNSNames: []string{"server.sidecar"}})
	bothRoles := signRaw(t, p.ca, &x509.Certificate{DNSNames: []string{"server.sidecar", "client.sidecar"}, URIs: nodeURIs("x")})
	cnMismatch := signRaw(t, p.ca, &x509.Certificate{Subject: pkix.Name{CommonName: "y"}, DNSNames: []string{"server.sidecar"}, URIs: nodeURIs("x")})

	state := func(c *x509.Certificate) tls.ConnectionState {
		return tls.ConnectionState{HandshakeComplete: true, PeerCertificates: []*x509.Certificate{c}}
	}
	if id, err := l.PeerIdentity(state(leafOf(good))); err != nil || id != (Identity{RoleClient, "c1"}) {
		t.Fatalf("good certificate: %v, %v", id, err)
	}
	for name, tc := range map[string]struct {
		cs   tls.ConnectionState
		want error
	}{
		"no certificate": {tls.ConnectionState{HandshakeComplete: true}, ErrNoCertificate},
		"another CA":     {state(leafOf(foreign)), nil},
		"expired":        {state(leafOf(expired)), nil},
		"no node":        {state(noNode.Leaf), ErrNoNode},
		"both roles":     {state(bothRoles.Leaf), ErrNoRole},
		"CN mismatch":    {state(cnMismatch.Leaf), ErrNoNode},
	} {
		id, err := l.PeerIdentity(tc.cs)
		if err == nil {
			t.Errorf("%s: identity %v, want an error", name, id)
		} else if tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", name, err, tc.want)
		}
	}
}

func nodeURIs(n string) []*url.URL { return []*url.URL{NodeURI(n)} }

// rotate issues a new certificate for node and swaps it into the files l
// reads; it returns the new serial.
func rotate(t *testing.T, p *pki, l *Loader, role Role, node string) string {
	t.Helper()
	c, k, err := p.ca.Issue(CertRequest{Role: role, Node: node})
	if err != nil {
		t.Fatal(err)
	}
	// Key first: between the two renames the pair does not match, which a
	// concurrent check must survive (it keeps the old material).
	replaceFile(t, l.opts.KeyFile, k)
	replaceFile(t, l.opts.CertFile, c)
	certs, _ := parseCerts(c)
	return certs[0].SerialNumber.String()
}

func TestLoader_Reload_rotatesForNewConnectionsOnly(t *testing.T) {
	p := newPKI(t)
	srv, cli := p.loader(RoleServer, "s1"), p.loader(RoleClient, "c1")
	es := startEcho(t, srv.ServerConfig(), srv)

	old, oldR, _, err := dial(t, es.addr, cli.ClientConfig(RoleServer))
	if err != nil {
		t.Fatal(err)
	}
	oldSerial := peerSerial(old)

	newSerial := rotate(t, p, srv, RoleServer, "s1")
	if err := srv.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	fresh, _, _, err := dial(t, es.addr, cli.ClientConfig(RoleServer))
	if err != nil {
		t.Fatal(err)
	}
	if got := peerSerial(fresh); got != newSerial || got == oldSerial {
		t.Fatalf("new connection got serial %s; want the new %s (old %s)", got, newSerial, oldSerial)
	}
	echo(t, old, oldR, "still here") // established before the rotation

	// A bad reload keeps the material in use and says why.
	replaceFile(t, srv.opts.CertFile, []byte("not a certificate"))
	if err := srv.Reload(); err == nil {
		t.Fatal("Reload of a broken certificate succeeded")
	}
	again, _, _, err := dial(t, es.addr, cli.ClientConfig(RoleServer))
	if err != nil {
		t.Fatalf("dial after a failed reload: %v", err)
	}
	if got := peerSerial(again); got != newSerial {
		t.Fatalf("after a failed reload serial %s, want %s", got, newSerial)
	}
}

func TestLoader_Reload_refusesAnotherIdentity(t *testing.T) {
	p := newPKI(t)
	srv := p.loader(RoleServer, "s1")
	rotate(t, p, srv, RoleClient, "s1") // same node, now a client certificate
	if err := srv.Reload(); err == nil || !strings.Contains(err.Error(), "restart") {
		t.Fatalf("Reload to another role: err = %v", err)
	}
	if srv.Identity() != (Identity{RoleServer, "s1"}) {
		t.Fatalf("identity changed to %v", srv.Identity())
	}
}

func TestLoader_picksUpChangedFilesWithoutReload(t *testing.T) {
	p := newPKI(t)
	cert, key := p.issue(RoleServer, "s1")
	srv, err := New(Options{CAFile: p.caFile(), CertFile: cert, KeyFile: key, CheckInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	cli := p.loader(RoleClient, "c1")
	es := startEcho(t, srv.ServerConfig(), srv)
	newSerial := rotate(t, p, srv, RoleServer, "s1")

	deadline := time.Now().Add(5 * time.Second)
	for {
		c, _, _, err := dial(t, es.addr, cli.ClientConfig(RoleServer))
		if err != nil {
			t.Fatal(err)
		}
		got := peerSerial(c)
		c.Close()
		if got == newSerial {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still serving serial %s, want %s", got, newSerial)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestLoader_CARotation(t *testing.T) {
	// Old and new CA in one file: agents with certificates of either
	// connect, so agents can move to the new CA one at a time.
	p, next := newPKI(t), newPKI(t)
	srv := p.loader(RoleServer, "s1")
	bundle, _ := os.ReadFile(p.caFile())
	replaceFile(t, p.caFile(), append(bundle, next.ca.CertPEM()...))
	if err := srv.Reload(); err != nil {
		t.Fatal(err)
	}
	es := startEcho(t, srv.ServerConfig(), srv)

	cert, key := next.issue(RoleClient, "c2")
	onNew, err := New(Options{CAFile: p.caFile(), CertFile: cert, KeyFile: key, CheckInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, hello, err := dial(t, es.addr, onNew.ClientConfig(RoleServer)); err != nil || hello != "hello client c2" {
		t.Fatalf("client of the new CA: %q, %v", hello, err)
	}
}

func TestHTTPSConfig_clientCertificateOptionalButVerified(t *testing.T) {
	p, other := newPKI(t), newPKI(t)
	srv := p.loader(RoleClient, "c1") // a client agent serves its HTTPS API too
	es := startEchoAnyPeer(t, srv.HTTPSConfig())

	// curl --cacert sidecar-ca.pem https://127.0.0.1:PORT: no certificate.
	curl := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: srv.cur.Load().pool, ServerName: "127.0.0.1"}
	if _, _, hello, err := dial(t, es, curl); err != nil || hello != "hello" {
		t.Fatalf("HTTPS without a client certificate: %q, %v", hello, err)
	}
	// A certificate that is sent must verify.
	foreign := other.loader(RoleClient, "x").ClientConfig(RoleClient)
	foreign.RootCAs = srv.cur.Load().pool
	if _, _, _, err := dial(t, es, foreign); err == nil {
		t.Fatal("HTTPS accepted a client certificate of another CA")
	}
}

// startEchoAnyPeer greets every handshake that completes with "hello".
func startEchoAnyPeer(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if c.(*tls.Conn).Handshake() == nil {
				io.WriteString(c, "hello\n")
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

func TestCA_Issue_extraNames(t *testing.T) {
	ca, _ := NewCA(30, time.Now())
	certPEM, _, err := ca.Issue(CertRequest{Role: RoleClient, Node: "web-1",
		ExtraDNS: []string{"Web-1.Example.com.", "*.svc.local", "localhost"}, ExtraIPs: []net.IP{net.ParseIP("10.0.0.5"), net.ParseIP("127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	certs, _ := parseCerts(certPEM)
	c := certs[0]
	if want := []string{"client.sidecar", "localhost", "web-1.example.com", "*.svc.local"}; !slices.Equal(c.DNSNames, want) {
		t.Errorf("DNS names %v, want %v", c.DNSNames, want)
	}
	if len(c.IPAddresses) != 3 || !c.IPAddresses[2].Equal(net.ParseIP("10.0.0.5")) {
		t.Errorf("IP addresses %v", c.IPAddresses)
	}
	if id, err := IdentityOf(c, "sidecar"); err != nil || id != (Identity{RoleClient, "web-1"}) {
		t.Errorf("identity %v, %v", id, err)
	}
	for _, bad := range []string{"server.sidecar", "client.sidecar.", "a_b.example", "-a.example", ""} {
		if _, _, err := ca.Issue(CertRequest{Role: RoleClient, Node: "web-1", ExtraDNS: []string{bad}}); err == nil {
			t.Errorf("extra name %q accepted", bad)
		}
	}
}

// A CA key in SEC 1 form ("EC PRIVATE KEY", what `openssl ecparam -genkey`
// writes) is read as well as PKCS#8; a damaged one is refused with a parse
// error.
func TestParseCA_sec1Key(t *testing.T) {
	ca, err := NewCA(1, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	sec1 := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	parsed, err := ParseCA(ca.CertPEM(), sec1)
	if err != nil {
		t.Fatalf("ParseCA with a SEC 1 key: %v", err)
	}
	if !parsed.Key.Equal(ca.Key) {
		t.Fatal("ParseCA read another key from the SEC 1 PEM")
	}
	damaged := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der[:len(der)/2]})
	if _, err := ParseCA(ca.CertPEM(), damaged); err == nil || !strings.Contains(err.Error(), "parse private key") {
		t.Fatalf("ParseCA with a damaged SEC 1 key: %v, want a parse error", err)
	}
}
