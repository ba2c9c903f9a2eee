// Package dnsinterop runs sidecar's DNS behind the resolvers and proxies
// people put in front of it, from Debian's packages: unbound with strict
// query-name minimisation, dnsmasq with glibc's resolver behind it,
// systemd-resolved (in namespaces of its own: resolved_test.go) with dig
// and glibc behind it, and HAProxy's server-template over SRV records; and
// CoreDNS, built from the Go module proxy (coredns_test.go). The configurations are the
// recipes of README.md ("Using sidecar's DNS from applications"), read from
// it, with only addresses, ports and paths changed.
//
// It needs root (apt-get for missing packages, a mount namespace for a
// resolv.conf of its own) and runs only when SIDECAR_DNS_INTEROP is set:
// `make dns-interop`, part of `make test`.
package dnsinterop

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sidecarhq/sidecar/api"
)

// instances is the size of the service HAProxy and getent must see whole:
// larger than one UDP answer at HAProxy's default payload (about 11 SRV
// records) and at the agent's cap (28).
const instances = 40

// packages maps each program the test runs to the Debian package that
// ships it.
var packages = map[string]string{
	"unbound": "unbound",
	"dnsmasq": "dnsmasq-base",
	"haproxy": "haproxy",
	"dig":     "dnsutils",
	"ip":      "iproute2",
}

func TestInterop(t *testing.T) {
	if os.Getenv("SIDECAR_DNS_INTEROP") == "" {
		t.Skip("set SIDECAR_DNS_INTEROP=1 to run (make dns-interop)")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: apt-get for missing packages, unshare -m and mount for a resolv.conf of its own")
	}
	ensurePackages(t)
	recipes := readRecipes(t, "../../README.md")
	dir := t.TempDir()
	// The longest step on a fresh machine: it goes on while the others run.
	coredns := buildCoreDNS(t, dir)

	ag := startAgent(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range instances {
		reg := api.ServiceRegistration{ID: fmt.Sprintf("web-%d", i), Name: "web",
			Address: fmt.Sprintf("127.0.1.%d", i+1), Port: 8000 + i}
		if _, err := ag.api.Register(ctx, reg); err != nil {
			t.Fatalf("register %s: %v", reg.ID, err)
		}
	}

	// HAProxy first: it resolves in the background while the resolvers
	// are tried, and the 30 s it must hold steady start now.
	hap := startHAProxy(t, dir, recipes["haproxy"], ag.dnsPort)

	t.Run("dig", func(t *testing.T) {
		testDig(t, ag.dnsPort)
	})
	t.Run("unbound strict qname minimisation", func(t *testing.T) {
		testUnbound(t, dir, recipes["unbound"], ag.dnsPort)
	})
	t.Run("dnsmasq and glibc getent", func(t *testing.T) {
		testDnsmasq(t, dir, recipes["dnsmasq"], recipes["resolv.conf"], ag.dnsPort)
	})
	t.Run("systemd-resolved", func(t *testing.T) {
		testResolved(t, dir, recipes["resolved"], ag.bin)
	})
	t.Run("haproxy", func(t *testing.T) {
		testHAProxy(t, hap, ag)
	})
	t.Run("coredns", func(t *testing.T) {
		testCoreDNS(t, dir, recipes["coredns"], ag.bin, coredns)
	})
}

// ensurePackages installs the Debian packages of the programs missing.
func ensurePackages(t *testing.T) {
	var missing []string
	for prog, pkg := range packages {
		if _, err := exec.LookPath(prog); err != nil {
			missing = append(missing, pkg)
		}
	}
	if len(missing) == 0 {
		return
	}
	slices.Sort(missing)
	t.Logf("installing %v", missing)
	install := func() error {
		cmd := exec.Command("apt-get", append([]string{"install", "-y", "-q", "--no-install-recommends"}, missing...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get install %v: %w\n%s", missing, err, out)
		}
		return nil
	}
	if err := install(); err != nil {
		// The package lists may be missing or stale on a fresh machine.
		if out, err := exec.Command("apt-get", "update", "-q").CombinedOutput(); err != nil {
			t.Fatalf("apt-get update: %v\n%s", err, out)
		}
		if err := install(); err != nil {
			t.Fatal(err)
		}
	}
}

// readRecipes returns the code blocks of README.md that follow a
// `<!-- recipe:NAME -->` line, by name, with their comment lines.
func readRecipes(t *testing.T, path string) map[string]string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?s)<!-- recipe:([a-z.]+) -->\n```[a-z]*\n(.*?)```")
	out := map[string]string{}
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		out[m[1]] = m[2]
	}
	for _, name := range []string{"dnsmasq", "resolv.conf", "unbound", "haproxy", "resolved", "coredns"} {
		if out[name] == "" {
			t.Fatalf("README.md has no recipe %q", name)
		}
	}
	return out
}

// atAgent points a recipe written for the default agent address at the
// test's agent.
func atAgent(recipe string, port int) string {
	return strings.ReplaceAll(recipe, "7053", strconv.Itoa(port))
}

// proc is a process the test started; it is stopped when the test ends.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func start(t *testing.T, dir, name string, args ...string) *proc {
	t.Helper()
	return startCmd(t, dir, name, exec.Command(args[0], args[1:]...))
}

// startCmd starts cmd, its output to NAME.log in dir.
func startCmd(t *testing.T, dir, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		// SIGTERM, then SIGKILL: every process is ours, by its pid.
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(3 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("%s output:\n%s", name, lastLines(b, 40))
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, within time.Duration, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	var last string
	for time.Since(start) < within {
		ok, state := cond()
		if ok {
			return time.Since(start)
		}
		last = state
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v (last: %s)", what, within, last)
	return 0
}

// freePort returns a loopback port free over TCP and UDP at the time.
func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		l.Close()
		if err == nil {
			pc.Close()
			return port
		}
	}
	t.Fatal("no port free over TCP and UDP")
	return 0
}

type agent struct {
	api     *api.Client
	dnsPort int
	bin     string // the sidecar binary
}

// startAgent runs `sidecar agent --dev` on free loopback ports.
func startAgent(t *testing.T, dir string) *agent {
	bin := os.Getenv("SIDECAR_BIN")
	if bin == "" {
		bin = filepath.Join(dir, "sidecar")
		out, err := exec.Command("go", "build", "-o", bin, "../../cmd/sidecar").CombinedOutput()
		if err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
	}
	httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	ag := &agent{dnsPort: freePort(t), bin: bin}
	p := start(t, dir, "agent", bin, "agent", "--dev", "--name", "interop",
		"--bind-addr", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--raft-addr", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--http-addr", httpAddr, "--dns-addr", fmt.Sprintf("127.0.0.1:%d", ag.dnsPort))
	c, err := api.NewClient(httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	ag.api = c
	waitFor(t, "agent ready", 30*time.Second, func() (bool, string) {
		if p.exited() {
			t.Fatal("agent exited")
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		err := c.Ready(ctx)
		return err == nil, fmt.Sprint(err)
	})
	return ag
}

// exchange asks a DNS server over TCP, where nothing is cut.
func exchange(t *testing.T, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	resp, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s at %s: %v", name, dns.TypeToString[qtype], addr, err)
	}
	return resp
}

// testDig: what `dig` shows a user: the apex's NS and its address, and
// NOERROR for the empty non-terminal above the RFC 2782 names.
func testDig(t *testing.T, dnsPort int) {
	dig := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("dig", append([]string{"@127.0.0.1", "-p", strconv.Itoa(dnsPort), "+time=2", "+tries=1"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("dig %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out := dig("+short", "NS", "sidecar."); strings.TrimSpace(out) != "ns.sidecar." {
		t.Errorf("dig NS sidecar.: %q, want ns.sidecar.", out)
	}
	if out := dig("+short", "A", "ns.sidecar."); strings.TrimSpace(out) != "127.0.0.1" {
		t.Errorf("dig A ns.sidecar.: %q, want 127.0.0.1", out)
	}
	if out := dig("SRV", "_tcp.service.sidecar."); !strings.Contains(out, "status: NOERROR") || !strings.Contains(out, "IN\tSOA") {
		t.Errorf("dig SRV _tcp.service.sidecar.: want NOERROR with the SOA:\n%s", out)
	}
	// dig over UDP gets a truncated answer and retries over TCP.
	if out := dig("+short", "SRV", "_web._tcp.service.sidecar."); len(strings.Fields(out)) != 4*instances {
		t.Errorf("dig SRV _web._tcp.service.sidecar.: %d records, want %d:\n%s", len(strings.Fields(out))/4, instances, out)
	}
}

// testUnbound: unbound with strict query-name minimisation asks
// service.sidecar., _tcp.service.sidecar. and then the whole name of the
// agent; an NXDOMAIN on the way would stop it.
func testUnbound(t *testing.T, dir, recipe string, dnsPort int) {
	port := freePort(t)
	conf := fmt.Sprintf(`server:
    interface: 127.0.0.1@%d
    do-ip6: no
    chroot: ""
    username: ""
    pidfile: ""
    directory: "%s"
    use-syslog: no
    logfile: ""
    verbosity: 1
    module-config: "iterator"
    qname-minimisation: yes
    qname-minimisation-strict: yes
`, port, dir) + atAgent(recipe, dnsPort)
	path := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("unbound-checkconf", path).CombinedOutput(); err != nil {
		t.Fatalf("unbound-checkconf: %v\n%s\n%s", err, out, conf)
	}
	p := start(t, dir, "unbound", "unbound", "-d", "-c", path)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	var resp *dns.Msg
	waitFor(t, "unbound answers", 10*time.Second, func() (bool, string) {
		if p.exited() {
			t.Fatal("unbound exited")
		}
		c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
		m := new(dns.Msg)
		m.SetQuestion("_web._tcp.service.sidecar.", dns.TypeSRV)
		var err error
		resp, _, err = c.Exchange(m, addr)
		return err == nil, fmt.Sprint(err)
	})
	if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != instances {
		t.Fatalf("_web._tcp.service.sidecar. SRV through unbound: %s with %d records, want NOERROR with %d",
			dns.RcodeToString[resp.Rcode], len(resp.Answer), instances)
	}
	// The names a minimising resolver walks through are there too.
	for _, name := range []string{"service.sidecar.", "_tcp.service.sidecar."} {
		if r := exchange(t, addr, name, dns.TypeA); r.Rcode != dns.RcodeSuccess {
			t.Errorf("%s through unbound: %s", name, dns.RcodeToString[r.Rcode])
		}
	}
	t.Logf("unbound (qname-minimisation-strict) answered %d SRV records of _web._tcp.service.sidecar.", len(resp.Answer))
}

// testDnsmasq: glibc's getent ahosts, with a resolv.conf of its own (a
// mount namespace: the machine's is never touched) pointing at dnsmasq,
// which forwards the domain to the agent, gets every instance. The A
// answer does not fit 512 bytes: glibc retries over TCP through dnsmasq.
func testDnsmasq(t *testing.T, dir, recipe, resolvRecipe string, dnsPort int) {
	// A loopback address of its own, so that port 53 is surely free.
	listen := fmt.Sprintf("127.53.%d.%d", os.Getpid()%250+1, time.Now().Nanosecond()%250+1)
	confPath := filepath.Join(dir, "dnsmasq.conf")
	if err := os.WriteFile(confPath, []byte(atAgent(recipe, dnsPort)), 0o644); err != nil {
		t.Fatal(err)
	}
	p := start(t, dir, "dnsmasq", "dnsmasq", "--keep-in-foreground", "--log-facility=-", "--no-resolv", "--no-hosts",
		"--bind-interfaces", "--listen-address="+listen, "--port=53", "--pid-file=", "--conf-file="+confPath)
	waitFor(t, "dnsmasq answers", 10*time.Second, func() (bool, string) {
		if p.exited() {
			t.Fatal("dnsmasq exited")
		}
		c := &dns.Client{Net: "tcp", Timeout: 2 * time.Second}
		m := new(dns.Msg)
		m.SetQuestion("web.service.sidecar.", dns.TypeA)
		r, _, err := c.Exchange(m, net.JoinHostPort(listen, "53"))
		return err == nil && len(r.Answer) == instances, fmt.Sprint(r, err)
	})

	resolv := filepath.Join(dir, "resolv.conf")
	content := strings.ReplaceAll(resolvRecipe, "127.0.0.1", listen)
	if err := os.WriteFile(resolv, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount --bind "$1" /etc/resolv.conf && exec getent ahosts web.service.sidecar`, "sh", resolv)
	out, err := cmd.CombinedOutput()
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
		t.Fatalf("getent ahosts through dnsmasq: %d addresses, want %d:\n%s", len(addrs), instances, out)
	}
	t.Logf("glibc getent ahosts through dnsmasq: %d of %d addresses", len(addrs), instances)
}

// haproxy is one HAProxy process with two backends over the same service:
// web over the TCP nameserver (the recipe as written), web_udp over UDP at
// HAProxy's defaults.
type haproxy struct {
	p       *proc
	sock    string
	started time.Time
}

func startHAProxy(t *testing.T, dir, recipe string, dnsPort int) *haproxy {
	tcpPart := atAgent(recipe, dnsPort)
	// The same recipe over UDP: the nameserver without tcp@ and the
	// default payload size (512 bytes).
	udpPart := strings.NewReplacer("resolvers sidecar", "resolvers sidecar_udp", "tcp@", "",
		"resolvers sidecar ", "resolvers sidecar_udp ", "backend web", "backend web_udp").Replace(tcpPart)
	var kept []string
	for _, l := range strings.Split(udpPart, "\n") {
		if !strings.Contains(l, "accepted_payload_size") {
			kept = append(kept, l)
		}
	}
	udpPart = strings.Join(kept, "\n")
	sock := filepath.Join(dir, "haproxy.sock")
	conf := fmt.Sprintf(`global
    stats socket %s mode 600 level admin
    log stderr format raw local0 info

defaults
    mode tcp
    log global
    timeout connect 1s
    timeout client 10s
    timeout server 10s

`, sock) + tcpPart + "\n" + udpPart
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("haproxy", "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s\n%s", err, out, conf)
	}
	h := &haproxy{p: start(t, dir, "haproxy", "haproxy", "-db", "-f", path), sock: sock, started: time.Now()}
	waitFor(t, "haproxy stats socket", 10*time.Second, func() (bool, string) {
		if h.p.exited() {
			t.Fatal("haproxy exited")
		}
		_, err := h.servers("web")
		return err == nil, fmt.Sprint(err)
	})
	return h
}

// servers reads the servers of a backend that hold an address from DNS,
// as name → addr:port, through HAProxy's runtime API.
func (h *haproxy) servers(backend string) (map[string]string, error) {
	c, err := net.DialTimeout("unix", h.sock, time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(c, "show servers state %s\n", backend); err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if _, err := out.ReadFrom(c); err != nil {
		return nil, err
	}
	// Fields (HAProxy 2.6): be_id be_name srv_id srv_name srv_addr
	// srv_op_state srv_admin_state ... srv_fqdn srv_port srvrecord ...
	servers := map[string]string{}
	for _, line := range strings.Split(out.String(), "\n") {
		f := strings.Fields(line)
		if len(f) < 19 || strings.HasPrefix(line, "#") || f[1] != backend {
			continue
		}
		admin, err := strconv.Atoi(f[6])
		if err != nil {
			return nil, fmt.Errorf("bad line %q", line)
		}
		// 0x20: in maintenance because DNS gave the slot no record.
		if admin&0x20 != 0 || f[4] == "0.0.0.0" || f[4] == "-" {
			continue
		}
		servers[f[3]] = f[4] + ":" + f[18]
	}
	if len(servers) == 0 && !strings.Contains(out.String(), backend) {
		return nil, fmt.Errorf("no backend %s: %s", backend, out.String())
	}
	return servers, nil
}

func addrSet(servers map[string]string) map[string]bool {
	out := map[string]bool{}
	for _, a := range servers {
		out[a] = true
	}
	return out
}

// testHAProxy: over TCP HAProxy holds all 40 instances; over UDP it holds
// what one answer carries and removes none of it for 30 s while the
// service does not change; a registration and a deregistration reach it
// within 2 s plus the TTL.
func testHAProxy(t *testing.T, h *haproxy, ag *agent) {
	waitFor(t, "haproxy over TCP resolves every instance", 20*time.Second, func() (bool, string) {
		s, err := h.servers("web")
		return err == nil && len(s) == instances, fmt.Sprintf("%d servers, %v", len(s), err)
	})
	waitFor(t, "haproxy over UDP resolves", 20*time.Second, func() (bool, string) {
		s, err := h.servers("web_udp")
		return err == nil && len(s) > 0, fmt.Sprintf("%d servers, %v", len(s), err)
	})

	// 30 s of an unchanged service: no server may leave either backend.
	removals := map[string]int{}
	prev := map[string]map[string]bool{}
	sizes := map[string][2]int{} // backend → min, max servers held
	deadline := time.Now().Add(30 * time.Second)
	samples := 0
	for time.Now().Before(deadline) {
		for _, be := range []string{"web", "web_udp"} {
			s, err := h.servers(be)
			if err != nil {
				t.Fatalf("%s: %v", be, err)
			}
			cur := addrSet(s)
			for a := range prev[be] {
				if !cur[a] {
					removals[be]++
				}
			}
			prev[be] = cur
			mm, ok := sizes[be]
			if !ok {
				mm = [2]int{len(cur), len(cur)}
			}
			sizes[be] = [2]int{min(mm[0], len(cur)), max(mm[1], len(cur))}
		}
		samples++
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("30 s, %d samples: TCP nameserver held %d-%d servers, %d removals; UDP nameserver held %d-%d servers, %d removals",
		samples, sizes["web"][0], sizes["web"][1], removals["web"], sizes["web_udp"][0], sizes["web_udp"][1], removals["web_udp"])
	if removals["web"] != 0 || sizes["web"][0] != instances {
		t.Errorf("TCP nameserver: %d removals, %d-%d servers; want 0 removals and %d servers throughout", removals["web"], sizes["web"][0], sizes["web"][1], instances)
	}
	if removals["web_udp"] != 0 {
		t.Errorf("UDP nameserver: %d server removals for an unchanged service, want 0", removals["web_udp"])
	}

	// Changes reach HAProxy within 2 s plus the TTL (the dev agent's
	// default, 5 s).
	const bound = 2*time.Second + 5*time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	added := fmt.Sprintf("127.0.1.%d:%d", instances+1, 8000+instances)
	if _, err := ag.api.Register(ctx, api.ServiceRegistration{ID: "web-new", Name: "web",
		Address: fmt.Sprintf("127.0.1.%d", instances+1), Port: 8000 + instances}); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, "a registration reaches haproxy", bound, func() (bool, string) {
		s, err := h.servers("web")
		return err == nil && addrSet(s)[added], fmt.Sprintf("%d servers, %v", len(s), err)
	})
	t.Logf("registration reached HAProxy in %v", took.Round(10*time.Millisecond))
	if err := ag.api.Deregister(ctx, "web-0"); err != nil {
		t.Fatal(err)
	}
	took = waitFor(t, "a deregistration reaches haproxy", bound, func() (bool, string) {
		s, err := h.servers("web")
		return err == nil && !addrSet(s)["127.0.1.1:8000"], fmt.Sprintf("%d servers, %v", len(s), err)
	})
	t.Logf("deregistration reached HAProxy in %v", took.Round(10*time.Millisecond))
}
