package dnsinterop

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/api"
)

// systemd-resolved is tested without installing Debian's package, which
// would take over the machine's /etc/resolv.conf: the test downloads the
// package (and the libsystemd-shared it is built against) with
// `apt-get download` once (kept in ~/.cache/sidecar-dnsinterop), unpacks
// them into its temporary directory, and runs
// the daemon in network and mount namespaces of its own, with a dev agent
// in the same network namespace on the recipe's own address
// (127.0.0.1:7053). In the mount namespace:
//
//   - /etc/systemd is the test's directory: resolved.conf (LLMNR and
//     multicast DNS off, so that nothing but the agent is asked) and the
//     recipe as /etc/systemd/resolved.conf.d/sidecar.conf;
//   - /run is a tmpfs: resolved writes /run/systemd/resolve there, and
//     sees no D-Bus socket of the machine's (it waits for one, and answers
//     DNS without it);
//   - /etc/passwd and /etc/group have the systemd-resolve user it changes
//     to when started as root, if the machine has none;
//   - /etc/resolv.conf is the stub-resolv.conf resolved writes, as Debian's
//     package links it, for glibc.
//
// The network namespace has lo and a veth pair with a documentation
// address (192.0.2.1/24, RFC 5737) that leads nowhere: resolved sends no
// query to a global DNS server unless some link other than lo has a
// routable address ("network-down" otherwise), as on any real host.

// resolvedPackages are the Debian packages unpacked for systemd-resolved.
var resolvedPackages = []string{"systemd-resolved", "libsystemd-shared"}

// nsSetup prepares the namespaces; $1 is the test's directory for them.
// It runs in them (unshare), and waits on its standard input, which the
// test holds open, so that the namespaces end with the test.
const nsSetup = `set -e
ip link set lo up
ip link add sc0 type veth peer name sc1
ip link set sc1 up
ip link set sc0 up
ip addr add 192.0.2.1/24 dev sc0
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir /run/systemd
mount --bind "$1/etc-systemd" /etc/systemd
if [ -e "$1/passwd" ]; then
	mount --bind "$1/passwd" /etc/passwd
	mount --bind "$1/group" /etc/group
fi
touch "$1/ready"
read -r _ || true
`

// unpackResolved unpacks resolvedPackages into dir/pkg, downloaded once
// into the user's cache directory, and returns the daemon's path and its
// library directory.
func unpackResolved(t *testing.T, dir string) (bin, libDir string) {
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	debs := filepath.Join(cache, "sidecar-dnsinterop", "debs")
	files, _ := filepath.Glob(filepath.Join(debs, "*.deb"))
	if len(files) != len(resolvedPackages) {
		tmp := filepath.Join(dir, "debs")
		if err := os.MkdirAll(tmp, 0o755); err != nil {
			t.Fatal(err)
		}
		download := func() error {
			cmd := exec.Command("apt-get", append([]string{"download", "-q"}, resolvedPackages...)...)
			cmd.Dir = tmp
			out, err := cmd.CombinedOutput()
			if err != nil {
				return fmt.Errorf("apt-get download %v: %w\n%s", resolvedPackages, err, out)
			}
			return nil
		}
		if err := download(); err != nil {
			if out, err := exec.Command("apt-get", "update", "-q").CombinedOutput(); err != nil {
				t.Fatalf("apt-get update: %v\n%s", err, out)
			}
			if err := download(); err != nil {
				t.Fatal(err)
			}
		}
		files, _ = filepath.Glob(filepath.Join(tmp, "*.deb"))
		if len(files) != len(resolvedPackages) {
			t.Fatalf("downloaded %v, want one .deb of each of %v", files, resolvedPackages)
		}
		// Whole downloads only into the cache.
		os.RemoveAll(debs)
		if err := os.MkdirAll(filepath.Dir(debs), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, debs); err != nil {
			t.Fatal(err)
		}
		files, _ = filepath.Glob(filepath.Join(debs, "*.deb"))
	}
	root := filepath.Join(dir, "pkg")
	for _, f := range files {
		if out, err := exec.Command("dpkg-deb", "-x", f, root).CombinedOutput(); err != nil {
			t.Fatalf("dpkg-deb -x %s: %v\n%s", f, err, out)
		}
	}
	bin = filepath.Join(root, "lib/systemd/systemd-resolved")
	libs, _ := filepath.Glob(filepath.Join(root, "usr/lib/*/systemd/libsystemd-shared-*.so"))
	if len(libs) != 1 {
		t.Fatalf("no libsystemd-shared in %s: %v", root, libs)
	}
	return bin, filepath.Dir(libs[0])
}

// netns is a network and mount namespace of the test's, held by a shell
// that waits on a pipe.
type netns struct {
	pid int
}

// run returns a command that runs in the namespaces.
func (n *netns) command(args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--target", strconv.Itoa(n.pid), "--net", "--mount", "--"}, args...)...)
}

func (n *netns) output(t *testing.T, args ...string) string {
	t.Helper()
	cmd := n.command(args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v in the namespace: %v\n%s", args, err, out)
	}
	return string(out)
}

func startNetns(t *testing.T, dir string) *netns {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", nsSetup, "sh", dir)
	cmd.Stdin = r
	p := startCmd(t, dir, "netns", cmd)
	r.Close()
	t.Cleanup(func() { w.Close() })
	waitFor(t, "namespaces set up", 10*time.Second, func() (bool, string) {
		if p.exited() {
			b, _ := os.ReadFile(p.log)
			t.Fatalf("setting up the namespaces failed:\n%s", b)
		}
		_, err := os.Stat(filepath.Join(dir, "ready"))
		return err == nil, fmt.Sprint(err)
	})
	// Never run anything meant for the namespaces in the machine's.
	mine, err1 := os.Readlink("/proc/self/ns/net")
	theirs, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", p.cmd.Process.Pid))
	if err1 != nil || err2 != nil || mine == theirs {
		t.Fatalf("network namespace: ours %s (%v), the holder's %s (%v)", mine, err1, theirs, err2)
	}
	return &netns{pid: p.cmd.Process.Pid}
}

// withResolveUser returns copies of /etc/passwd and /etc/group with a
// systemd-resolve user and group added, or false if the machine has them.
func withResolveUser(t *testing.T, dir string) bool {
	if err := exec.Command("getent", "passwd", "systemd-resolve").Run(); err == nil {
		return false
	}
	used := map[string]bool{}
	for _, f := range []string{"/etc/passwd", "/etc/group"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Split(l, ":"); len(f) > 2 {
				used[f[2]] = true
			}
		}
	}
	id := 990
	for used[strconv.Itoa(id)] {
		id--
	}
	add := map[string]string{
		"passwd": fmt.Sprintf("systemd-resolve:x:%d:%d:systemd Resolver:/:/usr/sbin/nologin\n", id, id),
		"group":  fmt.Sprintf("systemd-resolve:x:%d:\n", id),
	}
	for name, line := range add {
		b, err := os.ReadFile("/etc/" + name)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > 0 && b[len(b)-1] != '\n' {
			b = append(b, '\n')
		}
		if err := os.WriteFile(filepath.Join(dir, name), append(b, line...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return true
}

// testResolved: systemd-resolved configured by the README's drop-in
// forwards *.sidecar to an agent on 127.0.0.1:7053; dig through its stub
// (127.0.0.53) gets every SRV record of a 40-instance service, and glibc's
// getent ahosts, with the stub-resolv.conf resolved writes as
// /etc/resolv.conf, every address.
func testResolved(t *testing.T, dir, recipe, sidecarBin string) {
	start := time.Now()
	nsDir := filepath.Join(dir, "resolved")
	if err := os.MkdirAll(filepath.Join(nsDir, "etc-systemd", "resolved.conf.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	bin, libDir := unpackResolved(t, nsDir)
	t.Logf("downloaded and unpacked %v in %v", resolvedPackages, time.Since(start).Round(10*time.Millisecond))
	files := map[string]string{
		"resolved.conf": "[Resolve]\nLLMNR=no\nMulticastDNS=no\n",
		// The recipe as it is: the agent in the namespace is on 7053.
		"resolved.conf.d/sidecar.conf": recipe,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(nsDir, "etc-systemd", name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if withResolveUser(t, nsDir) {
		t.Log("the machine has no systemd-resolve user: added in the mount namespace's /etc/passwd and /etc/group")
	}

	// The agent, its services from a config file: its HTTP API is in the
	// namespace.
	svcs := make([]api.ServiceRegistration, instances)
	for i := range svcs {
		svcs[i] = api.ServiceRegistration{ID: fmt.Sprintf("web-%d", i), Name: "web",
			Address: fmt.Sprintf("127.0.1.%d", i+1), Port: 8000 + i}
	}
	b, err := json.Marshal(map[string]any{"services": svcs})
	if err != nil {
		t.Fatal(err)
	}
	agentConf := filepath.Join(nsDir, "agent.json")
	if err := os.WriteFile(agentConf, b, 0o644); err != nil {
		t.Fatal(err)
	}

	ns := startNetns(t, nsDir)
	ag := startCmd(t, dir, "agent-netns", ns.command(sidecarBin, "agent", "--dev", "--name", "resolved",
		"--bind-addr", "127.0.0.1:7301", "--raft-addr", "127.0.0.1:7302",
		"--http-addr", "127.0.0.1:7300", "--dns-addr", "127.0.0.1:7053", "--config-file", agentConf))
	cmd := ns.command(bin)
	// As systemd would start it, less the notification and watchdog
	// sockets it does not need.
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LD_LIBRARY_PATH=" + libDir, "SYSTEMD_LOG_LEVEL=debug"}
	rs := startCmd(t, dir, "systemd-resolved", cmd)

	dig := func(args ...string) (string, error) {
		out, err := ns.command(append([]string{"dig", "@127.0.0.53", "+time=2", "+tries=1"}, args...)...).CombinedOutput()
		return string(out), err
	}
	var srv string
	took := waitFor(t, "resolved answers the SRV records of the agent", 20*time.Second, func() (bool, string) {
		if ag.exited() || rs.exited() {
			t.Fatalf("agent exited: %v, systemd-resolved exited: %v", ag.exited(), rs.exited())
		}
		out, err := dig("+short", "SRV", "_web._tcp.service.sidecar")
		srv = out
		return err == nil && len(strings.Fields(out)) == 4*instances, fmt.Sprintf("%d fields, %v", len(strings.Fields(out)), err)
	})
	t.Logf("dig SRV _web._tcp.service.sidecar @127.0.0.53: %d records, %v after the namespaces were up",
		len(strings.Fields(srv))/4, took.Round(10*time.Millisecond))

	// glibc, with /etc/resolv.conf the stub-resolv.conf resolved wrote.
	stub := ns.output(t, "cat", "/run/systemd/resolve/stub-resolv.conf")
	if !strings.Contains(stub, "nameserver 127.0.0.53") {
		t.Fatalf("stub-resolv.conf:\n%s", stub)
	}
	ns.output(t, "mount", "--bind", "/run/systemd/resolve/stub-resolv.conf", "/etc/resolv.conf")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	getent := exec.CommandContext(ctx, "nsenter", "--target", strconv.Itoa(ns.pid), "--net", "--mount", "--",
		"getent", "ahosts", "web.service.sidecar")
	out, err := getent.CombinedOutput()
	if err != nil {
		t.Fatalf("getent ahosts web.service.sidecar: %v\n%s", err, out)
	}
	addrs := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 0 {
			addrs[f[0]] = true
		}
	}
	if len(addrs) != instances {
		t.Fatalf("getent ahosts through systemd-resolved: %d addresses, want %d:\n%s", len(addrs), instances, out)
	}
	t.Logf("glibc getent ahosts through systemd-resolved's stub: %d of %d addresses; %v in all",
		len(addrs), instances, time.Since(start).Round(10*time.Millisecond))
}
