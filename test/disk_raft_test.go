package test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sidecarhq/sidecar/internal/disktest"
)

// server starts a one-server cluster on dataDir and waits until it is
// ready; it returns the process and its HTTP URL.
func server(t *testing.T, dataDir string) (*proc, string) {
	t.Helper()
	p, url, _ := serverDNS(t, dataDir)
	return p, url
}

// serverDNS is server, and returns the DNS address too.
func serverDNS(t *testing.T, dataDir string) (*proc, string, string) {
	t.Helper()
	httpAddr, dnsAddr := freeAddr(t), freeAddr(t)
	p := start(t, "agent", "--server", "--bootstrap-expect", "1", "--name", "s1", "--data-dir", dataDir,
		"--http-addr", httpAddr, "--dns-addr", dnsAddr, "--bind-addr", freeAddr(t), "--raft-addr", freeAddr(t))
	url := "http://" + httpAddr
	waitUntil(t, 30*time.Second, "server ready", func() bool {
		select {
		case <-p.done:
			t.Fatalf("server exited while starting:\n%s", p.output)
		default:
		}
		resp, err := http.Get(url + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return p, url, dnsAddr
}

func diskCall(method, url, body string) (int, string, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String(), nil
}

func newLease(t *testing.T, url string) string {
	t.Helper()
	code, body, err := diskCall("POST", url+"/v1/leases", `{"ttl":"1h"}`)
	if err != nil || code != 200 {
		t.Fatalf("lease: %d %s %v", code, body, err)
	}
	var l struct{ ID string }
	json.Unmarshal([]byte(body), &l)
	return l.ID
}

func lock(url, lease string, i int) (int, string, error) {
	return diskCall("PUT", fmt.Sprintf("%s/v1/locks/l-%d", url, i), fmt.Sprintf(`{"lease":%q}`, lease))
}

// noStackTrace fails the test when out shows a Go panic or stack trace.
func noStackTrace(t *testing.T, out string) {
	t.Helper()
	for _, bad := range []string{"panic:", "goroutine ", "runtime/debug"} {
		if strings.Contains(out, bad) {
			t.Fatalf("output shows %q:\n%s", bad, out)
		}
	}
}

// A volume that turns read-only under a running server: the server stops
// taking writes and exits with a clear line, no stack trace; restarted on
// the repaired volume it has every write it acknowledged.
func TestDisk_readOnlyVolume(t *testing.T) {
	vol := disktest.NewExt4(t, "400M")
	data := filepath.Join(vol.Dir, "data")
	p, url := server(t, data)
	lease := newLease(t, url)
	acked := 0
	for ; acked < 30; acked++ {
		if code, body, err := lock(url, lease, acked); err != nil || code != 200 {
			t.Fatalf("lock %d: %d %s %v", acked, code, body, err)
		}
	}
	vol.Fail(t)
	// Writes now fail: each is either refused with a clear error or never
	// answered because the server stopped; no write may succeed once the
	// server has seen its disk fail, and the server must stop taking them.
	deadline := time.Now().Add(20 * time.Second)
	exited := false
	for i := acked; !exited; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("server still running 20 s after its volume turned read-only:\n%s", p.output)
		}
		code, body, err := lock(url, lease, i)
		switch {
		case err != nil:
		case code == 200:
			acked = i + 1 // written before the kernel stopped it: must survive
		case code >= 500 && strings.Contains(body, `"error"`):
		default:
			t.Fatalf("write on a read-only volume: %d %s", code, body)
		}
		select {
		case <-p.done:
			exited = true
		case <-time.After(50 * time.Millisecond):
		}
	}
	out := p.output.String()
	if p.cmd.ProcessState.ExitCode() == 0 {
		t.Fatalf("server exited 0 after its disk failed:\n%s", out)
	}
	noStackTrace(t, out)
	if !strings.Contains(out, "read-only file system") {
		t.Fatalf("the exit does not say why:\n%s", out)
	}

	vol.Repair(t)
	_, url = server(t, data)
	for i := 0; i < acked; i++ {
		code, body, err := diskCall("GET", fmt.Sprintf("%s/v1/locks/l-%d", url, i), "")
		if err != nil || code != 200 || !strings.Contains(body, lease) {
			t.Fatalf("acknowledged lock l-%d after the restart: %d %s %v", i, code, body, err)
		}
	}
	t.Logf("%d acknowledged writes all there after the restart; the failed server said:\n%s", acked, lastLines(out, 3))
}

// A byte flipped in a Raft log entry: the server refuses to start, with
// one line naming the file and the entry, instead of starting without it.
func TestDisk_flippedByteInALogEntry(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	p, url := server(t, data)
	lease := newLease(t, url)
	for i := 0; i < 30; i++ {
		if code, body, err := lock(url, lease, i); err != nil || code != 200 {
			t.Fatalf("lock %d: %d %s %v", i, code, body, err)
		}
	}
	p.cmd.Process.Signal(os.Interrupt)
	<-p.done
	segs, _ := filepath.Glob(filepath.Join(data, "raft-log", "seg-*.wal"))
	if len(segs) != 1 {
		t.Fatalf("segments: %v", segs)
	}
	b, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(b, []byte(`"l-15"`))
	if at < 0 {
		t.Fatal("lock l-15's entry not found in the log")
	}
	f, _ := os.OpenFile(segs[0], os.O_RDWR, 0)
	f.WriteAt([]byte{b[at+2] ^ 0x01}, int64(at+2))
	f.Close()

	p = start(t, "agent", "--server", "--bootstrap-expect", "1", "--name", "s1", "--data-dir", data,
		"--http-addr", freeAddr(t), "--dns-addr", freeAddr(t), "--bind-addr", freeAddr(t), "--raft-addr", freeAddr(t))
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("server started on a damaged log:\n%s", p.output)
	}
	out := p.output.String()
	if p.cmd.ProcessState.ExitCode() == 0 {
		t.Fatalf("exit 0 on a damaged log:\n%s", out)
	}
	noStackTrace(t, out)
	for _, want := range []string{segs[0], "is damaged", "data dir aside"} {
		if !strings.Contains(out, want) {
			t.Fatalf("output does not name %q:\n%s", want, out)
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// A server's data dir on a disk that fills up: registrations are refused
// with 507 naming the disk, at once; reads and DNS go on; the leader does
// not change; once space is freed writes work again within 5 s, and every
// acknowledged write is there.
func TestDisk_fullDisk(t *testing.T) {
	disk := disktest.Tmpfs(t, "200m") // the Raft log allocates 2 segments of 64 MiB ahead
	_, url, dnsAddr := serverDNS(t, filepath.Join(disk, "data"))
	register := func(i int) (int, string) {
		code, body, err := diskCall("PUT", url+"/v1/services", fmt.Sprintf(`{"id":"web-%d","name":"web","address":"10.0.0.%d","port":80}`, i, i%250+1))
		if err != nil {
			t.Fatalf("register web-%d: %v", i, err)
		}
		return code, body
	}
	term := func() uint64 {
		_, body, err := diskCall("GET", url+"/v1/status", "")
		if err != nil {
			t.Fatal(err)
		}
		var st struct{ Term uint64 }
		json.Unmarshal([]byte(body), &st)
		return st.Term
	}
	acked := 0
	for ; acked < 20; acked++ {
		if code, body := register(acked); code != 200 {
			t.Fatalf("register web-%d: %d %s", acked, code, body)
		}
	}
	termBefore := term()

	filler := disktest.Fill(t, disk)

	refused := 0
	for i := acked; refused < 5 && i < acked+1000; i++ {
		start := time.Now()
		code, body := register(i)
		took := time.Since(start)
		switch {
		case code == 200:
			acked = i + 1 // written in room the disk still had
			continue
		case code != 507 || !strings.Contains(body, `"error"`) || !strings.Contains(body, "full") || !strings.Contains(body, disk):
			t.Fatalf("register on a full disk: %d %s, want 507 naming the disk %s", code, body, disk)
		case took > time.Second:
			t.Fatalf("refusal took %v", took)
		}
		refused++
		if refused == 1 {
			t.Logf("refused: %s", strings.TrimSpace(body))
		}
	}
	if refused < 5 {
		t.Fatal("the full disk never refused a registration")
	}
	// Reads and DNS go on.
	if code, body, err := diskCall("GET", url+"/v1/services/web", ""); err != nil || code != 200 || strings.Count(body, `"id"`) != acked {
		t.Fatalf("read on a full disk: %d %v, %d instances, want %d", code, err, strings.Count(body, `"id"`), acked)
	}
	m := new(dns.Msg)
	m.SetQuestion("_web._tcp.service.sidecar.", dns.TypeSRV)
	in, _, err := (&dns.Client{Net: "tcp", Timeout: 2 * time.Second}).Exchange(m, dnsAddr)
	if err != nil || in.Rcode != dns.RcodeSuccess || len(in.Answer) == 0 {
		t.Fatalf("DNS on a full disk: %v %v", in, err)
	}
	if got := term(); got > termBefore+1 {
		t.Fatalf("term went from %d to %d on a full disk: more than one leader change", termBefore, got)
	}

	os.Remove(filler)
	freed := time.Now()
	for {
		code, body := register(acked)
		if code == 200 {
			acked++
			break
		}
		if time.Since(freed) > 5*time.Second {
			t.Fatalf("writes did not resume within 5 s of freeing space: %d %s", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("writes resumed %v after space was freed", time.Since(freed).Round(time.Millisecond))
	if _, body, _ := diskCall("GET", url+"/v1/services/web", ""); strings.Count(body, `"id"`) != acked {
		t.Fatalf("%d instances after the disk had room again, want %d acknowledged", strings.Count(body, `"id"`), acked)
	}
}
