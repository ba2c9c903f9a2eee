package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// tlsFiles are a TLS cluster's CA and gossip key, made with the sidecar
// binary itself (`sidecar tls ca create`, `sidecar keygen`) in the
// scratch directory; agent certificates are made on demand by cert.
type tlsFiles struct {
	dir       string
	ca        string // sidecar-ca.pem
	gossipKey string // --encrypt, which TLS requires
}

// oneShotTimeout bounds each `sidecar tls` and `sidecar keygen` run.
const oneShotTimeout = 30 * time.Second

// runOnce runs bin with args to its end (at most oneShotTimeout) through
// the supervisor and returns its first output line.
func runOnce(sup *supervisor, name, bin string, args ...string) (string, error) {
	p, err := sup.start(name, bin, args...)
	if err != nil {
		return "", err
	}
	select {
	case <-p.done:
	case <-time.After(oneShotTimeout):
		p.kill9()
		return "", fmt.Errorf("%s %s did not finish within %v", name, strings.Join(args, " "), oneShotTimeout)
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		return "", fmt.Errorf("%s %s exited %d: %s", name, strings.Join(args, " "), code, p.tail())
	}
	// The output is read by another goroutine; it ends with the pipe,
	// shortly after the exit.
	for i := 0; i < 100; i++ {
		p.mu.Lock()
		n := len(p.lines)
		var first string
		if n > 0 {
			first = p.lines[0]
		}
		p.mu.Unlock()
		if n > 0 {
			return first, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return "", nil
}

// makeTLS creates dir's CA and a gossip key.
func makeTLS(sup *supervisor, bin, dir string) (*tlsFiles, error) {
	if _, err := runOnce(sup, "tls-ca", bin, "tls", "ca", "create", "--dir", dir); err != nil {
		return nil, fmt.Errorf("tls ca: %w", err)
	}
	key, err := runOnce(sup, "keygen", bin, "keygen")
	if err != nil {
		return nil, fmt.Errorf("keygen: %w", err)
	}
	key = strings.TrimSpace(key)
	if key == "" {
		return nil, fmt.Errorf("keygen printed no key")
	}
	return &tlsFiles{dir: dir, ca: filepath.Join(dir, "sidecar-ca.pem"), gossipKey: key}, nil
}

// cert makes (once) node's certificate and key, a server's or a client's,
// and returns their paths.
func (t *tlsFiles) cert(sup *supervisor, bin, node string, server bool) (cert, key string, err error) {
	cert, key = filepath.Join(t.dir, node+".pem"), filepath.Join(t.dir, node+"-key.pem")
	if fileExists(cert) && fileExists(key) {
		return cert, key, nil
	}
	kind := "--client"
	if server {
		kind = "--server"
	}
	if _, err := runOnce(sup, "tls-cert", bin, "tls", "cert", "create", kind, "--node", node, "--dir", t.dir); err != nil {
		return "", "", fmt.Errorf("tls cert %s: %w", node, err)
	}
	return cert, key, nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
