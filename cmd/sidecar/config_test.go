package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/api"
)

// testKey is a valid gossip key: base64 of 32 bytes.
const testKey = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

// setupConfigTest clears every SIDECAR_* setting from the environment and
// pins the host name and interface addresses, so derived defaults do not
// depend on the machine running the test.
func setupConfigTest(t *testing.T) {
	t.Helper()
	for _, st := range settings {
		t.Setenv(st.envName(), "") // empty counts as unset
	}
	oldHost, oldAddrs := hostname, interfaceAddrs
	hostname = func() (string, error) { return "web-1.example.com", nil }
	interfaceAddrs = func() ([]net.Addr, error) {
		return []net.Addr{
			&net.IPNet{IP: net.ParseIP("127.0.0.1"), Mask: net.CIDRMask(8, 32)},
			&net.IPNet{IP: net.ParseIP("fe80::1"), Mask: net.CIDRMask(64, 128)},
			&net.IPNet{IP: net.ParseIP("10.1.2.3"), Mask: net.CIDRMask(24, 32)},
		}, nil
	}
	t.Cleanup(func() { hostname, interfaceAddrs = oldHost, oldAddrs })
}

// writeConfig writes a config file named name into a temporary directory.
func writeConfig(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseAgentConfig_precedence(t *testing.T) {
	tests := []struct {
		name string
		file string // YAML; empty: no config file
		env  map[string]string
		args []string
		get  func(*Config) any
		want any
	}{
		{"default", "", nil, nil, func(c *Config) any { return c.DNSTTL }, 5 * time.Second},
		{"file", "dns-ttl: 7s", nil, nil, func(c *Config) any { return c.DNSTTL }, 7 * time.Second},
		{"env beats file", "dns-ttl: 7s", map[string]string{"SIDECAR_DNS_TTL": "8s"}, nil, func(c *Config) any { return c.DNSTTL }, 8 * time.Second},
		{"flag beats env", "dns-ttl: 7s", map[string]string{"SIDECAR_DNS_TTL": "8s"}, []string{"--dns-ttl", "9s"}, func(c *Config) any { return c.DNSTTL }, 9 * time.Second},
		{"flag beats file", "dns-ttl: 7s", nil, []string{"-dns-ttl=9s"}, func(c *Config) any { return c.DNSTTL }, 9 * time.Second},
		{"env beats default", "", map[string]string{"SIDECAR_DATA_DIR": "/var/lib/sc"}, nil, func(c *Config) any { return c.DataDir }, "/var/lib/sc"},
		{"empty env is unset", "data-dir: /from/file", map[string]string{"SIDECAR_DATA_DIR": ""}, nil, func(c *Config) any { return c.DataDir }, "/from/file"},
		{"bool env beats file", "server: true", map[string]string{"SIDECAR_SERVER": "false"}, nil, func(c *Config) any { return c.Server }, false},
		{"bool flag beats env", "", map[string]string{"SIDECAR_SERVER": "false"}, []string{"--server"}, func(c *Config) any { return c.Server }, true},
		{"list from file", "join: [a.example, 'b.example:8000']", nil, nil, func(c *Config) any { return c.Join }, []string{"a.example:7946", "b.example:8000"}},
		{"list env replaces file", "join: [a.example]", map[string]string{"SIDECAR_JOIN": "c:1,d:2"}, nil, func(c *Config) any { return c.Join }, []string{"c:1", "d:2"}},
		{"repeated list flags accumulate", "join: [a.example]", nil, []string{"--join", "e:1", "--join", "f:2,g:3"}, func(c *Config) any { return c.Join }, []string{"e:1", "f:2", "g:3"}},
		{"config file from env", "name: fromfile", map[string]string{"SIDECAR_NAME": ""}, nil, func(c *Config) any { return c.Name }, "fromfile"},
		{"session-ttl", "session-ttl: 3s", map[string]string{"SIDECAR_SESSION_TTL": "4s"}, nil, func(c *Config) any { return c.SessionTTL }, 4 * time.Second},
		{"snapshot knobs", "snapshot-threshold: 100\nsnapshot-interval: 1m", nil, []string{"--snapshot-threshold", "200"}, func(c *Config) any { return [2]any{c.SnapshotThreshold, c.SnapshotInterval} }, [2]any{uint64(200), time.Minute}},
		{"log level", "log-level: debug", map[string]string{"SIDECAR_LOG_LEVEL": "WARN"}, nil, func(c *Config) any { return c.LogLevel }, "warn"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setupConfigTest(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			args := tt.args
			if tt.file != "" {
				p := writeConfig(t, "sidecar.yaml", tt.file)
				if tt.name == "config file from env" {
					t.Setenv("SIDECAR_CONFIG_FILE", p)
				} else {
					args = append([]string{"--config-file", p}, args...)
				}
			}
			c, err := parseAgentConfig(args)
			if err != nil {
				t.Fatalf("parseAgentConfig(%q): %v", args, err)
			}
			if got := tt.get(c); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseAgentConfig_defaults(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want Config // only the fields compared below
	}{
		{"client", nil, Config{Name: "web-1", DataDir: "web-1.sidecar", BindAddr: "0.0.0.0:7946",
			RaftAddr: "0.0.0.0:7947", AdvertiseAddr: "10.1.2.3"}},
		{"server alone bootstraps itself", []string{"--server"}, Config{Name: "web-1", DataDir: "web-1.sidecar", Server: true, BootstrapExpect: 1,
			BindAddr: "0.0.0.0:7946", RaftAddr: "0.0.0.0:7947", AdvertiseAddr: "10.1.2.3"}},
		{"server joining does not bootstrap", []string{"--server", "--join", "10.0.0.9"}, Config{Name: "web-1", DataDir: "web-1.sidecar", Server: true,
			BindAddr: "0.0.0.0:7946", RaftAddr: "0.0.0.0:7947", AdvertiseAddr: "10.1.2.3", Join: []string{"10.0.0.9:7946"}}},
		{"bootstrap-expect wins", []string{"--server", "--bootstrap-expect", "3", "--join", "a:1"}, Config{Name: "web-1", DataDir: "web-1.sidecar", Server: true,
			BootstrapExpect: 3, BindAddr: "0.0.0.0:7946", RaftAddr: "0.0.0.0:7947", AdvertiseAddr: "10.1.2.3", Join: []string{"a:1"}}},
		{"bind IP is advertised and hosts raft", []string{"--name", "db", "--bind-addr", "192.168.1.5:8000"}, Config{Name: "db", DataDir: "db.sidecar",
			BindAddr: "192.168.1.5:8000", RaftAddr: "192.168.1.5:7947", AdvertiseAddr: "192.168.1.5"}},
		{"explicit addresses", []string{"--advertise-addr", "10.9.9.9", "--raft-addr", "10.9.9.9:9000", "--data-dir", "/d"}, Config{Name: "web-1", DataDir: "/d",
			BindAddr: "0.0.0.0:7946", RaftAddr: "10.9.9.9:9000", AdvertiseAddr: "10.9.9.9"}},
		{"dev", []string{"--dev"}, Config{Name: "web-1", Dev: true, Server: true, BootstrapExpect: 1,
			BindAddr: "127.0.0.1:7946", RaftAddr: "127.0.0.1:7947", AdvertiseAddr: "127.0.0.1"}},
		{"dev keeps explicit ports", []string{"--dev", "--bind-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0", "--server", "--bootstrap-expect", "1"}, Config{Name: "web-1", Dev: true, Server: true,
			BootstrapExpect: 1, BindAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", AdvertiseAddr: "127.0.0.1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setupConfigTest(t)
			c, err := parseAgentConfig(tt.args)
			if err != nil {
				t.Fatalf("parseAgentConfig(%q): %v", tt.args, err)
			}
			got := Config{Name: c.Name, DataDir: c.DataDir, Server: c.Server, BootstrapExpect: c.BootstrapExpect, Dev: c.Dev,
				BindAddr: c.BindAddr, RaftAddr: c.RaftAddr, AdvertiseAddr: c.AdvertiseAddr, Join: c.Join}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
			// Static defaults hold whatever the role.
			if c.HTTPAddr != "127.0.0.1:7080" || c.DNSAddr != "127.0.0.1:7053" || c.Domain != "sidecar." ||
				c.LogLevel != "info" || c.LogFormat != "text" || c.SessionTTL != 10*time.Second ||
				c.SnapshotThreshold != 8192 || c.SnapshotInterval != 30*time.Second || c.EncryptKey != nil {
				t.Errorf("static defaults changed: %+v", c)
			}
		})
	}
}

func TestParseAgentConfig_normalizes(t *testing.T) {
	setupConfigTest(t)
	c, err := parseAgentConfig([]string{"--domain", "Consul", "--recursors", "8.8.8.8, [2001:db8::1]:5353,1.1.1.1", "--encrypt", testKey,
		"--http-addr", "[::1]:7080", "--log-format", "JSON"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Domain != "consul." {
		t.Errorf("Domain = %q", c.Domain)
	}
	if want := []string{"8.8.8.8:53", "[2001:db8::1]:5353", "1.1.1.1:53"}; !reflect.DeepEqual(c.Recursors, want) {
		t.Errorf("Recursors = %q, want %q", c.Recursors, want)
	}
	if len(c.EncryptKey) != 32 || c.EncryptKey[31] != 31 || c.Encrypt != testKey {
		t.Errorf("EncryptKey = %v", c.EncryptKey)
	}
	if c.HTTPAddr != "[::1]:7080" || c.LogFormat != "json" {
		t.Errorf("HTTPAddr %q LogFormat %q", c.HTTPAddr, c.LogFormat)
	}
}

func TestParseAgentConfig_hostNameWithoutDot(t *testing.T) {
	setupConfigTest(t)
	hostname = func() (string, error) { return "box", nil }
	c, err := parseAgentConfig(nil)
	if err != nil || c.Name != "box" || c.DataDir != "box.sidecar" {
		t.Fatalf("got %+v, %v", c, err)
	}
}

const yamlFile = `# a full file
name: api-7
server: true
bootstrap-expect: 3
join:
  - 10.0.0.1
  - 10.0.0.2:7946
recursors: 8.8.8.8
dns-ttl: 2s
encrypt: ` + testKey + `
services:
  - name: web
    port: 8080
    tags: [v1, prod]
    meta: {team: core}
    checks:
      - http: http://127.0.0.1:8080/health
        interval: 1s
      - type: ttl
        ttl: 30s
  - id: db-main
    name: db
    address: 10.0.0.5
    port: 5432
elections:
  - name: primary
    value: 10.0.0.5:5432
    service: db-main
  - name: cron
    candidate: api-7-cron
    value: api-7
`

const jsonFile = `{
  "name": "api-7",
  "server": true,
  "bootstrap-expect": 3,
  "join": ["10.0.0.1", "10.0.0.2:7946"],
  "recursors": "8.8.8.8",
  "dns-ttl": "2s",
  "encrypt": "` + testKey + `",
  "services": [
    {"name": "web", "port": 8080, "tags": ["v1", "prod"], "meta": {"team": "core"},
     "checks": [{"http": "http://127.0.0.1:8080/health", "interval": "1s"}, {"type": "ttl", "ttl": "30s"}]},
    {"id": "db-main", "name": "db", "address": "10.0.0.5", "port": 5432}
  ],
  "elections": [
    {"name": "primary", "value": "10.0.0.5:5432", "service": "db-main"},
    {"name": "cron", "candidate": "api-7-cron", "value": "api-7"}
  ]
}`

func TestParseAgentConfig_files(t *testing.T) {
	want := &Config{
		Name: "api-7", Server: true, BootstrapExpect: 3,
		Join: []string{"10.0.0.1:7946", "10.0.0.2:7946"}, Recursors: []string{"8.8.8.8:53"}, DNSTTL: 2 * time.Second,
		Services: []api.ServiceRegistration{
			{ID: "web-8080", Name: "web", Port: 8080, Tags: []string{"v1", "prod"}, Meta: map[string]string{"team": "core"},
				Checks: []api.CheckDefinition{
					{Type: "http", HTTP: "http://127.0.0.1:8080/health", Interval: "1s"},
					{Type: "ttl", TTL: "30s"},
				}},
			{ID: "db-main", Name: "db", Address: "10.0.0.5", Port: 5432},
		},
		Elections: []ElectionConfig{
			{Name: "primary", Candidate: "api-7", Value: "10.0.0.5:5432", Service: "db-main"},
			{Name: "cron", Candidate: "api-7-cron", Value: "api-7"},
		},
	}
	for _, tt := range []struct{ file, content string }{
		{"sidecar.yaml", yamlFile},
		{"sidecar.yml", yamlFile},
		{"sidecar.json", jsonFile},
	} {
		t.Run(tt.file, func(t *testing.T) {
			setupConfigTest(t)
			p := writeConfig(t, tt.file, tt.content)
			c, err := parseAgentConfig([]string{"--config-file", p})
			if err != nil {
				t.Fatal(err)
			}
			if c.ConfigFile != p || len(c.EncryptKey) != 32 || c.DataDir != "api-7.sidecar" {
				t.Errorf("ConfigFile %q EncryptKey %d DataDir %q", c.ConfigFile, len(c.EncryptKey), c.DataDir)
			}
			got := &Config{Name: c.Name, Server: c.Server, BootstrapExpect: c.BootstrapExpect, Join: c.Join,
				Recursors: c.Recursors, DNSTTL: c.DNSTTL, Services: c.Services, Elections: c.Elections}
			if !reflect.DeepEqual(got, want) {
				g, _ := json.Marshal(got)
				w, _ := json.Marshal(want)
				t.Errorf("got  %s\nwant %s", g, w)
			}
		})
	}
}

func TestParseAgentConfig_emptyFile(t *testing.T) {
	setupConfigTest(t)
	p := writeConfig(t, "empty.yaml", "# nothing yet\n")
	if _, err := parseAgentConfig([]string{"--config-file", p}); err != nil {
		t.Fatal(err)
	}
}

// TestRun_agentConfigErrors checks that every invalid setting stops the agent
// with exit 2 and one line naming the problem.
func TestRun_agentConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		file string // "name.ext\ncontent"
		want string
	}{
		{name: "unknown flag", args: []string{"--nope"}, want: "flag provided but not defined: -nope"},
		{name: "positional", args: []string{"extra"}, want: `unexpected argument "extra"`},
		{name: "bad duration", args: []string{"--dns-ttl", "abc"}, want: `invalid --dns-ttl "abc": not a duration`},
		{name: "zero duration", args: []string{"--dns-ttl", "0s"}, want: "must be positive"},
		{name: "negative duration", args: []string{"--snapshot-interval", "-1s"}, want: "must be positive"},
		{name: "session ttl below minimum", args: []string{"--session-ttl", "500ms"}, want: "must be at least 1s"},
		{name: "snapshot threshold", args: []string{"--snapshot-threshold", "0"}, want: "positive integer"},
		{name: "host name bind", args: []string{"--bind-addr", "localhost:7946"}, want: `invalid --bind-addr "localhost:7946": want ip:port`},
		{name: "bind without port", args: []string{"--bind-addr", "10.0.0.1"}, want: "want ip:port"},
		{name: "port out of range", args: []string{"--http-addr", "127.0.0.1:99999"}, want: "invalid --http-addr"},
		{name: "dns addr", args: []string{"--dns-addr", ":53"}, want: "invalid --dns-addr"},
		{name: "raft addr", args: []string{"--raft-addr", "x"}, want: "invalid --raft-addr"},
		{name: "advertise unspecified", args: []string{"--advertise-addr", "0.0.0.0"}, want: "unspecified"},
		{name: "advertise not IP", args: []string{"--advertise-addr", "host.example"}, want: "not an IP address"},
		{name: "encrypt short", args: []string{"--encrypt", "c2hvcnQ="}, want: "base64 encoding of 32 bytes"},
		{name: "encrypt not base64", args: []string{"--encrypt", "!!!"}, want: "invalid --encrypt: must be"},
		{name: "log level", args: []string{"--log-level", "verbose"}, want: "want debug, info, warn or error"},
		{name: "log format", args: []string{"--log-format", "xml"}, want: "want text or json"},
		{name: "bootstrap negative", args: []string{"--server", "--bootstrap-expect", "-1"}, want: "must not be negative"},
		{name: "bootstrap not int", args: []string{"--bootstrap-expect", "three"}, want: "not an integer"},
		{name: "bootstrap without server", args: []string{"--bootstrap-expect", "3"}, want: "--bootstrap-expect needs --server"},
		{name: "bad bool", args: []string{"--server=maybe"}, want: `invalid --server "maybe"`},
		{name: "bad name", args: []string{"--name", "web_1"}, want: `invalid node name "web_1"`},
		{name: "bad host name", env: map[string]string{"HOSTNAME_FOR_TEST": "under_score.example"}, want: `invalid node name "under_score"`},
		{name: "join no host", args: []string{"--join", ":7946"}, want: "has no host"},
		{name: "join bad port", args: []string{"--join", "a.example:0"}, want: "invalid port"},
		{name: "recursor not IP", args: []string{"--recursors", "dns.google"}, want: "not an IP address"},
		{name: "domain", args: []string{"--domain", "a..b"}, want: "invalid --domain"},
		{name: "domain chars", args: []string{"--domain", "a b"}, want: "invalid character"},
		{name: "port clash", args: []string{"--http-addr", "127.0.0.1:7946"}, want: "--bind-addr 0.0.0.0:7946 and --http-addr 127.0.0.1:7946 use the same port"},
		{name: "raft clash", args: []string{"--server", "--raft-addr", "10.0.0.1:7080", "--http-addr", "0.0.0.0:7080"}, want: "use the same port"},
		{name: "dev data dir", args: []string{"--dev", "--data-dir", "x"}, want: "--dev keeps everything in memory; drop --data-dir"},
		{name: "dev data dir env", args: []string{"--dev"}, env: map[string]string{"SIDECAR_DATA_DIR": "x"}, want: "drop SIDECAR_DATA_DIR"},
		{name: "dev bootstrap", args: []string{"--dev", "--bootstrap-expect", "3"}, want: "--bootstrap-expect must be 1"},
		{name: "dev not server", args: []string{"--dev", "--server=false"}, want: "--dev always runs a server"},
		{name: "dev join", args: []string{"--dev", "--join", "a:1"}, want: "cannot --join"},
		{name: "env value", env: map[string]string{"SIDECAR_DNS_TTL": "soon"}, want: `invalid SIDECAR_DNS_TTL "soon"`},
		{name: "env bool", env: map[string]string{"SIDECAR_DEV": "yes please"}, want: `invalid SIDECAR_DEV`},
		{name: "missing file", args: []string{"--config-file", "/nonexistent/sidecar.yaml"}, want: "no such file"},
		{name: "file value", file: "c.yaml\nlog-level: loud\n", want: `c.yaml: line 1: invalid log-level "loud"`},
		{name: "file value line", file: "c.yaml\nname: x\ndns-ttl: 5\n", want: `line 2: invalid dns-ttl "5": not a duration`},
		{name: "unknown key", file: "c.yaml\nname: x\nbogus: 1\n", want: `line 2: unknown key "bogus"`},
		{name: "unknown key suggestion", file: "c.yaml\ndata_dir: /x\n", want: `unknown key "data_dir" (did you mean "data-dir"?)`},
		{name: "unknown json key", file: "c.json\n{\"name\": \"x\",\n \"nope\": 1}", want: `line 2: unknown key "nope"`},
		{name: "config-file key", file: "c.yaml\nconfig-file: other.yaml\n", want: "config-file cannot be set inside a config file"},
		{name: "extension", file: "c.toml\nname = 'x'\n", want: `unknown extension ".toml"`},
		{name: "yaml syntax", file: "c.yaml\nname: [x\n", want: "yaml:"},
		{name: "json syntax", file: "c.json\n{\n\"name\": \"x\",\n}", want: "line 3: invalid character '}'"},
		{name: "not a mapping", file: "c.yaml\n- a\n- b\n", want: "want a mapping of settings"},
		{name: "list for scalar", file: "c.yaml\nname: [a, b]\n", want: "name: want a single value"},
		{name: "duplicate key", file: "c.yaml\nname: a\nname: b\n", want: "name"},
		{name: "service unknown key", file: "c.yaml\nservices:\n  - name: web\n    port: 80\n    prot: 1\n", want: `line 4: unknown key "prot" in services[0]`},
		{name: "check unknown key", file: "c.yaml\nservices:\n  - name: web\n    checks:\n      - http: http://x\n        intervall: 1s\n", want: `line 5: unknown key "intervall" in services[0].checks[0]`},
		{name: "service wrong type", file: "c.yaml\nservices:\n  - name: web\n    port: eighty\n", want: "line 3: cannot unmarshal"},
		{name: "services not a list", file: "c.yaml\nservices: web\n", want: "cannot unmarshal"},
		{name: "service name", file: "c.yaml\nservices:\n  - name: Web_1\n", want: `services[0]: name "Web_1" must be a DNS label`},
		{name: "service port", file: "c.yaml\nservices:\n  - name: web\n    port: 70000\n", want: "port 70000 is outside"},
		{name: "service weight", file: "c.yaml\nservices:\n  - name: web\n    weight: 70000\n", want: "weight 70000 is outside 1-65535"},
		{name: "service weight negative", file: "c.yaml\nservices:\n  - name: web\n    weight: -2\n", want: "weight -2 is outside"},
		{name: "service id", file: "c.yaml\nservices:\n  - name: web\n    id: 'a b'\n", want: `id "a b" must be`},
		{name: "service duplicate", file: "c.yaml\nservices:\n  - name: web\n    port: 80\n  - name: web\n    port: 80\n", want: `services[1]: duplicate id "web-80"`},
		{name: "check without kind", file: "c.yaml\nservices:\n  - name: web\n    checks:\n      - interval: 1s\n", want: "checks[0]: no type"},
		{name: "check two kinds", file: "c.yaml\nservices:\n  - name: web\n    checks:\n      - http: http://x\n        tcp: x:1\n", want: "several check kinds"},
		{name: "check type field", file: "c.yaml\nservices:\n  - name: web\n    checks:\n      - type: tcp\n        http: http://x\n", want: `type tcp needs the "tcp" field`},
		{name: "check extra field", file: "c.yaml\nservices:\n  - name: web\n    checks:\n      - type: tcp\n        tcp: x:1\n        ttl: 5s\n", want: `type tcp must not set "ttl"`},
		{name: "check type", file: "c.yaml\nservices:\n  - name: web\n    checks:\n      - type: grpc\n", want: `type "grpc"`},
		{name: "check duration", file: "c.yaml\nservices:\n  - name: web\n    checks:\n      - tcp: x:1\n        interval: often\n", want: `interval "often": not a duration`},
		{name: "check ttl", file: "c.yaml\nservices:\n  - name: web\n    checks:\n      - ttl: 0s\n", want: `ttl "0s": must be positive`},
		{name: "check threshold", file: "c.yaml\nservices:\n  - name: web\n    checks:\n      - tcp: x:1\n        success_before_passing: -1\n", want: "thresholds must not be negative"},
		{name: "election value", file: "c.yaml\nelections:\n  - name: primary\n", want: "elections[0]: value is required"},
		{name: "election name", file: "c.yaml\nelections:\n  - name: pri.mary\n    value: x\n", want: `name "pri.mary" must be a DNS label`},
		{name: "election unknown key", file: "c.yaml\nelections:\n  - name: p\n    valeu: x\n", want: `line 3: unknown key "valeu" in elections[0]`},
		{name: "election duplicate", file: "c.yaml\nelections:\n  - {name: p, value: x}\n  - {name: p, value: y}\n", want: `elections[1]: duplicate election "p"`},
		{name: "election candidate", file: "c.yaml\nelections:\n  - {name: p, value: x, candidate: 'a b'}\n", want: `candidate "a b"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setupConfigTest(t)
			for k, v := range tt.env {
				if k == "HOSTNAME_FOR_TEST" {
					hostname = func() (string, error) { return v, nil }
					continue
				}
				t.Setenv(k, v)
			}
			args := append([]string{"agent"}, tt.args...)
			if tt.file != "" {
				name, content, _ := strings.Cut(tt.file, "\n")
				args = append(args, "--config-file", writeConfig(t, name, content))
			}
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), args, strings.NewReader(""), &stdout, &stderr)
			if code != exitUsage {
				t.Errorf("exit code %d, want 2 (stderr %q)", code, stderr.String())
			}
			assertOneErrorLine(t, stderr.String(), tt.want)
			if strings.Contains(stderr.String(), "c2hvcnQ=") {
				t.Errorf("stderr echoes the gossip key: %q", stderr.String())
			}
		})
	}
}

// assertOneErrorLine checks the CLI's failure format: exactly one line,
// "sidecar: ...", containing want.
func assertOneErrorLine(t *testing.T, stderr, want string) {
	t.Helper()
	if !strings.HasPrefix(stderr, "sidecar: ") || strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") {
		t.Errorf("stderr %q is not one 'sidecar: ' line", stderr)
	}
	if !strings.Contains(stderr, want) {
		t.Errorf("stderr %q does not contain %q", stderr, want)
	}
}

func TestConfig_Banner(t *testing.T) {
	setupConfigTest(t)
	c, err := parseAgentConfig([]string{"--server", "--encrypt", testKey})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).LogAttrs(context.Background(), slog.LevelInfo, "start", c.Banner()...)
	out := buf.String()
	for _, want := range []string{"name=web-1", "role=server", "data_dir=web-1.sidecar", "raft_addr=0.0.0.0:7947",
		"bootstrap_expect=1", "snapshot_threshold=8192", "http_addr=127.0.0.1:7080", "encrypt=true", "advertise_addr=10.1.2.3"} {
		if !strings.Contains(out, want) {
			t.Errorf("banner %q lacks %q", out, want)
		}
	}
	if strings.Contains(out, testKey) {
		t.Errorf("banner logs the gossip key: %q", out)
	}

	dev, _ := parseAgentConfig([]string{"--dev"})
	buf.Reset()
	slog.New(slog.NewTextHandler(&buf, nil)).LogAttrs(context.Background(), slog.LevelInfo, "start", dev.Banner()...)
	if !strings.Contains(buf.String(), `data_dir="(in memory)"`) {
		t.Errorf("dev banner %q does not say in memory", buf.String())
	}
}

func TestNewLogger(t *testing.T) {
	tests := []struct {
		level, format string
		wantDebug     bool
		wantJSON      bool
	}{
		{"info", "text", false, false},
		{"debug", "text", true, false},
		{"warn", "json", false, true},
		{"debug", "json", true, true},
	}
	for _, tt := range tests {
		var buf bytes.Buffer
		l := newLogger(&Config{LogLevel: tt.level, LogFormat: tt.format}, &buf)
		l.Debug("dbg")
		l.Error("boom", "k", "v")
		out := buf.String()
		if got := strings.Contains(out, "dbg"); got != tt.wantDebug {
			t.Errorf("%s/%s: debug logged = %v", tt.level, tt.format, got)
		}
		if got := strings.HasPrefix(out, "{") || strings.Contains(out, "\n{"); got != tt.wantJSON {
			t.Errorf("%s/%s: JSON = %v: %q", tt.level, tt.format, got, out)
		}
		if !strings.Contains(out, "boom") {
			t.Errorf("%s/%s: error not logged", tt.level, tt.format)
		}
	}
}

// TestRun_usage checks the command line's usage errors: exit 2 and one
// line, without contacting any agent (the address is unroutable anyway).
func TestRun_usage(t *testing.T) {
	t.Setenv("SIDECAR_HTTP_ADDR", "")
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"bogus"}, `unknown command "bogus"`},
		{[]string{"members", "extra"}, `members: unexpected argument "extra"`},
		{[]string{"members", "--nope"}, "members: flag provided but not defined: -nope"},
		{[]string{"status", "--json=maybe"}, "status: invalid boolean value"},
		{[]string{"services", "a", "b"}, `unexpected argument "b"`},
		{[]string{"services", "--tag", "v1"}, "--passing and --tag need a service NAME"},
		{[]string{"register", "--port", "80"}, "--name is required"},
		{[]string{"register", "--name", "web"}, "--port is required"},
		{[]string{"register", "--name", "web", "--port", "99999"}, "--port 99999 is outside"},
		{[]string{"register", "--name", "web", "--port", "x"}, "invalid value"},
		{[]string{"register", "--name", "web_1", "--port", "80"}, "must be a DNS label"},
		{[]string{"register", "--name", "web", "--port", "80", "--check-http", "http://x", "--check-tcp", "x:1"}, "at most one of"},
		{[]string{"register", "--name", "web", "--port", "80", "--check-interval", "5s"}, "--check-interval needs --check-http or --check-tcp"},
		{[]string{"register", "--name", "web", "--port", "80", "--check-tcp", "x:1", "--check-interval", "0s"}, "--check-interval must be positive"},
		{[]string{"register", "--name", "web", "--port", "80", "--check-ttl", "-1s"}, "--check-ttl must be positive"},
		{[]string{"register", "--name", "web", "--port", "80", "--meta", "novalue"}, `--meta "novalue": want key=value`},
		{[]string{"deregister"}, "deregister: missing instance ID"},
		{[]string{"deregister", "a", "b"}, `unexpected argument "b"`},
		{[]string{"lock", "job"}, "lock: missing command"},
		{[]string{"lock", "--", "true"}, "lock: missing NAME"},
		{[]string{"lock", "a", "b", "--", "true"}, `unexpected argument "b" (put the command after --)`},
		{[]string{"lock", "job", "--ttl", "-1s", "--", "true"}, "must be positive"},
		{[]string{"elect", "primary", "--", "true"}, "elect: --value is required"},
		{[]string{"elect", "--value", "v", "--", "true"}, "elect: missing NAME"},
		{[]string{"leader"}, "leader: missing election NAME"},
		{[]string{"snapshot"}, "want 'save FILE' or 'restore FILE'"},
		{[]string{"snapshot", "take", "f"}, "want 'save FILE' or 'restore FILE'"},
		{[]string{"snapshot", "save"}, "snapshot: missing FILE"},
		{[]string{"keygen", "now"}, `unexpected argument "now"`},
		{[]string{"version", "--short"}, "flag provided but not defined"},
		{[]string{"members", "--http-addr", "no port"}, "--http-addr:"},
		{[]string{"status", "--http-addr", "ftp://x:1"}, "scheme must be http or https"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tt.args, strings.NewReader(""), &stdout, &stderr)
			if code != exitUsage {
				t.Errorf("exit code %d, want 2 (stderr %q)", code, stderr.String())
			}
			assertOneErrorLine(t, stderr.String(), tt.want)
			if stdout.Len() != 0 {
				t.Errorf("stdout %q, want nothing", stdout.String())
			}
		})
	}
}

func TestRun_noArgs(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), nil, nil, &stdout, &stderr); code != exitUsage {
		t.Errorf("exit code %d, want 2", code)
	}
	if !strings.Contains(stderr.String(), "Usage: sidecar") {
		t.Errorf("stderr %q lacks usage", stderr.String())
	}
}

func TestRun_help(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"help"}, "Commands:"},
		{[]string{"--help"}, "Commands:"},
		{[]string{"-h"}, "Commands:"},
		{[]string{"help", "lock"}, "Usage: sidecar lock NAME"},
		{[]string{"lock", "--help"}, "--timeout DURATION"},
		{[]string{"register", "-h"}, "--check-ttl DURATION"},
		{[]string{"agent", "--help"}, "--bootstrap-expect"},
		{[]string{"services", "--help"}, "--passing"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(context.Background(), tt.args, nil, &stdout, &stderr); code != exitOK {
				t.Errorf("exit code %d, want 0 (stderr %q)", code, stderr.String())
			}
			if !strings.Contains(stdout.String(), tt.want) {
				t.Errorf("stdout %q lacks %q", stdout.String(), tt.want)
			}
			if stderr.Len() != 0 {
				t.Errorf("stderr %q, want nothing", stderr.String())
			}
		})
	}
}

func TestAgentUsage_listsEverySetting(t *testing.T) {
	var buf bytes.Buffer
	agentUsage(&buf)
	for _, st := range settings {
		if !strings.Contains(buf.String(), "--"+st.name) {
			t.Errorf("agent --help lacks --%s", st.name)
		}
	}
	// Every Config field that a flag sets has its flag: a new field without
	// one would be unreachable from the command line.
	if got, want := len(settings), 32; got != want {
		t.Errorf("%d settings, want %d: update this test and README.md", got, want)
	}
}

func Example_keygenLength() {
	var out bytes.Buffer
	run(context.Background(), []string{"keygen"}, nil, &out, &out)
	fmt.Println(len(strings.TrimSpace(out.String())))
	// Output: 44
}

// FuzzParseConfigFile checks that no config file content panics or produces
// an error that is not one clean line.
func FuzzParseConfigFile(f *testing.F) {
	f.Add("c.yaml", []byte(yamlFile))
	f.Add("c.json", []byte(jsonFile))
	f.Add("c.yaml", []byte("services:\n  - &a {name: web, checks: [*a]}\n"))
	f.Add("c.yaml", []byte("a: &a [x, x]\nb: &b [*a, *a]\nservices: [*b, *b]\n"))
	f.Add("c.yml", []byte("elections: [{name: p, value: v}]\njoin: [a, b]\n"))
	f.Add("c.json", []byte(`{"services": [{"name": "web", "checks": [{"exec": ["a", "b"]}]}]}`))
	f.Fuzz(func(t *testing.T, name string, b []byte) {
		if name != "c.json" {
			name = "c.yaml"
		}
		fc, err := parseConfigFile(name, b)
		if err != nil {
			var ce *configError
			if !errors.As(err, &ce) {
				t.Fatalf("error %q is not a config error", err)
			}
			return
		}
		// Whatever parsed must validate without panicking.
		c := defaultConfig()
		c.Name, c.Services, c.Elections = "n", fc.services, fc.elections
		explicit := map[string]source{"name": {kind: "flag"}}
		for _, v := range fc.values {
			if v.st.set(c, v.value) == nil {
				explicit[v.st.name] = source{kind: "file", file: "f", line: v.line}
			}
		}
		if c.derive(explicit) == nil {
			_ = c.validate()
		}
	})
}
