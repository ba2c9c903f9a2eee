package tlsutil

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pki is a CA in a directory of its own, with helpers to issue certificates
// into it.
type pki struct {
	t   *testing.T
	dir string
	ca  *CA
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	ca, err := NewCA(30, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, _, err := WriteCA(dir, ca); err != nil {
		t.Fatal(err)
	}
	return &pki{t: t, dir: dir, ca: ca}
}

func (p *pki) caFile() string { return filepath.Join(p.dir, CACertFile) }

// issue writes a certificate for node with role into p's directory and
// returns the paths.
func (p *pki) issue(role Role, node string) (cert, key string) {
	p.t.Helper()
	c, k, err := p.ca.Issue(CertRequest{Role: role, Node: node})
	if err != nil {
		p.t.Fatal(err)
	}
	cert, key, err = WriteCert(p.dir, node, c, k)
	if err != nil {
		p.t.Fatal(err)
	}
	return cert, key
}

// loader issues a certificate and loads it with p's CA.
func (p *pki) loader(role Role, node string) *Loader {
	p.t.Helper()
	cert, key := p.issue(role, node)
	l, err := New(Options{CAFile: p.caFile(), CertFile: cert, KeyFile: key, CheckInterval: -1})
	if err != nil {
		p.t.Fatal(err)
	}
	return l
}

// replaceFile swaps data in at path by rename, as a careful operator or
// Kubernetes does, so a reader never sees half a file.
func replaceFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// echoServer is a TLS listener that greets each verified peer with "hello
// <identity>" and then echoes what it receives; reached counts the
// connections that got that far, which is what an attacker must never do.
type echoServer struct {
	addr    string
	mu      sync.Mutex
	reached []Identity
}

func startEcho(t *testing.T, cfg *tls.Config, l *Loader) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{addr: ln.Addr().String()}
	var (
		wg    sync.WaitGroup
		cmu   sync.Mutex
		conns []net.Conn
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			cmu.Lock()
			conns = append(conns, c)
			cmu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				tc := tls.Server(c, cfg)
				tc.SetDeadline(time.Now().Add(5 * time.Second))
				if err := tc.Handshake(); err != nil {
					return
				}
				id, err := l.PeerIdentity(tc.ConnectionState())
				if err != nil {
					return
				}
				s.mu.Lock()
				s.reached = append(s.reached, id)
				s.mu.Unlock()
				tc.SetDeadline(time.Time{})
				io.WriteString(tc, "hello "+id.String()+"\n")
				io.Copy(tc, tc)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		cmu.Lock()
		for _, c := range conns {
			c.Close()
		}
		cmu.Unlock()
		wg.Wait()
	})
	return s
}

func (s *echoServer) reachedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.reached)
}

// dial connects with cfg and reads the greeting. In TLS 1.3 the client
// finishes its handshake before the server has judged the client's
// certificate, so a refusal shows up as an error on the first read.
func dial(t *testing.T, addr string, cfg *tls.Config) (*tls.Conn, *bufio.Reader, string, error) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return nil, nil, "", err
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	c.SetReadDeadline(time.Time{})
	if err != nil {
		return nil, nil, "", err
	}
	return c, r, strings.TrimSpace(line), nil
}

// echo sends msg on c and expects it back.
func echo(t *testing.T, c *tls.Conn, r *bufio.Reader, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		t.Fatalf("write on an established connection: %v", err)
	}
	got, err := r.ReadString('\n')
	if err != nil || strings.TrimSpace(got) != msg {
		t.Fatalf("echo on an established connection = %q, %v; want %q", got, err, msg)
	}
}

func peerSerial(c *tls.Conn) string {
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
}
