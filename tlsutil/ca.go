// Package tlsutil makes and loads the cluster's TLS material: a CA, server
// and client certificates signed by it, and the TLS 1.3, mutually verified
// configurations every connection on the Raft/RPC port uses.
//
// # What a certificate says
//
// Every certificate is ECDSA P-256, signed by the cluster CA. Its role is a
// DNS name in the subject alternative names: "server.<domain>" for a server
// (a Raft voter) and "client.<domain>" for a client, where <domain> is the
// agent's --domain without the trailing dot ("server.sidecar"). A dialer that
// wants a server sets ServerName "server.<domain>", so Go's own hostname
// check refuses a client certificate. The node name is carried twice: as the
// Subject common name, for people reading the certificate with openssl, and
// as a URI SAN "sidecar://node/<path-escaped name>", which is what Identity
// reads. A URI is used because a SAN of type DNS must be a DNS name and node
// names need not be; the common name alone is not enough because it is
// free-form text that name-based tooling ignores. Both EKUs (server and
// client authentication) are set on every certificate: a server dials other
// servers (Raft) and a client's certificate also serves its HTTPS API.
// "localhost", 127.0.0.1 and ::1 are added so that `curl --cacert ca.pem
// https://127.0.0.1:PORT` verifies against an agent's own HTTPS API; other
// names and addresses it is reached by can be added (CertRequest.ExtraDNS,
// ExtraIPs), but never a role name.
package tlsutil

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Defaults for how long certificates live. Like Consul's `tls ca create`
// (5 years) and `tls cert create` (1 year): a CA is replaced rarely and by
// hand; an agent certificate is rotated routinely, which SIGHUP makes cheap.
const (
	DefaultCADays   = 5 * 365
	DefaultCertDays = 365
)

// clockSkew backdates NotBefore so a certificate made on one host is valid
// at once on another whose clock runs slightly behind.
const clockSkew = 5 * time.Minute

// Role is what a certificate allows its holder to be.
type Role string

const (
	RoleServer Role = "server"
	RoleClient Role = "client"
)

func (r Role) valid() bool { return r == RoleServer || r == RoleClient }

// nodeURIScheme and nodeURIHost form the URI SAN that carries the node name.
const (
	nodeURIScheme = "sidecar"
	nodeURIHost   = "node"
)

// CA is a certificate authority that can sign agent certificates.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// NewCA makes a self-signed CA valid for days days from now.
func NewCA(days int, now time.Time) (*CA, error) {
	if days <= 0 {
		return nil, errors.New("tlsutil: CA validity must be at least one day")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("tlsutil: generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	ski, err := keyID(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		// The serial in the name tells two CAs apart in error messages and
		// openssl output, e.g. the old and the new during a CA rotation.
		Subject:               pkix.Name{CommonName: fmt.Sprintf("Sidecar CA %x", serial.Bytes()[:8]), Organization: []string{"sidecar"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.AddDate(0, 0, days),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// The CA signs agent certificates only, never another CA.
		MaxPathLen:     0,
		MaxPathLenZero: true,
		SubjectKeyId:   ski,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("tlsutil: sign CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("tlsutil: parse new CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// ParseCA reads a CA from PEM: the first CERTIFICATE block of certPEM and a
// private key (PKCS#8 or SEC 1) in keyPEM that must belong to it.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	certs, err := parseCerts(certPEM)
	if err != nil {
		return nil, err
	}
	cert := certs[0]
	if !cert.IsCA {
		return nil, fmt.Errorf("tlsutil: certificate %q is not a CA", cert.Subject.CommonName)
	}
	key, err := parseECKey(keyPEM)
	if err != nil {
		return nil, err
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return nil, errors.New("tlsutil: the CA key does not belong to the CA certificate")
	}
	return &CA{Cert: cert, Key: key}, nil
}

// CertPEM is the CA certificate as PEM.
func (ca *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// KeyPEM is the CA key as PKCS#8 PEM.
func (ca *CA) KeyPEM() ([]byte, error) { return encodeKey(ca.Key) }

// CertRequest describes an agent certificate.
type CertRequest struct {
	Role   Role
	Node   string // node name; any text without control characters
	Domain string // DNS domain, "sidecar" or "sidecar."; default "sidecar"
	Days   int    // validity; 0: DefaultCertDays, at most until the CA expires
	Now    time.Time
	// ExtraDNS and ExtraIPs are added to the subject alternative names, for
	// an HTTPS API reached by another name or address than loopback. A role
	// name ("server.<domain>") is refused: it would grant a role.
	ExtraDNS []string
	ExtraIPs []net.IP
}

// Issue makes a key and a certificate for req signed by ca, both as PEM. A
// certificate asked for explicitly (Days) that would outlive the CA is
// refused: it would stop verifying when the CA expires, a surprise better
// met now; the default validity is cut to the CA's instead.
func (ca *CA) Issue(req CertRequest) (certPEM, keyPEM []byte, err error) {
	if !req.Role.valid() {
		return nil, nil, fmt.Errorf("tlsutil: role %q: want server or client", req.Role)
	}
	if err := ValidNodeName(req.Node); err != nil {
		return nil, nil, err
	}
	domain, err := NormalizeDomain(req.Domain)
	if err != nil {
		return nil, nil, err
	}
	if req.Days < 0 {
		return nil, nil, errors.New("tlsutil: certificate validity must be at least one day")
	}
	if req.Now.IsZero() {
		req.Now = time.Now()
	}
	var notAfter time.Time
	if req.Days == 0 {
		// The default never outlives the CA: it ends with it instead.
		notAfter = req.Now.AddDate(0, 0, DefaultCertDays)
		if notAfter.After(ca.Cert.NotAfter) {
			notAfter = ca.Cert.NotAfter
		}
	} else {
		notAfter = req.Now.AddDate(0, 0, req.Days)
		if notAfter.After(ca.Cert.NotAfter) {
			return nil, nil, fmt.Errorf("tlsutil: a certificate for %d days would outlive the CA, which expires %s; use fewer days",
				req.Days, ca.Cert.NotAfter.UTC().Format(time.DateOnly))
		}
	}
	dnsNames := []string{RoleName(req.Role, domain), "localhost"}
	for _, n := range req.ExtraDNS {
		n = strings.ToLower(strings.TrimSuffix(n, "."))
		if err := ValidExtraDNS(n, domain); err != nil {
			return nil, nil, err
		}
		if !slices.Contains(dnsNames, n) {
			dnsNames = append(dnsNames, n)
		}
	}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, ip := range req.ExtraIPs {
		if !slices.ContainsFunc(ips, ip.Equal) {
			ips = append(ips, ip)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsutil: generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	ski, err := keyID(&key.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:   serial,
		Subject:        pkix.Name{CommonName: req.Node, Organization: []string{"sidecar"}, OrganizationalUnit: []string{string(req.Role)}},
		NotBefore:      req.Now.Add(-clockSkew),
		NotAfter:       notAfter,
		KeyUsage:       x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:       dnsNames,
		IPAddresses:    ips,
		URIs:           []*url.URL{NodeURI(req.Node)},
		SubjectKeyId:   ski,
		AuthorityKeyId: ca.Cert.SubjectKeyId,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsutil: sign certificate: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// RoleName is the DNS SAN that marks role in domain: "server.sidecar".
func RoleName(r Role, domain string) string {
	return string(r) + "." + strings.TrimSuffix(domain, ".")
}

// NodeURI is the URI SAN that carries a node name.
func NodeURI(node string) *url.URL {
	return &url.URL{Scheme: nodeURIScheme, Host: nodeURIHost, Path: "/" + node}
}

// NormalizeDomain lower-cases d and drops the trailing dot; "" is "sidecar".
func NormalizeDomain(d string) (string, error) {
	d = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(d), "."))
	if d == "" {
		return "sidecar", nil
	}
	for _, label := range strings.Split(d, ".") {
		if len(label) == 0 || len(label) > 63 {
			return "", fmt.Errorf("tlsutil: domain %q: labels must be 1-63 characters", d)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return "", fmt.Errorf("tlsutil: domain %q: invalid character %q", d, r)
			}
		}
	}
	return d, nil
}

// ValidExtraDNS checks a name to add to a certificate of domain: a DNS name
// that is not one of the role names, which would grant a role.
func ValidExtraDNS(n, domain string) error {
	n = strings.ToLower(strings.TrimSuffix(n, "."))
	if err := validHostname(n); err != nil {
		return err
	}
	domain, err := NormalizeDomain(domain)
	if err != nil {
		return err
	}
	for _, r := range []Role{RoleServer, RoleClient} {
		if n == RoleName(r, domain) {
			return fmt.Errorf("tlsutil: extra name %q is a role name; use --%s instead", n, r)
		}
	}
	return nil
}

// validHostname accepts a DNS name of letters, digits and '-' labels, with
// an optional leading "*." wildcard.
func validHostname(n string) error {
	rest := strings.TrimPrefix(n, "*.")
	if rest == "" || len(rest) > 253 {
		return fmt.Errorf("tlsutil: %q is not a DNS name", n)
	}
	for _, label := range strings.Split(rest, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("tlsutil: %q is not a DNS name", n)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Errorf("tlsutil: %q is not a DNS name", n)
			}
		}
	}
	return nil
}

// ValidNodeName accepts what a certificate can carry and a file can be named
// after: 1-128 characters, no control characters, no path separators, not
// "." or "..".
func ValidNodeName(n string) error {
	if n == "" || len(n) > 128 {
		return errors.New("tlsutil: node name must be 1-128 characters")
	}
	if n == "." || n == ".." {
		return fmt.Errorf("tlsutil: node name %q is not allowed", n)
	}
	for _, r := range n {
		if r < 0x20 || r == 0x7f || r == '/' || r == '\\' {
			return fmt.Errorf("tlsutil: node name %q: character %q is not allowed", n, r)
		}
	}
	return nil
}

func newSerial() (*big.Int, error) {
	// 128 random bits: serials must be unique per CA and unpredictable.
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("tlsutil: serial number: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil // never 0
}

// keyID is the SHA-256 of the public key, cut to 20 bytes (RFC 7093).
func keyID(pub *ecdsa.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("tlsutil: marshal public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return sum[:20], nil
}

func encodeKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("tlsutil: marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// parseCerts reads every CERTIFICATE block of b; at least one is required.
func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	// equivalent mutant: an empty rest decodes to no block, which ends the loop as well
	for rest := bytes.TrimSpace(b); len(rest) > 0; rest = bytes.TrimSpace(rest) {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("tlsutil: parse certificate: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("tlsutil: no PEM certificate found")
	}
	return certs, nil
}

func parseECKey(b []byte) (*ecdsa.PrivateKey, error) {
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return nil, errors.New("tlsutil: no PEM private key found")
		}
		switch blk.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("tlsutil: parse private key: %w", err)
			}
			ec, ok := k.(*ecdsa.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("tlsutil: private key is %T, want ECDSA", k)
			}
			return ec, nil
		case "EC PRIVATE KEY":
			k, err := x509.ParseECPrivateKey(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("tlsutil: parse private key: %w", err)
			}
			return k, nil
		}
	}
}
