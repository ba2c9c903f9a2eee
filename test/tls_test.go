package test

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/tlsutil"
)

// tlsDir holds a cluster CA and issues certificate files into its dir.
type tlsDir struct {
	dir string
	ca  *tlsutil.CA
}

func newTLSDir(t *testing.T) *tlsDir {
	t.Helper()
	ca, err := tlsutil.NewCA(30, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	d := &tlsDir{dir: t.TempDir(), ca: ca}
	if _, _, err := tlsutil.WriteCA(d.dir, ca); err != nil {
		t.Fatal(err)
	}
	return d
}

// issue writes NAME.pem and NAME-key.pem (replacing them by rename, as an
// operator rotating them would) and returns the agent flags naming them.
func (d *tlsDir) issue(t *testing.T, role tlsutil.Role, node string) []string {
	t.Helper()
	cert, key, err := d.ca.Issue(tlsutil.CertRequest{Role: role, Node: node})
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath := tlsutil.CertFiles(d.dir, node)
	for path, b := range map[string][]byte{keyPath: key, certPath: cert} {
		if err := os.WriteFile(path+".new", b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".new", path); err != nil {
			t.Fatal(err)
		}
	}
	return []string{"--tls-ca-file", filepath.Join(d.dir, "sidecar-ca.pem"), "--tls-cert-file", certPath, "--tls-key-file", keyPath}
}

// serial dials addr over mutual TLS with a certificate of the cluster and
// returns the serial number of the certificate the peer presents.
func (d *tlsDir) serial(t *testing.T, addr string) string {
	t.Helper()
	cert, key, err := d.ca.Issue(tlsutil.CertRequest{Role: tlsutil.RoleClient, Node: "probe"})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(d.ca.CertPEM())
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair},
		ServerName: "server.sidecar", MinVersion: tls.VersionTLS13})
	if err != nil {
		return ""
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

func gossipKey(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// A TLS cluster of processes keeps serving while a server's certificate is
// replaced and reloaded with SIGHUP, and new connections to that server
// see the new certificate.
func TestProcessCluster_tlsCertificateRotation(t *testing.T) {
	d := newTLSDir(t)
	key := gossipKey(t)
	var servers []*node
	var seed string
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("server-%d", i)
		args := append(d.issue(t, tlsutil.RoleServer, name), "--encrypt", key)
		s := startNode(t, name, 3, seed, args...)
		if seed == "" {
			seed = s.gossip
		}
		servers = append(servers, s)
	}
	c := startNode(t, "client-a", 0, seed, append(d.issue(t, tlsutil.RoleClient, "client-a"), "--encrypt", key)...)
	for _, n := range append(servers, c) {
		waitFor(t, 60*time.Second, n.name+" ready", n.ready)
	}
	register := func(id string) {
		t.Helper()
		if code, body := call(t, "PUT", c.url+"/v1/services", fmt.Sprintf(`{"id":%q,"name":"web","port":80}`, id)); code != 200 {
			t.Fatalf("register %s through the client: %d %s", id, code, body)
		}
	}
	register("before")

	target := servers[1]
	old := d.serial(t, target.raft)
	if old == "" {
		t.Fatal("no TLS handshake with a server's Raft/RPC port")
	}
	d.issue(t, tlsutil.RoleServer, target.name)
	if err := target.p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "new connections see the new certificate", func() bool {
		s := d.serial(t, target.raft)
		return s != "" && s != old
	})
	register("after")
	waitFor(t, 10*time.Second, "both registrations on the rotated server", func() bool {
		code, body := call(t, "GET", target.url+"/v1/services/web", "")
		return code == 200 && strings.Contains(string(body), `"before"`) && strings.Contains(string(body), `"after"`)
	})
}
