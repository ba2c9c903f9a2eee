// Transport security settings: the three TLS files, --https-addr, and what
// they demand of the rest of the configuration.

package main

import (
	"os"
	"path/filepath"
	"strings"

	"github.com/sidecarhq/sidecar/discovery"
	"github.com/sidecarhq/sidecar/tlsutil"
)

// tlsFiles are the TLS file settings in the order messages name them.
func (c *Config) tlsFiles() []struct{ flag, path string } {
	return []struct{ flag, path string }{
		{"--tls-ca-file", c.TLSCAFile}, {"--tls-cert-file", c.TLSCertFile}, {"--tls-key-file", c.TLSKeyFile},
	}
}

// tlsSet reports whether TLS is configured (validateTLS has made sure it is
// all three files or none).
func (c *Config) tlsSet() bool { return c.TLSCAFile != "" }

// validateTLS checks the TLS settings without reading the files.
func (c *Config) validateTLS() error {
	var set, missing []string
	for _, f := range c.tlsFiles() {
		if f.path != "" {
			set = append(set, f.flag)
		} else {
			missing = append(missing, f.flag)
		}
	}
	if len(set) > 0 && len(missing) > 0 {
		// A half-configured TLS must not start as plain text: the operator
		// meant to turn it on.
		return configErrorf("%s %s set but %s %s missing: TLS needs all three of --tls-ca-file, --tls-cert-file and --tls-key-file (make them with 'sidecar tls'), or none",
			strings.Join(set, " and "), verbFor(set), strings.Join(missing, " and "), verbFor(missing))
	}
	if c.HTTPSAddr != "" && len(set) == 0 {
		return configErrorf("--https-addr needs TLS: set --tls-ca-file, --tls-cert-file and --tls-key-file (make them with 'sidecar tls')")
	}
	if len(set) > 0 && !c.gossipEncrypted() && !c.Dev {
		// SPEC: with TLS on, gossip must be encrypted too, or anyone on the
		// network could still join gossip and claim to be a server.
		return configErrorf("TLS is set but gossip is not encrypted: set --encrypt (make a key with 'sidecar keygen'); only --dev runs TLS without it")
	}
	return nil
}

func verbFor(names []string) string {
	if len(names) > 1 {
		return "are"
	}
	return "is"
}

// loadTLS loads the TLS files, so that a certificate of another CA, a key
// that does not match or an expired certificate stops the start with exit 2
// instead of failing every connection later. The certificate must be for
// this node, and a server's must be a server certificate.
func (c *Config) loadTLS() error {
	if !c.tlsSet() {
		return nil
	}
	l, err := tlsutil.New(tlsutil.Options{CAFile: c.TLSCAFile, CertFile: c.TLSCertFile, KeyFile: c.TLSKeyFile, Domain: c.Domain})
	if err != nil {
		return configErrorf("TLS files: %v", err)
	}
	id := l.Identity()
	if c.Server && id.Role != tlsutil.RoleServer {
		return configErrorf("--server needs a server certificate, but --tls-cert-file %s is a %s certificate; make one with 'sidecar tls cert create --server --node %s'",
			c.TLSCertFile, id.Role, c.Name)
	}
	if id.Node != c.Name {
		// Peers check a certificate's node name against the gossip name: a
		// mismatch would leave this agent refused everywhere.
		return configErrorf("--tls-cert-file %s is for node %q, but this agent's --name is %q", c.TLSCertFile, id.Node, c.Name)
	}
	c.TLS = l
	return nil
}

// SecurityWarnings are the lines the agent logs loudly at start about what
// is not protected.
func (c *Config) SecurityWarnings() []string {
	var w []string
	if !c.tlsSet() {
		if c.Server {
			w = append(w, "TLS is off: anyone who reaches --raft-addr "+c.RaftAddr+" can read and change the registry and send Raft messages; set --tls-ca-file, --tls-cert-file and --tls-key-file (see README, Security)")
		} else {
			w = append(w, "TLS is off: this agent's connections to the servers are neither encrypted nor authenticated; set --tls-ca-file, --tls-cert-file and --tls-key-file (see README, Security)")
		}
	}
	if !c.gossipEncrypted() {
		w = append(w, "gossip is not encrypted: anyone who reaches --bind-addr "+c.BindAddr+" can join the cluster; set --encrypt (sidecar keygen)")
	}
	return w
}

// gossipEncrypted reports whether gossip will be encrypted: --encrypt, or a
// keyring kept in the data dir from an earlier start (it wins over the
// flag, and a rotation may have made the flag's key stale).
func (c *Config) gossipEncrypted() bool {
	if c.EncryptKey != nil {
		return true
	}
	if c.Dev || c.DataDir == "" {
		return false
	}
	_, err := os.Stat(filepath.Join(c.DataDir, discovery.KeyringFileName))
	return err == nil
}
