package deploy

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	unitPath     = "systemd/sidecar.service"
	sysusersPath = "systemd/sidecar.sysusers"
	serverEnv    = "systemd/server.env"
	clientEnv    = "systemd/client.env"
)

// systemdAnalyze finds systemd-analyze, installing Debian's systemd package
// when it is missing and apt-get can (as root). It skips the test, saying
// why, only when that is impossible.
func systemdAnalyze(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("systemd-analyze"); err == nil {
		return p
	}
	var why string
	if _, err := exec.LookPath("apt-get"); err != nil {
		why = "apt-get not found"
	} else if os.Geteuid() != 0 {
		why = "not root, cannot apt-get install systemd"
	} else {
		t.Log("systemd-analyze missing: apt-get install systemd")
		install := func() ([]byte, error) {
			cmd := exec.Command("apt-get", "install", "-y", "--no-install-recommends", "systemd")
			cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
			return cmd.CombinedOutput()
		}
		out, err := install()
		if err != nil {
			if upd, uerr := exec.Command("apt-get", "update").CombinedOutput(); uerr != nil {
				out = append(out, upd...)
			} else {
				out, err = install()
			}
		}
		if p, lerr := exec.LookPath("systemd-analyze"); lerr == nil {
			return p
		}
		why = fmt.Sprintf("apt-get install systemd failed: %v\n%s", err, lastLines(out, 5))
	}
	t.Skipf("SKIP: systemd-analyze is not installed and could not be installed (%s); the unit is NOT verified", why)
	return ""
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// unitRoot lays out a root directory for systemd-analyze --root: the
// host's system units (sysinit.target and the like), the unit installed
// unmodified where the README installs it, and the binary at the unit's
// ExecStart path, so the very file in the repository is verified.
func unitRoot(t *testing.T, exec string) string {
	t.Helper()
	root := t.TempDir()
	var sysdir string
	for _, d := range []string{"/usr/lib/systemd/system", "/lib/systemd/system"} {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			sysdir = d
			break
		}
	}
	if sysdir == "" {
		t.Fatal("no /usr/lib/systemd/system: is systemd installed?")
	}
	copyTree(t, sysdir, filepath.Join(root, "usr/lib/systemd/system"))
	copyFile(t, unitPath, filepath.Join(root, "etc/systemd/system/sidecar.service"), 0o644)
	copyFile(t, sidecarBin, filepath.Join(root, exec), 0o755)
	return root
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}

// copyTree copies regular files and symbolic links (as links).
func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.Walk(from, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		switch {
		case fi.IsDir():
			return os.MkdirAll(dst, 0o755)
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, dst)
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(dst, b, 0o644)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSystemdUnit_verify runs systemd-analyze verify on the unit, which
// must print nothing (verify exits 0 on unknown keys and bad values, only
// warning about them), and checks its offline security exposure.
func TestSystemdUnit_verify(t *testing.T) {
	analyze := systemdAnalyze(t)
	u := parseUnit(t, unitPath)
	execStart := strings.Fields(u.one(t, "Service", "ExecStart"))[0]
	root := unitRoot(t, execStart)

	out, err := exec.Command(analyze, "verify", "--root="+root, "/etc/systemd/system/sidecar.service").CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify %s: %v\n%s", unitPath, err, out)
	}
	ver, _ := exec.Command(analyze, "--version").Output()
	t.Logf("systemd-analyze verify: clean (%s)", strings.SplitN(string(ver), "\n", 2)[0])

	// Offline security analysis (systemd >= 250): the exposure must stay in
	// the "OK" band (below 2.0 on systemd's 0-10 scale).
	out, err = exec.Command(analyze, "security", "--offline=yes", "--threshold=20", "--root="+root,
		"/etc/systemd/system/sidecar.service").CombinedOutput()
	summary := lastLines(out, 1)
	if strings.Contains(string(out), "unrecognized option") {
		t.Logf("systemd-analyze security --offline not supported by this systemd: not checked")
		return
	}
	if err != nil {
		t.Fatalf("systemd-analyze security: %v (threshold 2.0)\n%s", err, out)
	}
	t.Logf("systemd-analyze security: %s", summary)
}

// TestSystemdUnit_directives checks what the unit promises operators.
func TestSystemdUnit_directives(t *testing.T) {
	u := parseUnit(t, unitPath)
	for key, want := range map[string]string{
		"Type":            "notify",
		"Restart":         "on-failure",
		"LimitNOFILE":     "65536",
		"EnvironmentFile": "-/etc/sidecar/sidecar.env",
		"StateDirectory":  "sidecar",
		"KillSignal":      "SIGTERM",
	} {
		if got := u.one(t, "Service", key); got != want {
			t.Errorf("[Service] %s=%s, want %s", key, got, want)
		}
	}
	user := u.one(t, "Service", "User")
	if user == "" || user == "root" || user == "0" {
		t.Errorf("User=%q: want a dedicated user", user)
	}
	if g := u.one(t, "Service", "Group"); g != user {
		t.Errorf("Group=%s, want %s", g, user)
	}
	if slices.Contains(u["Service"]["DynamicUser"], "yes") {
		t.Errorf("DynamicUser=yes: the unit runs as the static user %s", user)
	}
	// The sysusers.d file creates that user, home in the state directory.
	b, err := os.ReadFile(sysusersPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "\nu "+user+" - ") || !strings.Contains(string(b), " /var/lib/sidecar\n") {
		t.Errorf("%s does not create user %s with home /var/lib/sidecar:\n%s", sysusersPath, user, b)
	}
	if got := u.one(t, "Service", "ExecStart"); got != "/usr/local/bin/sidecar agent" {
		t.Errorf("ExecStart=%s", got)
	}
	// The data directory defaults to the state directory, and the env file
	// is read after the default so that it wins.
	env := u["Service"]["Environment"]
	if !slices.Contains(env, "SIDECAR_DATA_DIR=%S/sidecar") {
		t.Errorf("Environment=%q lacks SIDECAR_DATA_DIR=%%S/sidecar", env)
	}
	if got := u.one(t, "Service", "WorkingDirectory"); got != "%S/sidecar" {
		t.Errorf("WorkingDirectory=%s, want %%S/sidecar", got)
	}
	if got := u.one(t, "Install", "WantedBy"); got != "multi-user.target" {
		t.Errorf("WantedBy=%s", got)
	}
}

// TestEnvFiles_onlyAgentSettings: every variable of the example env files
// is an agent flag's SIDECAR_ name, set once.
func TestEnvFiles_onlyAgentSettings(t *testing.T) {
	names := agentEnvNames(t)
	for _, path := range []string{serverEnv, clientEnv} {
		seen := map[string]bool{}
		for _, v := range parseEnvFile(t, path) {
			if _, ok := names[v.key]; !ok {
				t.Errorf("%s:%d: %s is not an agent setting (sidecar agent --help)", path, v.line, v.key)
			}
			if seen[v.key] {
				t.Errorf("%s:%d: %s set twice", path, v.line, v.key)
			}
			seen[v.key] = true
		}
	}
	srv := envMap(parseEnvFile(t, serverEnv))
	if srv["SIDECAR_SERVER"] != "true" || srv["SIDECAR_BOOTSTRAP_EXPECT"] != "3" || srv["SIDECAR_DATA_DIR"] != "/var/lib/sidecar" {
		t.Errorf("%s: want SERVER=true, BOOTSTRAP_EXPECT=3, DATA_DIR=/var/lib/sidecar (the unit's StateDirectory): %v", serverEnv, srv)
	}
	if cl := envMap(parseEnvFile(t, clientEnv)); cl["SIDECAR_SERVER"] != "" || cl["SIDECAR_BOOTSTRAP_EXPECT"] != "" {
		t.Errorf("%s must not make a server: %v", clientEnv, cl)
	}
}

func envMap(vars []envVar) map[string]string {
	m := map[string]string{}
	for _, v := range vars {
		m[v.key] = v.value
	}
	return m
}

// notified is a process started the way systemd starts the unit.
type notified struct {
	name, url string
	gossip    string
	cmd       *exec.Cmd
	out       *syncBuffer
	done      chan struct{}
	ready     chan error // the /readyz answer at the moment READY=1 came
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startFromEnvFile starts ExecStart of the unit with nothing in its
// environment but the variables of the env file at path, whose values for
// the keys in adjust are replaced (free loopback ports, a temporary data
// directory, distinct names), plus NOTIFY_SOCKET, which systemd adds for
// Type=notify. Every adjusted key must be in the file.
func startFromEnvFile(t *testing.T, name, path string, adjust map[string]string) *notified {
	t.Helper()
	vars := parseEnvFile(t, path)
	file := envMap(vars)
	for k := range adjust {
		if _, ok := file[k]; !ok {
			t.Fatalf("%s does not set %s: the test only adjusts the file's own variables", path, k)
		}
	}
	u := parseUnit(t, unitPath)
	var env []string
	for _, v := range vars {
		val := v.value
		if a, ok := adjust[v.key]; ok {
			val = a
		}
		env = append(env, v.key+"="+val)
	}

	sockDir, err := os.MkdirTemp("", "sdnotify") // unix socket paths are short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sockPath := filepath.Join(sockDir, "notify")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	env = append(env, "NOTIFY_SOCKET="+sockPath)

	args := strings.Fields(u.one(t, "Service", "ExecStart"))[1:]
	n := &notified{name: name, url: "http://" + adjust["SIDECAR_HTTP_ADDR"], gossip: adjust["SIDECAR_BIND_ADDR"],
		out: &syncBuffer{}, done: make(chan struct{}), ready: make(chan error, 1)}
	n.cmd = exec.Command(sidecarBin, args...)
	n.cmd.Env = env
	n.cmd.Dir = adjust["SIDECAR_DATA_DIR"]
	if n.cmd.Dir == "" {
		n.cmd.Dir = t.TempDir()
	}
	n.cmd.Stdout, n.cmd.Stderr = n.out, n.out
	if err := n.cmd.Start(); err != nil {
		sock.Close()
		t.Fatal(err)
	}
	t.Logf("%s: %s %s with %s", name, sidecarBin, strings.Join(args, " "), strings.Join(env, " "))
	go func() { n.cmd.Wait(); close(n.done) }()
	go func() {
		defer sock.Close()
		buf := make([]byte, 4096)
		for {
			k, _, err := sock.ReadFromUnix(buf)
			if err != nil {
				return
			}
			for _, msg := range strings.Split(string(buf[:k]), "\n") {
				if msg == "READY=1" {
					n.ready <- readyz(n.url)
					return
				}
			}
		}
	}()
	t.Cleanup(func() {
		n.cmd.Process.Signal(syscall.SIGKILL)
		<-n.done
		sock.Close()
		if t.Failed() {
			t.Logf("output of %s:\n%s", name, n.out.String())
		}
	})
	return n
}

func readyz(url string) error {
	hc := &http.Client{Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(url + "/readyz")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET /readyz: %d %s", resp.StatusCode, bytes.TrimSpace(b))
	}
	return nil
}

// TestEnvFiles_clusterFromExampleEnv starts three servers with server.env's
// variables and a client with client.env's, as the unit would (only the
// file's variables; addresses, names and data directories adjusted to free
// loopback ports and temporary directories), and sees each tell systemd
// READY=1 exactly when it serves: /readyz answers 200 at that moment. Then
// SIGTERM, what `systemctl stop` sends, ends the client and a server with
// exit code 0.
func TestEnvFiles_clusterFromExampleEnv(t *testing.T) {
	type addrs struct{ gossip, raft, http, dns string }
	var srv []addrs
	for range 3 {
		srv = append(srv, addrs{freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)})
	}
	var nodes []*notified
	for i, a := range srv {
		var join []string
		for j, o := range srv {
			if j != i {
				join = append(join, o.gossip)
			}
		}
		nodes = append(nodes, startFromEnvFile(t, fmt.Sprintf("server-%d", i+1), serverEnv, map[string]string{
			"SIDECAR_NAME":           fmt.Sprintf("server-%d", i+1),
			"SIDECAR_JOIN":           strings.Join(join, ","),
			"SIDECAR_BIND_ADDR":      a.gossip,
			"SIDECAR_ADVERTISE_ADDR": "127.0.0.1",
			"SIDECAR_RAFT_ADDR":      a.raft,
			"SIDECAR_HTTP_ADDR":      a.http,
			"SIDECAR_DNS_ADDR":       a.dns,
			"SIDECAR_DATA_DIR":       t.TempDir(),
		}))
	}
	client := startFromEnvFile(t, "client", clientEnv, map[string]string{
		"SIDECAR_NAME":           "client",
		"SIDECAR_JOIN":           srv[0].gossip + "," + srv[1].gossip + "," + srv[2].gossip,
		"SIDECAR_BIND_ADDR":      freeAddr(t),
		"SIDECAR_ADVERTISE_ADDR": "127.0.0.1",
		"SIDECAR_HTTP_ADDR":      freeAddr(t),
		"SIDECAR_DNS_ADDR":       freeAddr(t),
	})
	nodes = append(nodes, client)

	deadline := time.After(60 * time.Second)
	for _, n := range nodes {
		select {
		case err := <-n.ready:
			if err != nil {
				t.Fatalf("%s sent READY=1 before it served: %v", n.name, err)
			}
			t.Logf("%s: READY=1, /readyz 200", n.name)
		case <-n.done:
			t.Fatalf("%s exited before READY=1: %v", n.name, n.cmd.ProcessState)
		case <-deadline:
			t.Fatalf("%s sent no READY=1 within 60s", n.name)
		}
	}

	// systemctl stop: SIGTERM, exit 0 within TimeoutStopSec (30s).
	for _, n := range []*notified{client, nodes[0]} {
		n.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-n.done:
			if code := n.cmd.ProcessState.ExitCode(); code != 0 {
				t.Errorf("%s exited %d after SIGTERM, want 0", n.name, code)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("%s still running 30s after SIGTERM", n.name)
		}
	}
}
