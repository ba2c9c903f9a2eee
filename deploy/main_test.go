package deploy

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// sidecarBin is the agent binary the tests run: $SIDECAR_BIN (`make test`
// sets it to bin/sidecar), else one built by TestMain.
var sidecarBin string

func TestMain(m *testing.M) {
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "test setup:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func run(m *testing.M) (int, error) {
	sidecarBin = os.Getenv("SIDECAR_BIN")
	if sidecarBin == "" {
		dir, err := os.MkdirTemp("", "sidecar-bin")
		if err != nil {
			return 0, err
		}
		defer os.RemoveAll(dir)
		sidecarBin = filepath.Join(dir, "sidecar")
		build := exec.Command("go", "build", "-o", sidecarBin, "../cmd/sidecar")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return 0, fmt.Errorf("go build: %w", err)
		}
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
			return 1, nil
		}
	}
	return code, nil
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func portOf(t testing.TB, hostport string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatalf("%q: %v", hostport, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%q: %v", hostport, err)
	}
	return n
}

// agentFlag is one flag of `sidecar agent --help`.
type agentFlag struct {
	name    string
	value   string // the value placeholder ("IP:PORT", "DURATION", ...); empty for booleans
	envName string // SIDECAR_<NAME>
}

var flagLine = regexp.MustCompile(`^  --([a-z0-9-]+)(?: (\S+))?$`)

// agentFlags lists the agent's flags as its --help prints them, so the
// deployment files are checked against the binary itself.
func agentFlags(t testing.TB) map[string]agentFlag {
	t.Helper()
	out, err := exec.Command(sidecarBin, "agent", "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("sidecar agent --help: %v\n%s", err, out)
	}
	flags := map[string]agentFlag{}
	for _, line := range strings.Split(string(out), "\n") {
		if m := flagLine.FindStringSubmatch(line); m != nil {
			flags[m[1]] = agentFlag{name: m[1], value: m[2],
				envName: "SIDECAR_" + strings.ToUpper(strings.ReplaceAll(m[1], "-", "_"))}
		}
	}
	if len(flags) < 10 || flags["data-dir"].envName != "SIDECAR_DATA_DIR" {
		t.Fatalf("could not read the flags from sidecar agent --help:\n%s", out)
	}
	return flags
}

// agentEnvNames maps every SIDECAR_* name the agent reads to its flag.
func agentEnvNames(t testing.TB) map[string]agentFlag {
	t.Helper()
	m := map[string]agentFlag{}
	for _, f := range agentFlags(t) {
		m[f.envName] = f
	}
	return m
}

// envVar is one assignment of an environment file, in order.
type envVar struct {
	key, value string
	line       int
}

// parseEnvFile reads a systemd EnvironmentFile= (KEY=VALUE lines, # and ;
// comments, optional single or double quotes around the value).
func parseEnvFile(t testing.TB, path string) []envVar {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var vars []envVar
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.TrimSpace(k) == "" {
			t.Fatalf("%s:%d: not KEY=VALUE: %q", path, n, line)
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		vars = append(vars, envVar{key: strings.TrimSpace(k), value: v, line: n})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return vars
}

// unitFile is a parsed systemd unit: section -> key -> values in order.
type unitFile map[string]map[string][]string

func parseUnit(t testing.TB, path string) unitFile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unitFile{}
	section := ""
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: %q", path, n+1, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

// one returns the single value of key in section, failing if there is not
// exactly one.
func (u unitFile) one(t testing.TB, section, key string) string {
	t.Helper()
	v := u[section][key]
	if len(v) != 1 {
		t.Fatalf("[%s] %s: %d values %q, want exactly one", section, key, len(v), v)
	}
	return v[0]
}
