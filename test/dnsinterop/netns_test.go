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

// A recipe that needs a well-known port or a machine-wide file (resolved's
// stub on 127.0.0.53:53 and /etc/systemd, CoreDNS on port 53) runs in a
// network and a mount namespace of the test's own, with a dev agent of its
// own on the recipe's address, 127.0.0.1:7053. The network namespace has lo
// and a veth pair with a documentation address (192.0.2.1/24, RFC 5737)
// that leads nowhere: systemd-resolved asks a global DNS server only while
// some link other than lo has a routable address, as on any real host. In
// the mount namespace /run is a tmpfs (nothing sees the machine's D-Bus or
// /run/systemd), and /etc/systemd, /etc/passwd, /etc/group and
// /etc/resolv.conf are the test's files where it says so.

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
if [ -d "$1/etc-systemd" ]; then
	mount --bind "$1/etc-systemd" /etc/systemd
fi
if [ -e "$1/passwd" ]; then
	mount --bind "$1/passwd" /etc/passwd
	mount --bind "$1/group" /etc/group
fi
touch "$1/ready"
read -r _ || true
`

// netns is a network and mount namespace of the test's, held by a shell
// that waits on a pipe.
type netns struct {
	pid int
}

// command returns a command that runs in the namespaces.
func (n *netns) command(args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--target", strconv.Itoa(n.pid), "--net", "--mount", "--"}, args...)...)
}

func (n *netns) output(t *testing.T, args ...string) string {
	t.Helper()
	out, err := n.command(args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v in the namespace: %v\n%s", args, err, out)
	}
	return string(out)
}

// startNetns sets up the namespaces, with dir's files as nsSetup says.
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

// startAgent runs a dev agent in the namespaces on 127.0.0.1:7053 with
// the usual 40 instances of web, from a config file: its HTTP API is in
// the namespace.
func (n *netns) startAgent(t *testing.T, dir, bin string) *proc {
	svcs := make([]api.ServiceRegistration, instances)
	for i := range svcs {
		svcs[i] = api.ServiceRegistration{ID: fmt.Sprintf("web-%d", i), Name: "web",
			Address: fmt.Sprintf("127.0.1.%d", i+1), Port: 8000 + i}
	}
	b, err := json.Marshal(map[string]any{"services": svcs})
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "agent.json")
	if err := os.WriteFile(conf, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return startCmd(t, dir, "agent-"+filepath.Base(dir), n.command(bin, "agent", "--dev", "--name", "netns",
		"--bind-addr", "127.0.0.1:7301", "--raft-addr", "127.0.0.1:7302",
		"--http-addr", "127.0.0.1:7300", "--dns-addr", "127.0.0.1:7053", "--config-file", conf))
}

// getentAhosts runs glibc's getent ahosts in the namespaces, with
// /etc/resolv.conf bind-mounted from resolv (a path in the namespaces),
// and returns the addresses it printed.
func (n *netns) getentAhosts(t *testing.T, resolv, name string) map[string]bool {
	t.Helper()
	n.output(t, "mount", "--bind", resolv, "/etc/resolv.conf")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", "--target", strconv.Itoa(n.pid), "--net", "--mount", "--",
		"getent", "ahosts", name)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("getent ahosts %s: %v\n%s", name, err, out)
	}
	addrs := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 0 {
			addrs[f[0]] = true
		}
	}
	if len(addrs) != instances {
		t.Fatalf("getent ahosts %s: %d addresses, want %d:\n%s", name, len(addrs), instances, out)
	}
	return addrs
}

// digSRV polls dig in the namespaces for the SRV records of web at the
// server addr (dig retries a truncated answer over TCP) until it has all
// of them.
func (n *netns) digSRV(t *testing.T, server, port string, alive ...*proc) time.Duration {
	t.Helper()
	return waitFor(t, "every SRV record of web through "+server, 20*time.Second, func() (bool, string) {
		for _, p := range alive {
			if p.exited() {
				t.Fatalf("%s exited", p.name)
			}
		}
		out, err := n.command("dig", "@"+server, "-p", port, "+time=2", "+tries=1", "+short",
			"SRV", "_web._tcp.service.sidecar").CombinedOutput()
		return err == nil && len(strings.Fields(string(out))) == 4*instances,
			fmt.Sprintf("%d records, %v", len(strings.Fields(string(out)))/4, err)
	})
}

// cacheDir is where downloads and builds that outlive a run are kept:
// ~/.cache/sidecar-dnsinterop, or under the temporary directory if there
// is no home.
func cacheDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "sidecar-dnsinterop")
	}
	return filepath.Join(os.TempDir(), "sidecar-dnsinterop")
}
