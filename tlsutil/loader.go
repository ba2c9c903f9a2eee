package tlsutil

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultCheckInterval is how often, at most, a handshake looks at the
// files' modification time and size: cheap enough to do on the path of a
// handshake, soon enough that a rotated certificate (a Kubernetes Secret
// update, a cron job) is in use a second later without a SIGHUP.
const DefaultCheckInterval = time.Second

// Options name the files a Loader reads and how it reads them.
type Options struct {
	CAFile, CertFile, KeyFile string // PEM: --tls-ca-file, --tls-cert-file, --tls-key-file
	Domain                    string // the agent's --domain; "" is "sidecar"
	Logger                    *slog.Logger
	// CheckInterval bounds how often handshakes check the files for a
	// change: 0 is DefaultCheckInterval, negative never (only Reload).
	CheckInterval time.Duration
}

// Loader holds the agent's current TLS material and hands out
// configurations built on it. New connections always use the latest good
// material; a connection keeps what it was established with. Safe for
// concurrent use; it starts no goroutine, so there is nothing to close.
type Loader struct {
	opts     Options
	domain   string
	log      atomic.Pointer[slog.Logger]
	interval time.Duration

	cur       atomic.Pointer[material]
	nextCheck atomic.Int64 // unix nanoseconds of the next file check

	mu  sync.Mutex // serialises loads
	bad [3]stamp   // the files' state whose load failed: not retried, not logged again
}

// material is one consistent set of CA, certificate and key.
type material struct {
	cert   tls.Certificate // Leaf set
	pool   *x509.CertPool
	self   Identity
	stamps [3]stamp
	server *tls.Config // for GetConfigForClient, built once per material
	https  *tls.Config
}

// stamp is what a cheap check compares: a changed file has a new
// modification time or size (a rename over it, as Kubernetes does with
// Secrets, gives both a new inode and a new time).
type stamp struct {
	mod  int64 // Unix nanoseconds: comparable with ==, unlike time.Time
	size int64
}

// New loads the three files and checks them: the certificate is signed by
// the CA and currently valid, the key belongs to it, and it names a role and
// a node.
func New(opts Options) (*Loader, error) {
	domain, err := NormalizeDomain(opts.Domain)
	if err != nil {
		return nil, err
	}
	l := &Loader{opts: opts, domain: domain, interval: opts.CheckInterval}
	l.SetLogger(opts.Logger)
	if l.interval == 0 {
		l.interval = DefaultCheckInterval
	}
	m, err := l.load()
	if err != nil {
		return nil, err
	}
	l.cur.Store(m)
	l.nextCheck.Store(time.Now().Add(l.interval).UnixNano())
	return l, nil
}

// SetLogger sets where reloads are logged; the agent's configuration loads
// the files (to refuse bad ones with exit 2) before its logger exists.
func (l *Loader) SetLogger(log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l.log.Store(log)
}

// Domain is the domain role names are checked in ("sidecar").
func (l *Loader) Domain() string { return l.domain }

// Identity is the role and node name of this agent's own certificate.
func (l *Loader) Identity() Identity { return l.cur.Load().self }

// Certificate is this agent's current certificate.
func (l *Loader) Certificate() *x509.Certificate { return l.cur.Load().cert.Leaf }

// Reload reads the files again (SIGHUP). On any error the material in use
// stays and the error says why; a new certificate must keep the node name
// and role of the one it replaces, since the rest of the agent (gossip name,
// Raft voter status) was built on them.
func (l *Loader) Reload() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.reloadLocked()
}

func (l *Loader) reloadLocked() error {
	m, err := l.load()
	if err == nil {
		if old := l.cur.Load().self; m.self != old {
			err = fmt.Errorf("tlsutil: new certificate is for %s, the agent runs as %s; restart the agent to change its identity", m.self, old)
		}
	}
	if err != nil {
		l.bad = m.stampsOrZero()
		return err
	}
	l.bad = [3]stamp{}
	l.cur.Store(m)
	l.log.Load().Info("TLS certificate loaded", "node", m.self.Node, "role", string(m.self.Role),
		"serial", fmt.Sprintf("%x", m.cert.Leaf.SerialNumber), "not_after", m.cert.Leaf.NotAfter.UTC())
	return nil
}

func (m *material) stampsOrZero() [3]stamp {
	if m == nil {
		return [3]stamp{}
	}
	return m.stamps
}

// current is the material for a new connection. At most once per interval it
// stats the files and reloads them when they changed; every other call is an
// atomic load.
func (l *Loader) current() *material {
	m := l.cur.Load()
	// equivalent mutant: the interval is never 0 here: New sets the default for 0
	if l.interval < 0 {
		return m
	}
	now := time.Now().UnixNano()
	next := l.nextCheck.Load()
	// equivalent mutant: at now == next to the nanosecond, checking or not are both right
	if now < next || !l.nextCheck.CompareAndSwap(next, now+int64(l.interval)) {
		return m
	}
	// One handshake checks; a Reload in progress already does the job.
	if !l.mu.TryLock() {
		return m
	}
	defer l.mu.Unlock()
	st, err := l.stat()
	if err != nil || st == m.stamps || st == l.bad {
		return m
	}
	// A failed reload remembers the files' stamps (reloadLocked), so the
	// same broken files are reported once.
	if err := l.reloadLocked(); err != nil {
		l.log.Load().Error("TLS files changed but cannot be loaded; keeping the certificate in use", "err", err)
	}
	return l.cur.Load()
}

func (l *Loader) stat() ([3]stamp, error) {
	var st [3]stamp
	for i, p := range []string{l.opts.CAFile, l.opts.CertFile, l.opts.KeyFile} {
		fi, err := os.Stat(p)
		if err != nil {
			return st, err
		}
		st[i] = stamp{mod: fi.ModTime().UnixNano(), size: fi.Size()}
	}
	return st, nil
}

// load reads and checks the files. The stamps are taken before reading, so
// a file written during the read is seen as changed at the next check.
func (l *Loader) load() (*material, error) {
	st, err := l.stat()
	if err != nil {
		return nil, fmt.Errorf("tlsutil: %w", err)
	}
	m := &material{stamps: st}
	caPEM, err := os.ReadFile(l.opts.CAFile)
	if err != nil {
		return m, fmt.Errorf("tlsutil: %w", err)
	}
	cas, err := parseCerts(caPEM)
	if err != nil {
		return m, fmt.Errorf("CA file %s: %w", l.opts.CAFile, err)
	}
	m.pool = x509.NewCertPool()
	for _, c := range cas {
		// Several CAs in one file are allowed: during a CA rotation the
		// file holds the old and the new one.
		if !c.IsCA {
			return m, fmt.Errorf("CA file %s: certificate %q is not a CA", l.opts.CAFile, c.Subject.CommonName)
		}
		m.pool.AddCert(c)
	}
	m.cert, err = tls.LoadX509KeyPair(l.opts.CertFile, l.opts.KeyFile)
	if err != nil {
		return m, fmt.Errorf("certificate %s with key %s: %w", l.opts.CertFile, l.opts.KeyFile, err)
	}
	leaf := m.cert.Leaf // set by LoadX509KeyPair since Go 1.23
	if leaf == nil {
		return m, fmt.Errorf("certificate %s: no leaf", l.opts.CertFile)
	}
	inter := x509.NewCertPool()
	for _, der := range m.cert.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return m, fmt.Errorf("certificate %s: chain: %w", l.opts.CertFile, err)
		}
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: m.pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return m, fmt.Errorf("certificate %s does not verify against CA file %s: %w", l.opts.CertFile, l.opts.CAFile, err)
	}
	if m.self, err = IdentityOf(leaf, l.domain); err != nil {
		return m, fmt.Errorf("certificate %s: %w", l.opts.CertFile, err)
	}
	m.server = l.serverConfig(m, tls.RequireAndVerifyClientCert)
	m.https = l.serverConfig(m, tls.VerifyClientCertIfGiven)
	return m, nil
}

// base holds what every configuration shares: TLS 1.3 only (no downgrade to
// negotiate, and 1.3 encrypts the certificates themselves).
func base() *tls.Config { return &tls.Config{MinVersion: tls.VersionTLS13} }

func (l *Loader) serverConfig(m *material, auth tls.ClientAuthType) *tls.Config {
	c := base()
	c.Certificates = []tls.Certificate{m.cert}
	c.ClientAuth = auth
	c.ClientCAs = m.pool
	// No resumption: every connection presents and verifies a certificate
	// against the CA in use at that moment, so a CA rotation or a removed
	// CA takes effect for every new connection.
	c.SessionTicketsDisabled = true
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if auth == tls.VerifyClientCertIfGiven && len(cs.PeerCertificates) == 0 {
			return nil
		}
		_, err := l.identityIn(m.pool, cs)
		return err
	}
	return c
}

// ServerConfig is the configuration of a listener on the Raft/RPC port:
// every peer must present a certificate of the cluster's CA naming a role
// and a node. Each handshake uses the current material.
func (l *Loader) ServerConfig() *tls.Config {
	c := base()
	// The configuration GetConfigForClient returns is the one in force;
	// this field only states the policy to code that inspects this one.
	c.ClientAuth = tls.RequireAndVerifyClientCert
	c.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) { return l.current().server, nil }
	return c
}

// HTTPSConfig is the configuration of the HTTPS API: the agent's own
// certificate, and a client certificate verified against the CA when one is
// sent (browsers and curl send none; the ACL tokens guard the API).
func (l *Loader) HTTPSConfig() *tls.Config {
	c := base()
	c.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) { return l.current().https, nil }
	return c
}

// ClientConfig is the configuration for one dial to a peer that must hold a
// certificate of role want: Go's hostname check against "want.<domain>"
// refuses any other, and the peer must name a node. It is built from the
// current material, so call it for every new connection (it is cheap) to
// pick up rotated files.
func (l *Loader) ClientConfig(want Role) *tls.Config {
	m := l.current()
	c := base()
	c.RootCAs = m.pool
	c.ServerName = RoleName(want, l.domain)
	c.Certificates = []tls.Certificate{m.cert}
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		id, err := l.identityIn(m.pool, cs)
		// equivalent mutant: a failed identity leaves id zero, whose role is
		// never the one wanted; a peer of another role fails the server name
		// check before this runs.
		if err != nil {
			return err
		}
		if id.Role != want {
			return fmt.Errorf("%w: peer %s is not a %s", ErrWrongRole, id, want)
		}
		return nil
	}
	return c
}

// PeerIdentity is the identity of the peer of a completed handshake, checked
// again against the current CA: a certificate of another CA, an expired one
// or one without a role of this domain and a node name is an error.
func (l *Loader) PeerIdentity(cs tls.ConnectionState) (Identity, error) {
	return l.identityIn(l.cur.Load().pool, cs)
}

func (l *Loader) identityIn(pool *x509.CertPool, cs tls.ConnectionState) (Identity, error) {
	// The chain is verified here whether or not the handshake did, so a
	// ConnectionState from anywhere (a plain one, a test's) proves nothing
	// by itself.
	if len(cs.PeerCertificates) == 0 {
		return Identity{}, ErrNoCertificate
	}
	leaf, rest := cs.PeerCertificates[0], cs.PeerCertificates[1:]
	inter := x509.NewCertPool()
	for _, c := range rest {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return Identity{}, fmt.Errorf("tlsutil: peer certificate %q: %w", leaf.Subject.CommonName, err)
	}
	return IdentityOf(leaf, l.domain)
}
