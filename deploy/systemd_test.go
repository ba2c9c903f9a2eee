package deploy

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
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
// unmodified where the README installs it, the binary at the unit's
// ExecStart path and the host's own programs at the other Exec*= paths
// (ExecReload's kill), so the very file in the repository is verified.
func unitRoot(t *testing.T, exec string, others ...string) string {
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
	for _, p := range others {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("the unit runs %s, which this machine lacks: %v", p, err)
		}
		copyFile(t, p, filepath.Join(root, p), 0o755)
	}
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
	execReload := strings.Fields(u.one(t, "Service", "ExecReload"))[0]
	root := unitRoot(t, execStart, execReload)

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
	// systemctl reload: SIGHUP, which rereads the TLS files in place (a
	// LoadCredential= copy would never see a rotated certificate).
	if got := u.one(t, "Service", "ExecReload"); got != "/bin/kill -HUP $MAINPID" {
		t.Errorf("ExecReload=%s, want /bin/kill -HUP $MAINPID", got)
	}
	if lc := u["Service"]["LoadCredential"]; len(lc) > 0 {
		t.Errorf("LoadCredential=%q: the TLS files are read in place so that SIGHUP sees rotated ones", lc)
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
	for _, path := range []string{serverEnv, clientEnv} {
		if p := envMap(parseEnvFile(t, path))["SIDECAR_ACL_DEFAULT_POLICY"]; p != "deny" {
			t.Errorf("%s: SIDECAR_ACL_DEFAULT_POLICY=%q, want deny (README, ACL tokens)", path, p)
		}
	}
}

// TestEnvFiles_tls: both env files turn TLS on with files in
// /etc/sidecar/tls and carry SIDECAR_ENCRYPT (to fill in), and say how to
// make the files: the CA, then this node's certificate of the right kind.
func TestEnvFiles_tls(t *testing.T) {
	for path, kind := range map[string]string{serverEnv: "--server", clientEnv: "--client"} {
		env := envMap(parseEnvFile(t, path))
		for _, k := range []string{"SIDECAR_TLS_CA_FILE", "SIDECAR_TLS_CERT_FILE", "SIDECAR_TLS_KEY_FILE"} {
			if v := env[k]; !strings.HasPrefix(v, "/etc/sidecar/tls/") || !strings.HasSuffix(v, ".pem") {
				t.Errorf("%s: %s=%q, want a .pem file in /etc/sidecar/tls/", path, k, v)
			}
		}
		if _, ok := env["SIDECAR_ENCRYPT"]; !ok {
			t.Errorf("%s: no SIDECAR_ENCRYPT line: TLS needs a gossip key", path)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, cmd := range []string{"sidecar tls ca create", "sidecar tls cert create " + kind + " --node NAME", "sidecar keygen", "systemctl reload sidecar"} {
			if !strings.Contains(string(b), cmd) {
				t.Errorf("%s does not tell %q", path, cmd)
			}
		}
	}
}

// tlsFiles makes, with the sidecar CLI as the env files tell, a CA in dir
// and a certificate for each node ("--server" or "--client"), and returns
// a gossip key from `sidecar keygen`.
func tlsFiles(t *testing.T, dir string, nodes map[string]string) (key string) {
	t.Helper()
	cli := func(args ...string) string {
		out, err := exec.Command(sidecarBin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("sidecar %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	cli("tls", "ca", "create", "--dir", dir)
	for node, kind := range nodes {
		cli("tls", "cert", "create", kind, "--node", node, "--dir", dir)
	}
	return cli("keygen")
}

// tlsAdjust points an env file's TLS settings at node's files in dir.
func tlsAdjust(adjust map[string]string, dir, node, key string) map[string]string {
	adjust["SIDECAR_TLS_CA_FILE"] = filepath.Join(dir, "sidecar-ca.pem")
	adjust["SIDECAR_TLS_CERT_FILE"] = filepath.Join(dir, node+".pem")
	adjust["SIDECAR_TLS_KEY_FILE"] = filepath.Join(dir, node+"-key.pem")
	adjust["SIDECAR_ENCRYPT"] = key
	return adjust
}

// TestEnvFiles_refuseWithoutGossipKey: server.env with its TLS files in
// place but SIDECAR_ENCRYPT left empty, as shipped, does not start: exit 2
// (which the unit does not restart), saying how to make a key.
func TestEnvFiles_refuseWithoutGossipKey(t *testing.T) {
	dir := t.TempDir()
	tlsFiles(t, dir, map[string]string{"server-1": "--server"})
	adjust := tlsAdjust(map[string]string{
		"SIDECAR_NAME":      "server-1",
		"SIDECAR_BIND_ADDR": freeAddr(t), "SIDECAR_RAFT_ADDR": freeAddr(t),
		"SIDECAR_HTTP_ADDR": freeAddr(t), "SIDECAR_DNS_ADDR": freeAddr(t),
		"SIDECAR_DATA_DIR": t.TempDir(),
	}, dir, "server-1", "")
	n := startFromEnvFile(t, "server-1", serverEnv, adjust)
	select {
	case <-n.done:
	case <-time.After(20 * time.Second):
		t.Fatal("the agent started without a gossip key")
	}
	if code := n.cmd.ProcessState.ExitCode(); code != 2 || !strings.Contains(n.out.String(), "sidecar keygen") {
		t.Fatalf("exit %d, want 2 and a message naming 'sidecar keygen':\n%s", code, n.out.String())
	}
	if u := parseUnit(t, unitPath); !slices.Contains(strings.Fields(u.one(t, "Service", "RestartPreventExitStatus")), "2") {
		t.Errorf("the unit would restart exit 2 in a loop")
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
	shown := make([]string, len(env))
	for i, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); k == "SIDECAR_ENCRYPT" && v != "" {
			kv = k + "=(secret)" // keys stay out of logs, even test ones
		}
		shown[i] = kv
	}
	t.Logf("%s: %s %s with %s", name, sidecarBin, strings.Join(args, " "), strings.Join(shown, " "))
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
// file's variables; addresses, names, data directories and the TLS files
// and gossip key, made with the CLI as the files tell, adjusted to free
// loopback ports and temporary directories), and sees each tell systemd
// READY=1 exactly when it serves: /readyz answers 200 at that moment. A
// server's certificate is rotated with SIGHUP (`systemctl reload`). Then
// SIGTERM, what `systemctl stop` sends, ends the client and a server with
// exit code 0.
func TestEnvFiles_clusterFromExampleEnv(t *testing.T) {
	type addrs struct{ gossip, raft, http, dns string }
	var srv []addrs
	for range 3 {
		srv = append(srv, addrs{freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)})
	}
	// The TLS files and the gossip key, made as the env files tell.
	tlsDir := t.TempDir()
	key := tlsFiles(t, tlsDir, map[string]string{"server-1": "--server", "server-2": "--server", "server-3": "--server", "client": "--client"})
	var nodes []*notified
	for i, a := range srv {
		var join []string
		for j, o := range srv {
			if j != i {
				join = append(join, o.gossip)
			}
		}
		name := fmt.Sprintf("server-%d", i+1)
		nodes = append(nodes, startFromEnvFile(t, name, serverEnv, tlsAdjust(map[string]string{
			"SIDECAR_NAME":           name,
			"SIDECAR_JOIN":           strings.Join(join, ","),
			"SIDECAR_BIND_ADDR":      a.gossip,
			"SIDECAR_ADVERTISE_ADDR": "127.0.0.1",
			"SIDECAR_RAFT_ADDR":      a.raft,
			"SIDECAR_HTTP_ADDR":      a.http,
			"SIDECAR_DNS_ADDR":       a.dns,
			"SIDECAR_DATA_DIR":       t.TempDir(),
		}, tlsDir, name, key)))
	}
	client := startFromEnvFile(t, "client", clientEnv, tlsAdjust(map[string]string{
		"SIDECAR_NAME":           "client",
		"SIDECAR_JOIN":           srv[0].gossip + "," + srv[1].gossip + "," + srv[2].gossip,
		"SIDECAR_BIND_ADDR":      freeAddr(t),
		"SIDECAR_ADVERTISE_ADDR": "127.0.0.1",
		"SIDECAR_HTTP_ADDR":      freeAddr(t),
		"SIDECAR_DNS_ADDR":       freeAddr(t),
	}, tlsDir, "client", key))
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

	// Rotation as deploy/README.md tells it: a new certificate for
	// server-2 replaces the files, then `systemctl reload` (SIGHUP). The
	// agent loads the new one (another serial) and the cluster serves on.
	srv2 := nodes[1]
	newDir := t.TempDir()
	out, err := exec.Command(sidecarBin, "tls", "cert", "create", "--server", "--node", "server-2", "--dir", newDir,
		"--ca", filepath.Join(tlsDir, "sidecar-ca.pem"), "--ca-key", filepath.Join(tlsDir, "sidecar-ca-key.pem")).CombinedOutput()
	if err != nil {
		t.Fatalf("sidecar tls cert create: %v\n%s", err, out)
	}
	pemBytes, err := os.ReadFile(filepath.Join(newDir, "server-2.pem"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		t.Fatal("server-2.pem: no PEM block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	loaded := fmt.Sprintf(`msg="TLS certificate loaded" component=tls node=server-2 role=server serial=%x `, cert.SerialNumber)
	if strings.Contains(srv2.out.String(), loaded) {
		t.Fatalf("server-2 loaded the new certificate before it was installed")
	}
	for _, f := range []string{"server-2.pem", "server-2-key.pem"} {
		if err := os.Rename(filepath.Join(newDir, f), filepath.Join(tlsDir, f)); err != nil {
			t.Fatal(err)
		}
	}
	srv2.cmd.Process.Signal(syscall.SIGHUP)
	rotated := time.Now().Add(20 * time.Second)
	for !strings.Contains(srv2.out.String(), loaded) {
		if time.Now().After(rotated) {
			t.Fatalf("server-2 did not log %q within 20s of SIGHUP:\n%s", loaded, lastLines([]byte(srv2.out.String()), 10))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("server-2 after SIGHUP: %s", loaded)
	for _, n := range nodes {
		if err := readyz(n.url); err != nil {
			t.Errorf("%s after server-2's rotation: %v", n.name, err)
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

// TestEnvFiles_tlsFilesReadableByServiceUser lays out /etc/sidecar under a
// temporary root with the owners and modes deploy/README.md installs
// (directories 0750 group sidecar, the key 0640 group sidecar, the rest
// 0644 root) and starts the agent as another user in that group, as the
// unit does: it loads its certificate and serves. With /etc/sidecar
// root-only (0750 root:root), the agent cannot reach its files and exits 2
// saying so. Needs root (to own files and switch users); skipped otherwise.
func TestEnvFiles_tlsFilesReadableByServiceUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("not root: cannot lay out root-owned files and run the agent as the service user")
	}
	const uid, gid = 65532, 65532 // a user that is not root, in the "sidecar" group
	base := t.TempDir()
	// The test's own temporary directories are 0700: let the user through.
	for d := base; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	made := t.TempDir()
	key := tlsFiles(t, made, map[string]string{"server-1": "--server"})
	// The binary where the user may run it (the unit's /usr/local/bin).
	bin := filepath.Join(base, "sidecar")
	copyFile(t, sidecarBin, bin, 0o755)
	install := func(from, to string, mode os.FileMode, group int) {
		t.Helper()
		copyFile(t, from, to, mode)
		if err := os.Chown(to, 0, group); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(to, mode); err != nil {
			t.Fatal(err)
		}
	}
	mkdir := func(dir string, group int) {
		t.Helper()
		if err := os.MkdirAll(dir, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, 0, group); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	start := func(t *testing.T, etcGroup int) (*exec.Cmd, *syncBuffer, string, chan struct{}) {
		root, err := os.MkdirTemp(base, "root")
		if err != nil {
			t.Fatal(err)
		}
		os.Chmod(root, 0o755)
		if err := os.Mkdir(filepath.Join(root, "etc"), 0o755); err != nil { // as /etc is
			t.Fatal(err)
		}
		etc := filepath.Join(root, "etc/sidecar")
		mkdir(etc, etcGroup)
		mkdir(filepath.Join(etc, "tls"), gid)
		install(filepath.Join(made, "sidecar-ca.pem"), filepath.Join(etc, "tls/sidecar-ca.pem"), 0o644, 0)
		install(filepath.Join(made, "server-1.pem"), filepath.Join(etc, "tls/agent.pem"), 0o644, 0)
		install(filepath.Join(made, "server-1-key.pem"), filepath.Join(etc, "tls/agent-key.pem"), 0o640, gid)
		data := filepath.Join(root, "data")
		if err := os.Mkdir(data, 0o750); err != nil {
			t.Fatal(err)
		}
		os.Chown(data, uid, gid)

		adjust := map[string]string{
			"SIDECAR_NAME": "server-1", "SIDECAR_BOOTSTRAP_EXPECT": "1", "SIDECAR_JOIN": "",
			"SIDECAR_BIND_ADDR": freeAddr(t), "SIDECAR_ADVERTISE_ADDR": "127.0.0.1", "SIDECAR_RAFT_ADDR": freeAddr(t),
			"SIDECAR_HTTP_ADDR": freeAddr(t), "SIDECAR_DNS_ADDR": freeAddr(t), "SIDECAR_DATA_DIR": data,
			"SIDECAR_ENCRYPT": key,
		}
		var env []string
		for _, v := range parseEnvFile(t, serverEnv) {
			val := v.value
			if a, ok := adjust[v.key]; ok {
				val = a
			}
			if strings.HasPrefix(v.key, "SIDECAR_TLS_") {
				// The file's own paths, under the temporary root.
				val = filepath.Join(root, val)
			}
			env = append(env, v.key+"="+val)
		}
		out := &syncBuffer{}
		cmd := exec.Command(bin, "agent")
		cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = env, data, out, out
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{gid}}}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGKILL)
			<-done
			if t.Failed() {
				t.Logf("agent output:\n%s", out.String())
			}
		})
		return cmd, out, "http://" + adjust["SIDECAR_HTTP_ADDR"], done
	}

	t.Run("as installed", func(t *testing.T) {
		_, out, url, done := start(t, gid)
		deadline := time.Now().Add(30 * time.Second)
		for readyz(url) != nil {
			select {
			case <-done:
				t.Fatalf("the agent, as the service user, exited:\n%s", lastLines([]byte(out.String()), 5))
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("no /readyz 200 within 30s:\n%s", lastLines([]byte(out.String()), 5))
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	t.Run("/etc/sidecar root-only", func(t *testing.T) {
		cmd, out, _, done := start(t, 0)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("the agent started though it cannot reach its TLS files")
		}
		if code := cmd.ProcessState.ExitCode(); code != 2 || !strings.Contains(out.String(), "permission denied") {
			t.Fatalf("exit %d, want 2 saying permission denied:\n%s", code, out.String())
		}
	})
}
