// The agent's Config, its static defaults, and how flags, environment and
// config file are merged into it (parseAgentConfig) and the derived defaults
// filled in (derive).

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/tlsutil"
)

// Well-known ports. The gossip and Raft ports sit next to each other so a
// firewall rule covers both; HTTP and DNS listen on loopback only by default.
const (
	defaultGossipPort = 7946
	defaultRaftPort   = 7947
	defaultDNSPort    = 53 // of recursors given without a port
)

// Config is the agent's effective configuration: every flag of SPEC's agent
// table, a few tuning knobs, and the services and elections only a config
// file can declare. parseAgentConfig fills it from flags, environment, file
// and defaults, in that order of precedence, and validates it.
type Config struct {
	Name            string   // node name, a DNS label
	DataDir         string   // empty with Dev: everything is in memory
	Server          bool     // Raft voter
	BootstrapExpect int      // servers to wait for before bootstrapping; 0: never bootstrap
	Dev             bool     // single in-memory server on loopback
	BindAddr        string   // gossip ip:port (UDP+TCP)
	AdvertiseAddr   string   // IP others reach this node on (no port)
	RaftAddr        string   // Raft ip:port (servers only)
	Join            []string // gossip host:port to join, retried until one works
	HTTPAddr        string   // HTTP API ip:port
	DNSAddr         string   // DNS ip:port (UDP+TCP)
	Domain          string   // DNS domain, lower case, with the trailing dot
	Recursors       []string // upstream DNS ip:port; none: REFUSED
	// ExecChecks: "" (off), "local" or "all" (--enable-exec-checks).
	ExecChecks string
	// AllowedHosts: further Host names of the HTTP API.
	AllowedHosts []string
	// ACLDefaultPolicy: "allow" or "deny" (--acl-default-policy).
	ACLDefaultPolicy string
	// ACLDNSToken: the secret DNS answers are read with (--acl-dns-token).
	ACLDNSToken string
	// HTTP API limits (0: no bound).
	HTTPMaxConnsPerClient, HTTPMaxBlockingQueries int
	// HTTPWriteRate: writes per second per token (0: no bound), and the
	// burst a token may spend at once.
	HTTPWriteRate, HTTPWriteBurst int
	// HTTP server timeouts: request headers, request bodies, idle
	// keep-alive connections.
	HTTPReadHeaderTimeout, HTTPReadTimeout, HTTPIdleTimeout time.Duration
	// MaxRestoreBytes bounds a snapshot restore.
	MaxRestoreBytes int64
	DNSTTL          time.Duration
	Encrypt         string // base64 gossip key as given
	EncryptKey      []byte // Encrypt decoded: 32 bytes, or nil without encryption
	ConfigFile      string
	LogLevel        string // debug, info, warn or error
	LogFormat       string // text or json

	// TLSCAFile, TLSCertFile and TLSKeyFile are all set or all empty.
	TLSCAFile, TLSCertFile, TLSKeyFile string
	HTTPSAddr                          string // HTTPS API ip:port; empty: none
	// TLS holds the loaded TLS material when the three files are set, else
	// nil: the Raft/RPC port and the agent's dials to it run in plain text.
	TLS *tlsutil.Loader

	// SessionTTL is the TTL of the agent's own node lease, which locks and
	// candidacies without a lease of their own hang on.
	SessionTTL time.Duration
	// SnapshotThreshold is how many Raft log entries trigger a snapshot.
	SnapshotThreshold uint64
	// SnapshotInterval is how often Raft checks whether to snapshot.
	SnapshotInterval time.Duration

	// Services and Elections come only from the config file; the agent
	// registers and campaigns for them at start.
	Services  []api.ServiceRegistration
	Elections []ElectionConfig
}

// ElectionConfig is a candidacy the agent keeps alive while it runs.
type ElectionConfig struct {
	Name string `json:"name" yaml:"name"`
	// Candidate defaults to the node name.
	Candidate string `json:"candidate" yaml:"candidate"`
	// Value is what the leader publishes, usually host:port.
	Value string `json:"value" yaml:"value"`
	// Service, when set, is the ID of a local instance: the candidacy lives
	// only while that instance's checks pass.
	Service string `json:"service" yaml:"service"`
}

// defaultConfig holds the static defaults of SPEC's table. Defaults that
// depend on other settings (name, data dir, bootstrap-expect, raft and
// advertise addresses) are derived after every source was applied.
func defaultConfig() *Config {
	return &Config{
		BindAddr:  "0.0.0.0:7946",
		HTTPAddr:  api.DefaultAddr,
		DNSAddr:   "127.0.0.1:7053",
		Domain:    "sidecar.",
		DNSTTL:    5 * time.Second, // short: failover must reach clients quickly
		LogLevel:  "info",
		LogFormat: "text",
		// 10s: a dead node's locks free up within 10s even if gossip
		// missed it, while a keepalive every few seconds stays cheap.
		SessionTTL: 10 * time.Second,
		// 8192 entries and 30s are raft's own defaults: the registry is
		// small, so snapshots are cheap and need not be tuned down.
		SnapshotThreshold: 8192,
		SnapshotInterval:  30 * time.Second,
		// See httpapi.DefaultConfig.
		HTTPMaxConnsPerClient:  512,
		HTTPMaxBlockingQueries: 16384,
		MaxRestoreBytes:        1 << 30,
		HTTPWriteRate:          5000,
		HTTPWriteBurst:         5000,
		HTTPReadHeaderTimeout:  10 * time.Second,
		HTTPReadTimeout:        30 * time.Second,
		HTTPIdleTimeout:        2 * time.Minute,
	}
}

// Hooks tests replace to make derived defaults deterministic.
var (
	hostname       = os.Hostname
	interfaceAddrs = net.InterfaceAddrs
)

// configError is a bad configuration: the agent exits 2.
type configError struct{ msg string }

func (e *configError) Error() string { return e.msg }

func configErrorf(format string, args ...any) error {
	return &configError{msg: fmt.Sprintf(format, args...)}
}

// source names where a value came from, for error messages.
type source struct {
	kind string // "flag", "env" or "file"
	file string
	line int
}

func (s source) describe(st *setting) string {
	switch s.kind {
	case "flag":
		return "--" + st.name
	case "env":
		return st.envName()
	}
	return st.name
}

// wrap places a message about a value in its file and line, when it came
// from the config file.
func (s source) wrap(msg string) error {
	if s.kind == "file" {
		return fileError(s.file, s.line, msg)
	}
	return configErrorf("%s", msg)
}

// rawFlag collects the raw text of one agent flag.
type rawFlag struct {
	st   *setting
	vals map[string]string
}

func (f *rawFlag) String() string { return "" }
func (f *rawFlag) Set(v string) error {
	if old, ok := f.vals[f.st.name]; ok && f.st.kind == kindList && old != "" {
		v = old + "," + v
	}
	f.vals[f.st.name] = v
	return nil
}
func (f *rawFlag) IsBoolFlag() bool { return f.st.kind == kindBool }

// errHelp asks for --help output and exit 0.
var errHelp = flag.ErrHelp

// parseAgentConfig builds the agent's configuration from args (after
// "agent"), the SIDECAR_* environment and the config file. Every error is a
// *configError with a one-line message, or errHelp.
func parseAgentConfig(args []string) (*Config, error) {
	return parseAgentConfigTLS(args, true)
}

// parseAgentConfigTLS is parseAgentConfig, loading the TLS files only when
// withTLS: a SIGHUP re-reads the config file's services while the agent's
// own loader reloads the certificate it serves with.
func parseAgentConfigTLS(args []string, withTLS bool) (*Config, error) {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	flagVals := map[string]string{}
	for _, st := range settings {
		fs.Var(&rawFlag{st: st, vals: flagVals}, st.name, st.usage)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, errHelp
		}
		return nil, configErrorf("agent: %v", err)
	}
	if fs.NArg() > 0 {
		return nil, configErrorf("agent: unexpected argument %q (flags only)", fs.Arg(0))
	}

	c := defaultConfig()
	explicit := map[string]source{} // setting name → where its value came from
	apply := func(st *setting, v string, src source) error {
		if err := st.set(c, v); err != nil {
			if st.name == "encrypt" {
				return src.wrap(fmt.Sprintf("invalid %s: %v", src.describe(st), err))
			}
			return src.wrap(fmt.Sprintf("invalid %s %q: %v", src.describe(st), v, err))
		}
		explicit[st.name] = src
		return nil
	}

	// The config file is named by a flag or the environment, never by
	// itself; apply its path first so later layers see it.
	path, pathSrc := flagVals["config-file"], source{kind: "flag"}
	if path == "" {
		path, pathSrc = os.Getenv("SIDECAR_CONFIG_FILE"), source{kind: "env"}
	}
	if path != "" {
		if err := apply(lookupSetting("config-file"), path, pathSrc); err != nil {
			return nil, err
		}
		fc, err := loadConfigFile(path)
		if err != nil {
			return nil, err
		}
		for _, kv := range fc.values {
			if err := apply(kv.st, kv.value, source{kind: "file", file: path, line: kv.line}); err != nil {
				return nil, err
			}
		}
		c.Services, c.Elections = fc.services, fc.elections
	}
	for _, st := range settings {
		// An empty variable counts as unset, so an EnvironmentFile line
		// like SIDECAR_ENCRYPT= does not turn into an invalid value.
		if v := os.Getenv(st.envName()); v != "" && st.name != "config-file" {
			if err := apply(st, v, source{kind: "env"}); err != nil {
				return nil, err
			}
		}
	}
	for _, st := range settings {
		if v, ok := flagVals[st.name]; ok && st.name != "config-file" {
			if err := apply(st, v, source{kind: "flag"}); err != nil {
				return nil, err
			}
		}
	}

	if err := c.derive(explicit); err != nil {
		return nil, err
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	if !withTLS {
		return c, nil
	}
	if err := c.loadTLS(); err != nil {
		return nil, err
	}
	return c, nil
}

// derive fills the defaults that depend on other settings and applies --dev.
// explicit holds the settings given by a flag, the environment or the file.
func (c *Config) derive(explicit map[string]source) error {
	given := func(name string) bool { _, ok := explicit[name]; return ok }
	if !given("name") {
		h, err := hostname()
		if err != nil {
			return configErrorf("cannot read the host name (%v); set --name", err)
		}
		c.Name, _, _ = strings.Cut(h, ".")
	}

	if c.Dev {
		// Dev mode is one self-bootstrapped server with nothing on disk:
		// settings that contradict that are mistakes, not preferences.
		switch {
		case given("server") && !c.Server:
			return configErrorf("--dev always runs a server; drop --server=false")
		case given("bootstrap-expect") && c.BootstrapExpect != 1:
			return configErrorf("--dev is a single server; --bootstrap-expect must be 1 or unset")
		case given("data-dir"):
			// Name the layer that set it: the image or an env file may set
			// SIDECAR_DATA_DIR without the user knowing.
			return configErrorf("--dev keeps everything in memory; drop %s", explicit["data-dir"].describe(lookupSetting("data-dir")))
		case len(c.Join) > 0:
			return configErrorf("--dev is a single server; it cannot --join")
		}
		c.Server, c.BootstrapExpect, c.DataDir = true, 1, ""
		if !given("bind-addr") {
			c.BindAddr = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), defaultGossipPort).String()
		}
		if !given("advertise-addr") {
			c.AdvertiseAddr = "127.0.0.1"
		}
	}

	bind := netip.MustParseAddrPort(c.BindAddr) // validated by its setter
	if !given("raft-addr") {
		c.RaftAddr = netip.AddrPortFrom(bind.Addr(), defaultRaftPort).String()
	}
	if !c.Dev && !given("data-dir") {
		c.DataDir = c.Name + ".sidecar"
	}
	if c.Server && !given("bootstrap-expect") {
		// --server alone is a one-node cluster. With --join it is a server
		// joining an existing cluster, which must never bootstrap a second
		// one: the leader adds it (as a non-voter, a voter once caught up) instead.
		if len(c.Join) == 0 {
			c.BootstrapExpect = 1
		}
	}
	if c.AdvertiseAddr == "" {
		c.AdvertiseAddr = defaultAdvertise(bind.Addr())
	}
	return nil
}

// defaultAdvertise is the bind IP when it names one interface, else the
// first non-loopback unicast address (IPv4 first), else loopback: a node
// alone on a host without network still works.
func defaultAdvertise(bind netip.Addr) string {
	if !bind.IsUnspecified() {
		return bind.String()
	}
	addrs, err := interfaceAddrs()
	if err == nil {
		var v6 string
		for _, a := range addrs {
			pfx, err := netip.ParsePrefix(a.String())
			if err != nil {
				continue
			}
			ip := pfx.Addr()
			if ip.IsLoopback() || !ip.IsGlobalUnicast() {
				continue
			}
			if ip.Is4() || ip.Is4In6() {
				return ip.Unmap().String()
			}
			if v6 == "" && bind.Is6() {
				v6 = ip.String()
			}
		}
		if v6 != "" {
			return v6
		}
	}
	if bind.Is6() && !bind.Is4In6() {
		return "::1"
	}
	return "127.0.0.1"
}
