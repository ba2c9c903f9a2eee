package agent_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/agent"
	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/tlsutil"
)

// tlsFiles makes a CA and a certificate for each node in dir, and returns
// a loader per node.
type tlsFiles struct {
	dir string
	ca  *tlsutil.CA
}

func newTLSFiles(t *testing.T) *tlsFiles {
	t.Helper()
	ca, err := tlsutil.NewCA(30, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, _, err := tlsutil.WriteCA(dir, ca); err != nil {
		t.Fatal(err)
	}
	return &tlsFiles{dir: dir, ca: ca}
}

func (f *tlsFiles) loader(t *testing.T, role tlsutil.Role, node string) *tlsutil.Loader {
	t.Helper()
	cert, key, err := f.ca.Issue(tlsutil.CertRequest{Role: role, Node: node})
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath, err := tlsutil.WriteCert(f.dir, node, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tlsutil.New(tlsutil.Options{CAFile: filepath.Join(f.dir, "sidecar-ca.pem"), CertFile: certPath, KeyFile: keyPath})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// A cluster with TLS on: servers and a client form, register and resolve
// over mutual TLS; the Raft/RPC port answers nothing in plain text; the
// HTTPS API serves with the agent's certificate.
func TestTLS_clusterOverMutualTLS(t *testing.T) {
	f := newTLSFiles(t)
	servers := agenttest.Cluster(t, 3, func(c *agent.Config) {
		c.TLS = f.loader(t, tlsutil.RoleServer, c.Name)
	})
	cl := agenttest.Join(t, servers[0], "client-a", false, func(c *agent.Config) {
		c.TLS = f.loader(t, tlsutil.RoleClient, c.Name)
		c.HTTPSAddr = "127.0.0.1:0"
	})
	cl.WaitReady(30 * time.Second)
	register(t, cl, api.ServiceRegistration{ID: "web-1", Name: "web", Port: 8080})
	agenttest.WaitFor(t, 10*time.Second, "web on every server", func() bool {
		for _, s := range servers {
			if len(instances(t, s, "web")) != 1 {
				return false
			}
		}
		return true
	})

	// Plain text to a server's Raft/RPC port: nothing comes back.
	conn, err := net.DialTimeout("tcp", string(servers[0].Server().Addr()), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte("GET /rpc/v1/stream?index=0 HTTP/1.1\r\nHost: x\r\n\r\n"))
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 512)
	n, _ := conn.Read(buf)
	conn.Close()
	if n > 0 && (string(buf[:4]) == "HTTP" || string(buf[:1]) == "{") {
		t.Fatalf("plain text to the Raft/RPC port got an answer: %q", buf[:n])
	}

	// HTTPS with the cluster CA.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(f.ca.CertPEM())
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}}
	defer hc.CloseIdleConnections()
	c, err := api.NewClient("https://"+cl.HTTPSAddr(), api.WithHTTPClient(hc))
	if err != nil {
		t.Fatal(err)
	}
	list, _, err := c.Service(context.Background(), "web", false, "", nil)
	if err != nil || len(list) != 1 {
		t.Fatalf("HTTPS read: %v %v", list, err)
	}
}
