package main

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/fsm"
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
	DNSTTL          time.Duration
	Encrypt         string // base64 gossip key as given
	EncryptKey      []byte // Encrypt decoded: 32 bytes, or nil without encryption
	ConfigFile      string
	LogLevel        string // debug, info, warn or error
	LogFormat       string // text or json

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
	}
}

// Hooks tests replace to make derived defaults deterministic.
var (
	hostname       = os.Hostname
	interfaceAddrs = net.InterfaceAddrs
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
	{name: "session-ttl", usage: "TTL of this node's own lease (minimum 1s)", def: "10s",
		set: func(c *Config, v string) error { return setDuration(&c.SessionTTL, v, fsm.MinLeaseTTL) }},
	{name: "snapshot-threshold", usage: "Raft log entries between snapshots", def: "8192",
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
		// one: the leader adds it as a voter instead.
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

// validate checks what no single setting can check alone.
func (c *Config) validate() error {
	if !fsm.ValidName(c.Name) {
		return configErrorf("invalid node name %q: must be a DNS label (1-63 letters, digits, '-'); set --name", c.Name)
	}
	if c.BootstrapExpect > 0 && !c.Server {
		return configErrorf("--bootstrap-expect needs --server: only servers vote")
	}

	// Listeners must not collide: a clash would only show up later as an
	// "address already in use" from whichever component started second.
	type listener struct {
		flag string
		addr netip.AddrPort
		udp  bool
	}
	ls := []listener{
		{"bind-addr", netip.MustParseAddrPort(c.BindAddr), true},
		{"http-addr", netip.MustParseAddrPort(c.HTTPAddr), false},
		{"dns-addr", netip.MustParseAddrPort(c.DNSAddr), true},
	}
	if c.Server {
		ls = append(ls, listener{"raft-addr", netip.MustParseAddrPort(c.RaftAddr), false})
	}
	for i, a := range ls {
		for _, b := range ls[i+1:] {
			if a.addr.Port() == 0 || a.addr.Port() != b.addr.Port() {
				continue
			}
			ia, ib := a.addr.Addr().Unmap(), b.addr.Addr().Unmap()
			if ia == ib || ia.IsUnspecified() || ib.IsUnspecified() {
				return configErrorf("--%s %s and --%s %s use the same port", a.flag, a.addr, b.flag, b.addr)
			}
		}
	}

	ids := map[string]bool{}
	for i := range c.Services {
		s := &c.Services[i]
		if err := validateService(s); err != nil {
			return configErrorf("config file %s: services[%d]: %v", c.ConfigFile, i, err)
		}
		if ids[s.ID] {
			return configErrorf("config file %s: services[%d]: duplicate id %q", c.ConfigFile, i, s.ID)
		}
		ids[s.ID] = true
	}
	names := map[string]bool{}
	for i := range c.Elections {
		e := &c.Elections[i]
		if err := validateElection(e, c.Name); err != nil {
			return configErrorf("config file %s: elections[%d]: %v", c.ConfigFile, i, err)
		}
		if names[e.Name] {
			return configErrorf("config file %s: elections[%d]: duplicate election %q", c.ConfigFile, i, e.Name)
		}
		names[e.Name] = true
	}
	return nil
}

// defaultServiceID names an instance registered without an id. The port
// keeps two instances of one service on one node apart.
func defaultServiceID(name string, port int) string {
	if port == 0 {
		return name
	}
	return fmt.Sprintf("%s-%d", name, port)
}

// validateService fills defaults of a configured service and checks what the
// agent could not register anyway, so the mistake stops the start instead of
// showing up as a log line.
func validateService(s *api.ServiceRegistration) error {
	if !fsm.ValidName(s.Name) {
		return fmt.Errorf("name %q must be a DNS label (1-63 letters, digits, '-')", s.Name)
	}
	if s.Port < 0 || s.Port > 65535 {
		return fmt.Errorf("port %d is outside 0-65535", s.Port)
	}
	if s.ID == "" {
		s.ID = defaultServiceID(s.Name, s.Port)
	}
	if !fsm.ValidID(s.ID) {
		return fmt.Errorf("id %q must be 1-%d of letters, digits and . _ : @ -", s.ID, fsm.MaxIDLen)
	}
	for j := range s.Checks {
		if err := validateCheck(&s.Checks[j]); err != nil {
			return fmt.Errorf("checks[%d]: %w", j, err)
		}
	}
	return nil
}

func validateCheck(ch *api.CheckDefinition) error {
	present := map[string]bool{"http": ch.HTTP != "", "tcp": ch.TCP != "", "exec": len(ch.Exec) > 0, "ttl": ch.TTL != ""}
	if ch.Type == "" {
		// Infer the type from the one field given, as Consul does.
		for _, t := range []string{"http", "tcp", "exec", "ttl"} {
			if present[t] {
				if ch.Type != "" {
					return errors.New("several check kinds given; set type")
				}
				ch.Type = t
			}
		}
		if ch.Type == "" {
			return errors.New("no type and none of http, tcp, exec, ttl")
		}
	}
	if !fsm.ValidCheckType(ch.Type) {
		return fmt.Errorf("type %q: want http, tcp, exec or ttl", ch.Type)
	}
	if !present[ch.Type] {
		return fmt.Errorf("type %s needs the %q field", ch.Type, ch.Type)
	}
	for k, p := range present {
		if p && k != ch.Type {
			return fmt.Errorf("type %s must not set %q", ch.Type, k)
		}
	}
	if ch.Type == "ttl" {
		if _, err := positiveDuration(ch.TTL); err != nil {
			return fmt.Errorf("ttl %q: %w", ch.TTL, err)
		}
	}
	for _, d := range []struct{ name, v string }{
		{"interval", ch.Interval}, {"timeout", ch.Timeout}, {"deregister_critical_after", ch.DeregisterCriticalAfter},
	} {
		if d.v == "" {
			continue
		}
		if _, err := positiveDuration(d.v); err != nil {
			return fmt.Errorf("%s %q: %w", d.name, d.v, err)
		}
	}
	if ch.SuccessBeforePassing < 0 || ch.FailuresBeforeCritical < 0 {
		return errors.New("thresholds must not be negative")
	}
	return nil
}

func positiveDuration(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, errors.New("not a duration")
	}
	if d <= 0 {
		return 0, errors.New("must be positive")
	}
	return d, nil
}

func validateElection(e *ElectionConfig, node string) error {
	if !fsm.ValidName(e.Name) {
		return fmt.Errorf("name %q must be a DNS label (1-63 letters, digits, '-')", e.Name)
	}
	if e.Candidate == "" {
		e.Candidate = node
	}
	if !fsm.ValidID(e.Candidate) {
		return fmt.Errorf("candidate %q must be 1-%d of letters, digits and . _ : @ -", e.Candidate, fsm.MaxIDLen)
	}
	if e.Value == "" {
		return errors.New("value is required (what the leader publishes, usually host:port)")
	}
	if e.Service != "" && !fsm.ValidID(e.Service) {
		return fmt.Errorf("service %q is not a valid instance id", e.Service)
	}
	return nil
}

// fileConfig is what a config file holds.
type fileConfig struct {
	values    []fileValue
	services  []api.ServiceRegistration
	elections []ElectionConfig
}

type fileValue struct {
	st    *setting
	value string
	line  int
}

// loadConfigFile reads a YAML (.yaml, .yml) or JSON (.json) file whose keys
// are the agent's flag names plus services and elections. JSON is parsed by
// the YAML parser too, once checked to be JSON, so both report unknown keys
// with the same line numbers.
func loadConfigFile(path string) (*fileConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, configErrorf("config file: %v", err)
	}
	return parseConfigFile(path, b)
}

// parseConfigFile parses the content b of the config file at path; the
// extension of path selects the format.
func parseConfigFile(path string, b []byte) (*fileConfig, error) {
	switch ext := strings.ToLower(filepath.Ext(path)); ext {
	case ".yaml", ".yml":
	case ".json":
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			return nil, configErrorf("config file %s: %v", path, jsonErrorLine(b, err))
		}
	default:
		return nil, configErrorf("config file %s: unknown extension %q (want .yaml, .yml or .json)", path, ext)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, configErrorf("config file %s: %s", path, oneLine(err.Error()))
	}
	fc := &fileConfig{}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return fc, nil // empty file
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, configErrorf("config file %s: line %d: want a mapping of settings", path, root.Line)
	}
	errf := func(n *yaml.Node, format string, args ...any) error {
		return fileError(path, n.Line, fmt.Sprintf(format, args...))
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], resolveAlias(root.Content[i+1])
		key := k.Value
		if seen[key] {
			return nil, errf(k, "duplicate key %q", key)
		}
		seen[key] = true
		switch key {
		case "services":
			if err := decodeStrict(v, &fc.services, "services"); err != nil {
				return nil, fileError(path, err.line, err.msg)
			}
			continue
		case "elections":
			if err := decodeStrict(v, &fc.elections, "elections"); err != nil {
				return nil, fileError(path, err.line, err.msg)
			}
			continue
		case "config-file":
			return nil, errf(k, "config-file cannot be set inside a config file")
		}
		st := lookupSetting(key)
		if st == nil {
			if alt := strings.ReplaceAll(key, "_", "-"); alt != key && lookupSetting(alt) != nil {
				return nil, errf(k, "unknown key %q (did you mean %q?)", key, alt)
			}
			return nil, errf(k, "unknown key %q", key)
		}
		var val string
		switch {
		case v.Kind == yaml.ScalarNode && v.Tag == "!!null":
			continue // "key:" with nothing: leave the default
		case v.Kind == yaml.ScalarNode:
			val = v.Value
		case v.Kind == yaml.SequenceNode && st.kind == kindList:
			var items []string
			for _, it := range v.Content {
				it = resolveAlias(it)
				if it.Kind != yaml.ScalarNode {
					return nil, errf(it, "%s: want a list of strings", key)
				}
				items = append(items, it.Value)
			}
			val = strings.Join(items, ",")
		default:
			return nil, errf(v, "%s: want a single value", key)
		}
		fc.values = append(fc.values, fileValue{st: st, value: val, line: v.Line})
	}
	return fc, nil
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// nodeError is a config file mistake; line is 0 when the message already
// names it.
type nodeError struct {
	line int
	msg  string
}

func fileError(path string, line int, msg string) error {
	if line > 0 {
		return configErrorf("config file %s: line %d: %s", path, line, msg)
	}
	return configErrorf("config file %s: %s", path, msg)
}

// decodeStrict decodes n into out after checking every mapping key against
// out's yaml tags, because yaml.v3's own strict mode reports errors over
// several lines and without the path to the key.
func decodeStrict(n *yaml.Node, out any, path string) *nodeError {
	budget := maxConfigNodes
	if e := checkKeys(n, reflect.TypeOf(out).Elem(), path, &budget); e != nil {
		return e
	}
	if err := n.Decode(out); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) && len(te.Errors) > 0 {
			// "line 7: cannot unmarshal ..." already names the line.
			return &nodeError{msg: strings.TrimSpace(te.Errors[0]) + " in " + path}
		}
		return &nodeError{line: n.Line, msg: path + ": " + oneLine(err.Error())}
	}
	return nil
}

// maxConfigNodes bounds the nodes checkKeys visits: aliases can make a small
// file expand exponentially ("billion laughs").
const maxConfigNodes = 100_000

func checkKeys(n *yaml.Node, t reflect.Type, path string, budget *int) *nodeError {
	n = resolveAlias(n)
	if *budget--; *budget < 0 {
		return &nodeError{line: n.Line, msg: "too many nodes after expanding aliases"}
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Slice:
		if n.Kind == yaml.SequenceNode && t.Elem().Kind() != reflect.Uint8 {
			for i, it := range n.Content {
				if e := checkKeys(it, t.Elem(), fmt.Sprintf("%s[%d]", path, i), budget); e != nil {
					return e
				}
			}
		}
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return nil // Decode reports the type mismatch
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			f, ok := yamlField(t, k.Value)
			if !ok {
				return &nodeError{line: k.Line, msg: fmt.Sprintf("unknown key %q in %s", k.Value, path)}
			}
			if e := checkKeys(n.Content[i+1], f.Type, path+"."+k.Value, budget); e != nil {
				return e
			}
		}
	}
	return nil
}

func yamlField(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		if name == key && f.IsExported() {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// jsonErrorLine adds the line number to a JSON syntax error.
func jsonErrorLine(b []byte, err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		line := 1 + strings.Count(string(b[:min(int(se.Offset), len(b))]), "\n")
		return fmt.Sprintf("line %d: %v", line, err)
	}
	return err.Error()
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

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
		slog.String("config_file", c.ConfigFile),
		slog.Int("services", len(c.Services)),
		slog.Int("elections", len(c.Elections)),
		slog.String("log_level", c.LogLevel),
	)
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
