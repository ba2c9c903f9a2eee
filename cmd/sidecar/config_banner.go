// The start-up banner (the effective settings as log attributes) and the
// logger.

package main

import (
	"io"
	"log/slog"
)

// Banner is the effective configuration as log attributes, for the agent's
// start-up line. The gossip key is never logged, only whether one is set.
func (c *Config) Banner() []slog.Attr {
	role := "client"
	if c.Server {
		role = "server"
	}
	dataDir := c.DataDir
	if c.Dev {
		dataDir = "(in memory)"
	}
	attrs := []slog.Attr{
		slog.String("name", c.Name),
		slog.String("role", role),
		slog.Bool("dev", c.Dev),
		slog.String("data_dir", dataDir),
		slog.String("bind_addr", c.BindAddr),
		slog.String("advertise_addr", c.AdvertiseAddr),
	}
	if c.Server {
		attrs = append(attrs,
			slog.String("raft_addr", c.RaftAddr),
			slog.Int("bootstrap_expect", c.BootstrapExpect),
			slog.Uint64("snapshot_threshold", c.SnapshotThreshold),
			slog.Duration("snapshot_interval", c.SnapshotInterval),
		)
	}
	attrs = append(attrs,
		slog.Any("join", c.Join),
		slog.String("http_addr", c.HTTPAddr),
		slog.String("dns_addr", c.DNSAddr),
		slog.String("domain", c.Domain),
		slog.Any("recursors", c.Recursors),
		slog.Duration("dns_ttl", c.DNSTTL),
		slog.Duration("session_ttl", c.SessionTTL),
		slog.Bool("encrypt", c.EncryptKey != nil),
		slog.Bool("tls", c.TLS != nil),
		slog.String("acl_default_policy", aclPolicyName(c.ACLDefaultPolicy)),
		slog.Bool("acl_dns_token", c.ACLDNSToken != ""),
		slog.String("config_file", c.ConfigFile),
		slog.Int("services", len(c.Services)),
		slog.Int("elections", len(c.Elections)),
		slog.String("log_level", c.LogLevel),
	)
	if c.TLS != nil {
		cert := c.TLS.Certificate()
		attrs = append(attrs,
			slog.String("tls_identity", c.TLS.Identity().String()),
			slog.String("tls_cert_file", c.TLSCertFile),
			slog.Time("tls_cert_not_after", cert.NotAfter.UTC()),
			slog.String("https_addr", c.HTTPSAddr),
		)
	}
	return attrs
}

// newLogger builds the agent's logger: text or JSON to w, at the configured
// level.
func newLogger(cfg *Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: logLevels[cfg.LogLevel]}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// aclPolicyName is the policy an agent runs with: "" is allow.
func aclPolicyName(p string) string {
	if p == "" {
		return "allow"
	}
	return p
}
