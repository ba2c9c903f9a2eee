// The settings table: the one place an agent flag is declared (name, usage,
// default, parser). Flags, environment and config file all go through it, and
// --help is generated from it.

package main

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/sidecarhq/sidecar/acl"
	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/fsm"
)

// setting is one agent flag: how it parses and where its value goes. The
// same parser serves flags, environment and config file, so a value means
// the same thing wherever it comes from.
type setting struct {
	name  string
	usage string
	def   string // shown in --help
	kind  settingKind
	set   func(c *Config, v string) error
}

type settingKind int

const (
	kindString settingKind = iota
	kindBool
	kindList // comma-separated; repeated flags accumulate
)

func (s *setting) envName() string {
	return "SIDECAR_" + strings.ToUpper(strings.ReplaceAll(s.name, "-", "_"))
}

// settings lists every agent flag in --help order.
var settings = []*setting{
	{name: "name", usage: "node name, unique in the cluster", def: "host name up to the first dot",
		set: func(c *Config, v string) error { c.Name = v; return nil }},
	{name: "data-dir", usage: "Raft log, stable store and snapshots", def: "<name>.sidecar",
		set: func(c *Config, v string) error { c.DataDir = v; return nil }},
	{name: "server", kind: kindBool, usage: "be a Raft voter", def: "false",
		set: func(c *Config, v string) error { return setBool(&c.Server, v) }},
	{name: "bootstrap-expect", usage: "servers to wait for before bootstrapping", def: "0; 1 with --server and no --join",
		set: func(c *Config, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil {
				return errors.New("not an integer")
			}
			if n < 0 {
				return errors.New("must not be negative")
			}
			c.BootstrapExpect = n
			return nil
		}},
	{name: "dev", kind: kindBool, usage: "single in-memory server on loopback", def: "false",
		set: func(c *Config, v string) error { return setBool(&c.Dev, v) }},
	{name: "bind-addr", usage: "gossip listen ip:port (UDP+TCP)", def: "0.0.0.0:7946",
		set: func(c *Config, v string) error { return setListenAddr(&c.BindAddr, v) }},
	{name: "advertise-addr", usage: "IP other nodes use to reach this one", def: "bind IP, or first non-loopback IP when binding to all",
		set: func(c *Config, v string) error {
			ip, err := netip.ParseAddr(v)
			if err != nil {
				return errors.New("not an IP address")
			}
			if ip.IsUnspecified() {
				return errors.New("cannot advertise an unspecified address")
			}
			c.AdvertiseAddr = ip.String()
			return nil
		}},
	{name: "raft-addr", usage: "server RPC/Raft listen ip:port", def: "bind IP, port 7947",
		set: func(c *Config, v string) error { return setListenAddr(&c.RaftAddr, v) }},
	{name: "join", kind: kindList, usage: "comma list of gossip host:port to join (retried until success)", def: "none",
		set: func(c *Config, v string) error {
			c.Join = nil
			for _, a := range splitList(v) {
				hp, err := hostPortDefault(a, defaultGossipPort, false)
				if err != nil {
					return err
				}
				c.Join = append(c.Join, hp)
			}
			return nil
		}},
	{name: "http-addr", usage: "HTTP API ip:port", def: api.DefaultAddr,
		set: func(c *Config, v string) error { return setListenAddr(&c.HTTPAddr, v) }},
	{name: "dns-addr", usage: "DNS ip:port (UDP and TCP)", def: "127.0.0.1:7053",
		set: func(c *Config, v string) error { return setListenAddr(&c.DNSAddr, v) }},
	{name: "domain", usage: "DNS domain answered", def: "sidecar.",
		set: func(c *Config, v string) error {
			d, err := normalizeDomain(v)
			c.Domain = d
			return err
		}},
	{name: "recursors", kind: kindList, usage: "comma list of upstream DNS servers for other names", def: "none (REFUSED)",
		set: func(c *Config, v string) error {
			c.Recursors = nil
			for _, a := range splitList(v) {
				hp, err := hostPortDefault(a, defaultDNSPort, true)
				if err != nil {
					return err
				}
				c.Recursors = append(c.Recursors, hp)
			}
			return nil
		}},
	{name: "enable-exec-checks", usage: "allow exec checks: off, local (only from the config file) or all (also through the HTTP API)", def: "off",
		set: func(c *Config, v string) error {
			switch v {
			case "off", "false":
				c.ExecChecks = ""
			case "local", "all":
				c.ExecChecks = v
			default:
				return fmt.Errorf("%q is not off, local or all", v)
			}
			return nil
		}},
	{name: "acl-default-policy", usage: "allow or deny: what a request without a valid token may do (allow: everything but managing tokens; deny: only what the anonymous token's rules grant); an unknown token is always refused", def: "allow",
		set: func(c *Config, v string) error {
			if _, err := acl.ParsePolicy(v); err != nil || v == "" {
				return fmt.Errorf("%q is not allow or deny", v)
			}
			c.ACLDefaultPolicy = v
			return nil
		}},
	{name: "acl-dns-token", usage: "secret of the token DNS answers are read with (it may be created after the agent starts)", def: "none: the anonymous rules",
		set: func(c *Config, v string) error {
			if strings.ContainsAny(v, " \t\r\n") || len(v) > 256 {
				return fmt.Errorf("not a token secret")
			}
			c.ACLDNSToken = v
			return nil
		}},
	{name: "http-allowed-hosts", kind: kindList, usage: "comma list of further Host names the HTTP API answers to (IP addresses, localhost and the node name always are)", def: "none",
		set: func(c *Config, v string) error {
			c.AllowedHosts = nil
			for _, h := range splitList(v) {
				if strings.ContainsAny(h, "/ ") {
					return fmt.Errorf("%q is not a host name", h)
				}
				c.AllowedHosts = append(c.AllowedHosts, h)
			}
			return nil
		}},
	{name: "http-max-conns-per-client", usage: "connections one client address may hold open to the HTTP API (0: no bound); past it 429", def: "512",
		set: func(c *Config, v string) error { return setCount(&c.HTTPMaxConnsPerClient, v) }},
	{name: "http-max-blocking-queries", usage: "blocking queries that may wait at once (0: no bound); past it 429", def: "16384",
		set: func(c *Config, v string) error { return setCount(&c.HTTPMaxBlockingQueries, v) }},
	{name: "http-write-rate", usage: "writes per second one token (or, without a token, one client address) may send (0: no bound); past it 429 with Retry-After", def: "5000",
		set: func(c *Config, v string) error { return setCount(&c.HTTPWriteRate, v) }},
	{name: "http-write-burst", usage: "writes one token may send at once before --http-write-rate applies", def: "5000",
		set: func(c *Config, v string) error {
			if err := setCount(&c.HTTPWriteBurst, v); err != nil {
				return err
			}
			if c.HTTPWriteBurst == 0 {
				return errors.New("must be at least 1")
			}
			return nil
		}},
	{name: "http-read-header-timeout", usage: "time a client has to send a request's headers", def: "10s",
		set: func(c *Config, v string) error { return setDuration(&c.HTTPReadHeaderTimeout, v, 0) }},
	{name: "http-read-timeout", usage: "time a client has to send a request's body (a slower one is cut off with 408)", def: "30s",
		set: func(c *Config, v string) error { return setDuration(&c.HTTPReadTimeout, v, 0) }},
	{name: "http-idle-timeout", usage: "how long an idle keep-alive connection stays open", def: "2m",
		set: func(c *Config, v string) error { return setDuration(&c.HTTPIdleTimeout, v, 0) }},
	{name: "max-restore-bytes", usage: "largest snapshot a restore accepts (PUT /v1/snapshot); its body is written to a temporary file, never held whole in memory before it is checked", def: "1073741824",
		set: func(c *Config, v string) error {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 1 {
				return fmt.Errorf("%q is not a positive number of bytes", v)
			}
			c.MaxRestoreBytes = n
			return nil
		}},
	{name: "dns-ttl", usage: "TTL of service and node answers", def: "5s",
		set: func(c *Config, v string) error { return setDuration(&c.DNSTTL, v, 0) }},
	{name: "encrypt", usage: "base64 32-byte gossip key (sidecar keygen)", def: "none",
		set: func(c *Config, v string) error {
			key, err := base64.StdEncoding.DecodeString(v)
			if err != nil || len(key) != 32 {
				// Never echo the value: it is a secret, even when malformed.
				return errors.New("must be the base64 encoding of 32 bytes (make one with 'sidecar keygen')")
			}
			c.Encrypt, c.EncryptKey = v, key
			return nil
		}},
	{name: "config-file", usage: "YAML or JSON config file", def: "none",
		set: func(c *Config, v string) error { c.ConfigFile = v; return nil }},
	{name: "log-level", usage: "debug, info, warn or error", def: "info",
		set: func(c *Config, v string) error {
			v = strings.ToLower(v)
			if _, ok := logLevels[v]; !ok {
				return errors.New("want debug, info, warn or error")
			}
			c.LogLevel = v
			return nil
		}},
	{name: "log-format", usage: "text or json", def: "text",
		set: func(c *Config, v string) error {
			v = strings.ToLower(v)
			if v != "text" && v != "json" {
				return errors.New("want text or json")
			}
			c.LogFormat = v
			return nil
		}},
	{name: "tls-ca-file", usage: "PEM file of the cluster CA (with --tls-cert-file, --tls-key-file: TLS on the Raft/RPC port)", def: "none: no TLS",
		set: func(c *Config, v string) error { c.TLSCAFile = v; return nil }},
	{name: "tls-cert-file", usage: "PEM file of this agent's certificate (sidecar tls cert create)", def: "none",
		set: func(c *Config, v string) error { c.TLSCertFile = v; return nil }},
	{name: "tls-key-file", usage: "PEM file of this agent's private key", def: "none",
		set: func(c *Config, v string) error { c.TLSKeyFile = v; return nil }},
	{name: "https-addr", usage: "HTTPS API ip:port, with the TLS certificate (needs the TLS files)", def: "none",
		set: func(c *Config, v string) error { return setListenAddr(&c.HTTPSAddr, v) }},
	{name: "session-ttl", usage: "TTL of this node's own lease (minimum 1s)", def: "10s",
		set: func(c *Config, v string) error { return setDuration(&c.SessionTTL, v, fsm.MinLeaseTTL) }},
	{name: "snapshot-threshold", usage: "Raft log entries between snapshots, at least (above 8,192 records the threshold follows the registry's size)", def: "8192",
		set: func(c *Config, v string) error {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil || n == 0 {
				return errors.New("must be a positive integer")
			}
			c.SnapshotThreshold = n
			return nil
		}},
	{name: "snapshot-interval", usage: "how often Raft checks whether to snapshot", def: "30s",
		set: func(c *Config, v string) error { return setDuration(&c.SnapshotInterval, v, 0) }},
}

func lookupSetting(name string) *setting {
	for _, s := range settings {
		if s.name == name {
			return s
		}
	}
	return nil
}

var logLevels = map[string]slog.Level{
	"debug": slog.LevelDebug,
	"info":  slog.LevelInfo,
	"warn":  slog.LevelWarn,
	"error": slog.LevelError,
}

func setBool(dst *bool, v string) error {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return errors.New("want true or false")
	}
	*dst = b
	return nil
}

func setDuration(dst *time.Duration, v string, minimum time.Duration) error {
	d, err := time.ParseDuration(v)
	if err != nil {
		return errors.New("not a duration (like 5s or 1m)")
	}
	if d <= 0 {
		return errors.New("must be positive")
	}
	if d < minimum {
		return fmt.Errorf("must be at least %v", minimum)
	}
	*dst = d
	return nil
}

// setListenAddr accepts a literal ip:port: listeners bind to addresses, and a
// host name here would hide which interface is meant. Port 0 picks a free
// port, which tests rely on.
func setListenAddr(dst *string, v string) error {
	ap, err := netip.ParseAddrPort(v)
	if err != nil {
		return errors.New("want ip:port, like 127.0.0.1:7080 or [::1]:7080")
	}
	*dst = ap.String()
	return nil
}

// hostPortDefault accepts host:port or a bare host, to which it adds port.
// With ipOnly the host must be a literal IP.
func hostPortDefault(v string, port int, ipOnly bool) (string, error) {
	host, p, err := net.SplitHostPort(v)
	if err != nil {
		// No port: the whole value is the host (an IPv6 literal may come
		// bracketed or bare).
		host, p = strings.TrimSuffix(strings.TrimPrefix(v, "["), "]"), strconv.Itoa(port)
	}
	if host == "" {
		return "", fmt.Errorf("%q has no host", v)
	}
	if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("%q has an invalid port", v)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		host = ip.String()
	} else if ipOnly {
		return "", fmt.Errorf("%q is not an IP address", v)
	}
	return net.JoinHostPort(host, p), nil
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// normalizeDomain lower-cases d and adds the root dot, so "Sidecar" and
// "sidecar." name the same zone.
func normalizeDomain(d string) (string, error) {
	d = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(d), "."))
	if d == "" {
		return "", errors.New("must not be empty")
	}
	for _, label := range strings.Split(d, ".") {
		if len(label) == 0 || len(label) > 63 {
			return "", errors.New("labels must be 1-63 characters")
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return "", fmt.Errorf("invalid character %q", r)
			}
		}
	}
	return d + ".", nil
}

// agentUsage prints the agent's flags, generated from settings so it cannot
// drift from what is parsed.
func agentUsage(w io.Writer) {
	fmt.Fprintln(w, "Usage: sidecar agent [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Runs the agent. Every flag also reads SIDECAR_<NAME> from the environment")
	fmt.Fprintln(w, "(--data-dir: SIDECAR_DATA_DIR) and its name as a key of --config-file.")
	fmt.Fprintln(w, "Precedence: flags, then environment, then config file, then defaults.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Flags:")
	for _, st := range settings {
		arg := " VALUE"
		switch {
		case st.kind == kindBool:
			arg = ""
		case st.kind == kindList:
			arg = " LIST"
		case strings.HasSuffix(st.name, "-ttl") || strings.HasSuffix(st.name, "-interval"):
			arg = " DURATION"
		case strings.HasSuffix(st.name, "-addr"):
			arg = " IP:PORT"
		}
		fmt.Fprintf(w, "  --%s%s\n        %s (default: %s)\n", st.name, arg, st.usage, st.def)
	}
}

// setCount parses a count: a whole number, 0 or more.
func setCount(dst *int, v string) error {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return fmt.Errorf("%q is not a whole number of 0 or more", v)
	}
	*dst = n
	return nil
}
