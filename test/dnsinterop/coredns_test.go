package dnsinterop

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// CoreDNS has no Debian package. The test builds it from the Go module
// proxy: the module in ./coredns, CoreDNS v1.15.0 with only the plugins
// the README's server block names (errors, cache, forward). On a
// shared two-core machine with fresh module and build caches, the whole of
// CoreDNS (`go install github.com/coredns/coredns@v1.15.0`: every plugin,
// the cloud providers' SDKs, Kubernetes' client) took 11 min 21 s and
// 2.7 GB of caches; this one 80 to 120 s and 370 MB, once: the binary is
// kept in ~/.cache/sidecar-dnsinterop under a hash of the module's files
// and the Go version. It builds in the background, niced, while the other
// recipes are tested; CoreDNS's own test comes last.

// corednsBuild is the background build of ./coredns.
type corednsBuild struct {
	bin  string
	done chan struct{}
	err  error
	took time.Duration
}

// buildCoreDNS starts building ./coredns unless the cache has the binary.
func buildCoreDNS(t *testing.T, dir string) *corednsBuild {
	b := &corednsBuild{done: make(chan struct{})}
	h := sha256.New()
	for _, f := range []string{"go.mod", "go.sum", "main.go"} {
		data, err := os.ReadFile(filepath.Join("coredns", f))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(h, "%s %d\n", f, len(data))
		h.Write(data)
	}
	fmt.Fprintln(h, runtime.Version())
	b.bin = filepath.Join(cacheDir(), "coredns-"+hex.EncodeToString(h.Sum(nil))[:16])
	if _, err := os.Stat(b.bin); err == nil {
		close(b.done)
		return b
	}
	src, err := filepath.Abs("coredns")
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "coredns.bin")
	logPath := filepath.Join(dir, "coredns-build.log")
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nice", "-n", "10", "go", "build", "-mod=readonly", "-o", tmp, ".")
	cmd.Dir = src
	cmd.Stdout, cmd.Stderr = log, log
	// Its own process group, so that the compilers it runs are stopped
	// with it if the test ends first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	started := time.Now()
	if err := cmd.Start(); err != nil {
		log.Close()
		t.Fatalf("go build ./coredns: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	go func() {
		defer close(b.done)
		err := <-exited
		log.Close()
		b.took = time.Since(started)
		if err != nil {
			out, _ := os.ReadFile(logPath)
			b.err = fmt.Errorf("go build ./coredns: %w\n%s", err, lastLines(out, 40))
			return
		}
		if err := os.MkdirAll(filepath.Dir(b.bin), 0o755); err != nil {
			b.err = err
			return
		}
		b.err = os.Rename(tmp, b.bin)
	}()
	t.Cleanup(func() {
		select {
		case <-b.done:
		default:
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-b.done
		}
	})
	return b
}

// wait returns the binary once built, within the time given.
func (b *corednsBuild) wait(t *testing.T, within time.Duration) string {
	t.Helper()
	select {
	case <-b.done:
	case <-time.After(within):
		t.Fatalf("building CoreDNS: not done within %v", within)
	}
	if b.err != nil {
		t.Fatal(b.err)
	}
	if b.took > 0 {
		t.Logf("built CoreDNS (./coredns) in %v", b.took.Round(100*time.Millisecond))
	} else {
		t.Logf("CoreDNS from the cache: %s", b.bin)
	}
	return b.bin
}

// testCoreDNS: CoreDNS with the README's server block as it is
// (sidecar:53, forward . 127.0.0.1:7053), in namespaces of its own with a
// dev agent on 127.0.0.1:7053: dig gets every SRV record of a 40-instance
// service, and glibc's getent ahosts, with CoreDNS as its nameserver, every
// address.
func testCoreDNS(t *testing.T, dir, recipe, sidecarBin string, build *corednsBuild) {
	bin := build.wait(t, 3*time.Minute)
	start := time.Now()
	nsDir := filepath.Join(dir, "coredns")
	if err := os.MkdirAll(nsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	corefile := filepath.Join(nsDir, "Corefile")
	if err := os.WriteFile(corefile, []byte(recipe), 0o644); err != nil {
		t.Fatal(err)
	}
	resolv := filepath.Join(nsDir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ns := startNetns(t, nsDir)
	ag := ns.startAgent(t, nsDir, sidecarBin)
	// The agent first: CoreDNS's cache keeps a SERVFAIL for 5 s.
	ns.digSRV(t, "127.0.0.1", "7053", ag)
	cd := startCmd(t, nsDir, "coredns", ns.command(bin, "-conf", corefile))
	took := ns.digSRV(t, "127.0.0.1", "53", ag, cd)
	t.Logf("dig SRV _web._tcp.service.sidecar through CoreDNS: %d of %d records, %v after it started",
		instances, instances, took.Round(10*time.Millisecond))
	addrs := ns.getentAhosts(t, resolv, "web.service.sidecar")
	t.Logf("glibc getent ahosts through CoreDNS: %d of %d addresses; %v in all",
		len(addrs), instances, time.Since(start).Round(10*time.Millisecond))
}
