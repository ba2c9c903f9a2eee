// Package test holds tests that run the built sidecar binary as real
// processes on loopback.
package test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/internal/hangwatch"
)

var binary string

func TestMain(m *testing.M) {
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "test setup:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

// run builds the binary unless SIDECAR_BIN names one.
func run(m *testing.M) (int, error) {
	hangwatch.Start()
	binary = os.Getenv("SIDECAR_BIN")
	if binary == "" {
		dir, err := os.MkdirTemp("", "sidecar-bin")
		if err != nil {
			return 0, err
		}
		defer os.RemoveAll(dir)
		binary = filepath.Join(dir, "sidecar")
		build := exec.Command("go", "build", "-o", binary, "../cmd/sidecar")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return 0, fmt.Errorf("go build: %w", err)
		}
	}
	return m.Run(), nil
}

func freeAddr(t testing.TB) string {
	t.Helper()
	// The kernel may hand a just-closed port out again: never give the
	// same one twice in a test binary (two flags of one agent once got the
	// same port).
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		if _, dup := handedOut.LoadOrStore(addr, true); !dup {
			return addr
		}
	}
}

// handedOut holds every address freeAddr returned.
var handedOut sync.Map

// proc is a started process, killed at the end of the test.
type proc struct {
	cmd    *exec.Cmd
	output *bytes.Buffer
	done   chan struct{}
}

func start(t testing.TB, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(binary, args...), output: &bytes.Buffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.output, p.output
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
		if t.Failed() {
			t.Logf("output of %v:\n%s", args, p.output.String())
		}
	})
	return p
}

func (p *proc) kill9() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// devAgent starts `sidecar agent --dev` on free ports and waits until ready.
func devAgent(t testing.TB) string {
	t.Helper()
	httpAddr := freeAddr(t)
	start(t, "agent", "--dev", "--name", "dev", "--http-addr", httpAddr, "--dns-addr", freeAddr(t),
		"--bind-addr", freeAddr(t), "--raft-addr", freeAddr(t))
	url := "http://" + httpAddr
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(url + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return url
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("dev agent not ready within 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// leader reads GET /v1/elections/{name}, as a blocking query after index
// when index > 0; it returns the leader (nil when vacant) and the index.
func leader(t testing.TB, url, name string, index uint64) (*api.Holder, uint64) {
	t.Helper()
	q := ""
	if index > 0 {
		q = "?wait=20s&index=" + strconv.FormatUint(index, 10)
	}
	resp, err := http.Get(url + "/v1/elections/" + name + q)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	idx, _ := strconv.ParseUint(resp.Header.Get(api.HeaderIndex), 10, 64)
	if resp.StatusCode == 404 {
		return nil, idx
	}
	var info api.ElectionInfo
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
		t.Fatal(err)
	}
	return info.Leader, idx
}

// waitLeader follows the election with blocking queries until value leads.
func waitLeader(t testing.TB, url, name, value string, index uint64) (*api.Holder, uint64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		h, idx := leader(t, url, name, index)
		if h != nil && h.Value == value {
			return h, idx
		}
		index = idx
	}
	t.Fatalf("%s did not lead %s within 30s", value, name)
	return nil, 0
}

// electKillHandover runs one trial: A leads through `sidecar elect`, B
// waits, A's process dies by SIGKILL; it returns A's and B's leadership
// and the time from the kill until B was seen leading.
func electKillHandover(t testing.TB, url, name string) (a, b *api.Holder, bIndex uint64, took time.Duration) {
	t.Helper()
	// The leases are long: only the connection closing can explain a
	// handover within the trial.
	pa := start(t, "elect", name, "--value", "a:1", "--ttl", "30s", "--http-addr", url[len("http://"):], "--", "sleep", "300")
	a, idx := waitLeader(t, url, name, "a:1", 0)
	start(t, "elect", name, "--value", "b:2", "--ttl", "30s", "--http-addr", url[len("http://"):], "--", "sleep", "300")
	// B's candidacy changes the election's index.
	if _, idx = leader(t, url, name, idx); idx == 0 {
		t.Fatal("no index")
	}
	killed := time.Now()
	pa.kill9()
	b, bIndex = waitLeader(t, url, name, "b:2", idx)
	return a, b, bIndex, time.Since(killed)
}

func TestProcess_electKill9_handsOverInOneCommit(t *testing.T) {
	url := devAgent(t)
	a, b, bIndex, took := electKillHandover(t, url, "db")
	t.Logf("kill -9 of the leading `sidecar elect` to the next leader: %v", took)
	if b.Token <= a.Token {
		t.Fatalf("new leader token %d not greater than %d", b.Token, a.Token)
	}
	// The entry that revoked the dead holder's lease made B the leader:
	// B's token is that entry's index, the election's index when B led.
	if b.Token != bIndex {
		t.Fatalf("B's token %d is not the index %d of the change that made it lead: more than one commit", b.Token, bIndex)
	}
	if took > 30*time.Second {
		t.Fatalf("handover took %v: the lease TTL, not the connection", took)
	}
}

// BenchmarkProcess_electKill9Handover reports the median and max time from
// SIGKILL of the leading `sidecar elect` to the next candidate leading.
func BenchmarkProcess_electKill9Handover(b *testing.B) {
	url := devAgent(b)
	var took []time.Duration
	for i := 0; i < b.N; i++ {
		_, _, _, d := electKillHandover(b, url, "bench-"+strconv.Itoa(i))
		took = append(took, d)
	}
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "ms-median")
	b.ReportMetric(float64(took[len(took)-1].Microseconds())/1000, "ms-max")
}

// SIGHUP applies the config file's services again: a changed one is
// corrected, a removed one deregistered, a new one registered; what the API
// registered stays.
func TestProcess_sighupReloadsConfigServices(t *testing.T) {
	file := filepath.Join(t.TempDir(), "sidecar.yaml")
	// Files are replaced by rename, as an editor or config tool does: a
	// reload reads the old file or the new one, never half of one.
	write := func(body string) {
		if err := os.WriteFile(file+".new", []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(file+".new", file); err != nil {
			t.Fatal(err)
		}
	}
	write("services:\n  - {id: web-1, name: web, port: 8080}\n  - {id: web-2, name: web, port: 8081}\n")
	httpAddr := freeAddr(t)
	url := "http://" + httpAddr
	reloads := func(result string) int {
		resp, err := http.Get(url + "/metrics")
		if err != nil {
			return -1
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		prefix := `sidecar_config_reloads_total{result="` + result + `"} `
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, prefix) {
				n, _ := strconv.Atoi(strings.TrimPrefix(line, prefix))
				return n
			}
		}
		return 0
	}
	p := start(t, "agent", "--dev", "--name", "dev", "--http-addr", httpAddr, "--dns-addr", freeAddr(t),
		"--bind-addr", freeAddr(t), "--raft-addr", freeAddr(t), "--config-file", file)
	ports := func() map[string]int {
		resp, err := http.Get(url + "/v1/services/web")
		if err != nil {
			return nil
		}
		defer resp.Body.Close()
		var list []api.Instance
		if json.NewDecoder(resp.Body).Decode(&list) != nil {
			return nil
		}
		out := map[string]int{}
		for _, in := range list {
			out[in.ID] = in.Port
		}
		return out
	}
	waitUntil(t, 20*time.Second, "web-1 and web-2 from the file", func() bool {
		return reflect.DeepEqual(ports(), map[string]int{"web-1": 8080, "web-2": 8081})
	})
	req, _ := http.NewRequest("PUT", url+"/v1/services", strings.NewReader(`{"id":"web-api","name":"web","port":9000}`))
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("register through the API: %v %v", resp, err)
	}
	write("services:\n  - {id: web-1, name: web, port: 9090}\n  - {id: web-3, name: web, port: 8083}\n")
	p.cmd.Process.Signal(syscall.SIGHUP)
	want := map[string]int{"web-1": 9090, "web-3": 8083, "web-api": 9000}
	waitUntil(t, 20*time.Second, "the file's services after SIGHUP", func() bool { return reflect.DeepEqual(ports(), want) })

	// A file that no longer parses changes nothing: the next good reload
	// (handled after it) finds everything as the bad one left it.
	write("services:\n  - {id: web-1, name: web, port: eighty}\n")
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitUntil(t, 10*time.Second, "the bad file refused", func() bool { return reloads("refused") == 1 })
	if got := ports(); !reflect.DeepEqual(got, want) {
		t.Fatalf("after a refused reload: %v, want %v", got, want)
	}
	write("services:\n  - {id: web-1, name: web, port: 9090}\n  - {id: web-3, name: web, port: 8083}\n  - {id: web-4, name: web, port: 8084}\n")
	p.cmd.Process.Signal(syscall.SIGHUP)
	want["web-4"] = 8084
	waitUntil(t, 20*time.Second, "web-4 added by the next good reload", func() bool { return reflect.DeepEqual(ports(), want) })
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done // the output is the process's until it exits
	if out := p.output.String(); !strings.Contains(out, "configuration refused") || !strings.Contains(out, "eighty") {
		t.Fatalf("the bad file's refusal is not logged with its cause:\n%s", out)
	}
}

func waitUntil(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
