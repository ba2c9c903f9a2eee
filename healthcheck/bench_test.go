package healthcheck_test

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecarhq/sidecar/fsm"
	"github.com/sidecarhq/sidecar/healthcheck"
)

var benchWindow = flag.Duration("healthcheck.window", 5*time.Second, "wall time BenchmarkHTTPChecks500 measures per iteration")

// benchServerEnv makes the test binary serve HTTP instead of testing: see
// serveBenchTarget.
const benchServerEnv = "HEALTHCHECK_BENCH_SERVER"

// serveBenchTarget answers "ok" to every request on a loopback port it
// prints, until its stdin closes; then it prints how many connections it
// accepted.
func serveBenchTarget() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr())
	var conns atomic.Int64
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Write([]byte("ok"))
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				conns.Add(1)
			}
		},
	}
	go srv.Serve(ln)
	io.Copy(io.Discard, os.Stdin)
	fmt.Println(conns.Load())
	os.Exit(0)
}

// benchTarget is serveBenchTarget in a child process, so that the
// benchmark's process spends CPU on the checks alone.
type benchTarget struct {
	url   string
	pid   int
	cmd   *exec.Cmd
	stdin io.Closer
	out   *bufio.Reader
}

func startBenchTarget(b *testing.B) *benchTarget {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), benchServerEnv+"=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	t := &benchTarget{pid: cmd.Process.Pid, cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	b.Cleanup(func() { t.stop() })
	addr, err := t.out.ReadString('\n')
	if err != nil {
		b.Fatal(err)
	}
	t.url = "http://" + strings.TrimSpace(addr)
	return t
}

// stop ends the target and returns how many connections it accepted.
func (t *benchTarget) stop() int {
	if t.cmd == nil {
		return 0
	}
	t.stdin.Close()
	var n int
	fmt.Fscan(t.out, &n)
	t.cmd.Wait()
	t.cmd = nil
	return n
}

// processCPU is the CPU time (user and system) pid has used, from
// /proc/<pid>/stat; 0 where /proc is missing.
func processCPU(pid int) time.Duration {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after "pid (comm) ": utime and stime are the 12th and 13th.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / clkTck
}

// BenchmarkHTTPChecks500 runs 500 HTTP checks at a 1s interval against one
// local HTTP server, as one busy sidecar would, and reports the CPU its
// process spends per second of wall time (getrusage RUSAGE_SELF: the
// checks, the Go runtime and GC; the target runs in a child process, whose
// CPU is reported apart as target-cpu-%), the allocations per check run
// (checks, runtime and metrics), and the connections the target accepted.
//
//	go test -run '^$' -bench HTTPChecks500 -benchtime 1x ./healthcheck
func BenchmarkHTTPChecks500(b *testing.B) {
	const checks = 500
	target := startBenchTarget(b)

	cfg := healthcheck.DefaultConfig() // random initial delays spread the runs
	cfg.Logger = slog.New(slog.DiscardHandler)
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	n := &recorder{}
	r, err := healthcheck.New(cfg, n)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	in := make([]healthcheck.Instance, checks)
	for i := range in {
		in[i] = healthcheck.Instance{ID: fmt.Sprint("web-", i), Checks: []fsm.Check{{
			ID: fmt.Sprint("web-", i, ":http"), Type: "http", HTTP: target.url + "/health",
			Interval: int64(time.Second), Timeout: int64(time.Second),
		}}}
	}
	if err := r.Sync(in); err != nil {
		b.Fatal(err)
	}
	// Warm up: every check has run (first runs fall within one interval)
	// and connections are established.
	waitFor(b, 10*time.Second, "every check passing", func() bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		return len(n.calls) == checks
	})
	time.Sleep(time.Second)

	b.ResetTimer()
	var cpu, targetCPU, wall time.Duration
	var runs, mallocs, allocBytes uint64
	for i := 0; i < b.N; i++ {
		var ru0, ru1 syscall.Rusage
		var ms0, ms1 runtime.MemStats
		runtime.ReadMemStats(&ms0)
		hist0 := durationCount(b, reg)
		t0 := processCPU(target.pid)
		start := time.Now()
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
		time.Sleep(*benchWindow)
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
		wall += time.Since(start)
		targetCPU += processCPU(target.pid) - t0
		runtime.ReadMemStats(&ms1)
		runs += durationCount(b, reg) - hist0
		cpu += rusageCPU(&ru1) - rusageCPU(&ru0)
		mallocs += ms1.Mallocs - ms0.Mallocs
		allocBytes += ms1.TotalAlloc - ms0.TotalAlloc
	}
	b.StopTimer()
	byStatus := map[string]int{}
	for _, st := range r.Statuses() {
		byStatus[st.Status]++
	}
	n.mu.Lock()
	changes := len(n.calls) - checks
	n.mu.Unlock()
	if byStatus[fsm.StatusPassing] != checks || changes != 0 {
		b.Errorf("checks by status at the end: %v; %d changes of status after warm-up", byStatus, changes)
	}
	if runs == 0 {
		b.Fatal("no check ran")
	}
	b.ReportMetric(100*cpu.Seconds()/wall.Seconds(), "cpu-%-of-core")
	b.ReportMetric(float64(runs)/wall.Seconds(), "checks/s")
	b.ReportMetric(float64(mallocs)/float64(runs), "allocs/check")
	b.ReportMetric(float64(allocBytes)/float64(runs), "B/check")
	b.ReportMetric(100*targetCPU.Seconds()/wall.Seconds(), "target-cpu-%")
	r.Close()
	b.ReportMetric(float64(target.stop()), "target-conns")
	b.ReportMetric(0, "ns/op")
	b.Logf("%d runs in %v of wall time: %v of CPU in the checks' process, %v in the target's",
		runs, wall.Round(time.Millisecond), cpu.Round(time.Millisecond), targetCPU.Round(time.Millisecond))
}

func rusageCPU(ru *syscall.Rusage) time.Duration {
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// durationCount is how many runs sidecar_check_duration_seconds counted.
func durationCount(b *testing.B, reg *prometheus.Registry) uint64 {
	families, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	var n uint64
	for _, f := range families {
		if f.GetName() == "sidecar_check_duration_seconds" {
			for _, m := range f.GetMetric() {
				n += m.GetHistogram().GetSampleCount()
			}
		}
	}
	return n
}
