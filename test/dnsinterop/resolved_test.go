package dnsinterop

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// systemd-resolved is tested without installing Debian's package, which
// would take over the machine's /etc/resolv.conf: the test downloads the
// package (and the libsystemd-shared it is built against) with
// `apt-get download` once (kept in ~/.cache/sidecar-dnsinterop), unpacks
// them into its temporary directory, and runs the daemon in namespaces of
// its own (netns_test.go), where:
//
//   - /etc/systemd is the test's directory: resolved.conf (LLMNR and
//     multicast DNS off, so that nothing but the agent is asked) and the
//     recipe as /etc/systemd/resolved.conf.d/sidecar.conf;
//   - /run is a tmpfs: resolved writes /run/systemd/resolve there, and
//     sees no D-Bus socket (it waits for one, and answers DNS without it);
//   - /etc/passwd and /etc/group have the systemd-resolve user it changes
//     to when started as root, if the machine has none;
//   - /etc/resolv.conf is the stub-resolv.conf resolved writes, as Debian's
//     package links it, for glibc.

// resolvedPackages are the Debian packages unpacked for systemd-resolved.
var resolvedPackages = []string{"systemd-resolved", "libsystemd-shared"}

// unpackResolved unpacks resolvedPackages into dir/pkg, downloaded once
// into cacheDir, and returns the daemon's path and its
// library directory.
func unpackResolved(t *testing.T, dir string) (bin, libDir string) {
	// Only whole downloads are renamed into the cache, under the list
	// of packages.
	debs := filepath.Join(cacheDir(), "debs-"+strings.Join(resolvedPackages, "+"))
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
		// If another run put them there meanwhile, this run uses its
		// own.
		if err := os.MkdirAll(filepath.Dir(debs), 0o755); err == nil && os.Rename(tmp, debs) == nil {
			files, _ = filepath.Glob(filepath.Join(debs, "*.deb"))
		}
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

	ns := startNetns(t, nsDir)
	ag := ns.startAgent(t, nsDir, sidecarBin)
	ns.digSRV(t, "127.0.0.1", "7053", ag)
	cmd := ns.command(bin)
	// As systemd would start it, less the notification and watchdog
	// sockets it does not need.
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LD_LIBRARY_PATH=" + libDir, "SYSTEMD_LOG_LEVEL=debug"}
	rs := startCmd(t, nsDir, "systemd-resolved", cmd)

	took := ns.digSRV(t, "127.0.0.53", "53", ag, rs)
	t.Logf("dig SRV _web._tcp.service.sidecar @127.0.0.53: %d of %d records, %v after resolved started",
		instances, instances, took.Round(10*time.Millisecond))

	// glibc, with /etc/resolv.conf the stub-resolv.conf resolved wrote.
	const stub = "/run/systemd/resolve/stub-resolv.conf"
	if out := ns.output(t, "cat", stub); !strings.Contains(out, "nameserver 127.0.0.53") {
		t.Fatalf("%s:\n%s", stub, out)
	}
	addrs := ns.getentAhosts(t, stub, "web.service.sidecar")
	t.Logf("glibc getent ahosts through systemd-resolved's stub: %d of %d addresses; %v in all",
		len(addrs), instances, time.Since(start).Round(10*time.Millisecond))
}
