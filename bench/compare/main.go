// Command compare runs sidecar and etcd side by side on this machine, each
// as a 3-server cluster on loopback with default timings, and prints one
// Markdown table of medians over repeated trials with the ratio
// sidecar/etcd per row. bench/run.sh (make bench) installs etcd, builds
// sidecar and this driver, and runs it; see bench/README.md.
//
//	compare run -sidecar BIN -etcd BIN -dir TMPDIR [-dns-script bench/dns/run.sh]
//	compare etcd-hold ...   (the etcd holder process of the kill rows)
//
// Every process it starts is stopped by PID when it ends or is signalled,
// and has Pdeathsig=SIGKILL in case the driver itself is killed.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/grpclog"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: compare run|etcd-hold|noop-http [flags]")
		os.Exit(2)
	}
	// gRPC reports every reconnect to a killed etcd member on stderr.
	grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, io.Discard))
	switch os.Args[1] {
	case "run":
		os.Exit(run(os.Args[2:]))
	case "etcd-hold":
		os.Exit(etcdHold(os.Args[2:]))
	case "noop-http":
		os.Exit(noopHTTP(os.Args[2:]))
	default:
		fmt.Fprintln(os.Stderr, "usage: compare run|etcd-hold|noop-http [flags]")
		os.Exit(2)
	}
}

type config struct {
	sidecarBin, etcdBin, dir, dnsScript, out string
	trials                                   int
	seconds                                  time.Duration
	lockOps, propSamples                     int
	sections                                 map[string]bool
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "== %s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

var allSections = []string{"rss", "kill", "node", "graceful", "lock", "propagation", "leader", "throughput", "tls", "acl", "scale", "dns"}

func run(args []string) int {
	var cfg config
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.StringVar(&cfg.sidecarBin, "sidecar", "bin/sidecar", "sidecar binary")
	fs.StringVar(&cfg.etcdBin, "etcd", "etcd", "etcd binary")
	fs.StringVar(&cfg.dir, "dir", "", "scratch directory (logs, data dirs); must exist")
	fs.StringVar(&cfg.dnsScript, "dns-script", "", "bench/dns/run.sh, for the DNS row")
	fs.StringVar(&cfg.out, "out", os.Getenv("BENCH_OUT"), "also write the table to this file")
	sections := fs.String("sections", os.Getenv("BENCH_SECTIONS"), "comma list of "+strings.Join(allSections, ",")+" (default all)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg.trials = envInt("BENCH_TRIALS", 5)
	cfg.seconds = time.Duration(envInt("BENCH_SECONDS", 3)) * time.Second
	cfg.lockOps = envInt("BENCH_LOCK_OPS", 200)
	cfg.propSamples = envInt("BENCH_PROP_SAMPLES", 50)
	cfg.sections = map[string]bool{}
	for _, s := range strings.Split(*sections, ",") {
		if s = strings.TrimSpace(s); s != "" {
			cfg.sections[s] = true
		}
	}
	if len(cfg.sections) == 0 {
		for _, s := range allSections {
			cfg.sections[s] = true
		}
	}
	if cfg.dir == "" {
		fmt.Fprintln(os.Stderr, "compare run: -dir is required")
		return 2
	}
	for _, p := range []*string{&cfg.sidecarBin, &cfg.etcdBin} {
		abs, err := exec.LookPath(*p)
		if err == nil {
			abs, err = filepath.Abs(abs)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "compare run:", err)
			return 1
		}
		*p = abs
	}
	sup, err := newSupervisor(cfg.dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "compare run:", err)
		return 1
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		logf("%v: stopping every process started", s)
		sup.stopAll(3 * time.Second)
		os.Exit(130)
	}()
	b := &bench{cfg: cfg, sup: sup}
	b.overall = time.AfterFunc(40*time.Minute, func() {
		logf("the run exceeded 40 minutes: stopping")
		sup.stopAll(3 * time.Second)
		os.Exit(1)
	})
	code := b.run()
	sup.stopAll(5 * time.Second)
	return code
}

// bench holds one run: the clusters, the rows and the errors met.
type bench struct {
	cfg     config
	sup     *supervisor
	overall *time.Timer
	self    string

	sc      *sidecarCluster
	scEmpty bool // sc was just emptied (reset) and nothing wrote since
	et      *etcdCluster
	etcdMin int64

	rows    []*row
	notes   []string
	tlsRows []*row // TLS on beside plain: the second table
	tlsNote []string
	aclRows []*row // ACLs on beside plain: the third table
	aclNote []string
	errors  []string
}

func (b *bench) fail(section string, err error) {
	logf("%s: FAILED: %v", section, err)
	b.errors = append(b.errors, fmt.Sprintf("%s: %v", section, err))
}

func (b *bench) add(r *row) *row {
	r.sidecar, r.etcd = math.NaN(), math.NaN()
	b.rows = append(b.rows, r)
	return r
}

func (b *bench) run() int {
	var err error
	if b.self, err = os.Executable(); err != nil {
		b.fail("setup", err)
		return 1
	}
	machine := describeMachine(b.cfg)
	logf("machine: %s", strings.ReplaceAll(machine, "\n", "; "))
	n := b.cfg.trials

	// Rows in table order; sections fill them in.
	minLabel := "shortest TTL (sidecar 1s, etcd 2s)"
	rKill := b.add(&row{sec: "kill", what: "handover after holder process SIGKILL, " + minLabel + ": median", goal: "sidecar < 50 ms", met: below(0.050)})
	rKillMax := b.add(&row{sec: "kill", what: "  same, max"})
	rKill5 := b.add(&row{sec: "kill", what: "handover after holder process SIGKILL, TTL 5s: median", goal: "sidecar < 50 ms", met: below(0.050)})
	rKill5Max := b.add(&row{sec: "kill", what: "  same, max"})
	rNode := b.add(&row{sec: "node", what: "handover after holder node SIGKILL, " + minLabel + ": median", goal: "≤ 0.5× etcd", met: ratioAtMost(0.5)})
	rNodeMax := b.add(&row{sec: "node", what: "  same, max"})
	rNode5 := b.add(&row{sec: "node", what: "handover after holder node SIGKILL, TTL 5s: median", goal: "≤ 0.5× etcd", met: ratioAtMost(0.5)})
	rNode5Max := b.add(&row{sec: "node", what: "  same, max"})
	rGrace := b.add(&row{sec: "graceful", what: "graceful handover (resign → other leads): median", goal: "≤ etcd", met: ratioAtMost(1)})
	rGraceMax := b.add(&row{sec: "graceful", what: "  same, max"})
	rLock50 := b.add(&row{sec: "lock", what: "uncontended lock acquire+release: p50", goal: "≤ etcd", met: ratioAtMost(1)})
	rLock99 := b.add(&row{sec: "lock", what: "uncontended lock acquire+release: p99", goal: "≤ etcd", met: ratioAtMost(1)})
	rReg16 := b.add(&row{sec: "throughput", what: "registration throughput, 16 clients (sidecar register+TTL check; etcd lease grant + put)", unit: unitRate, goal: "≥ 3× etcd", met: ratioAtLeast(3)})
	rReg16L := b.add(&row{sec: "throughput", what: "  same, 16 clients through the Raft leader's HTTP", unit: unitRate, goal: "≥ 2× etcd", met: ratioAtLeast(2)})
	rReg64 := b.add(&row{sec: "throughput", what: "registration throughput, 64 clients", unit: unitRate})
	rReg64L := b.add(&row{sec: "throughput", what: "  same, 64 clients through the Raft leader's HTTP", unit: unitRate, goal: "≥ 2× etcd", met: ratioAtLeast(2)})
	rPut16 := b.add(&row{sec: "throughput", what: "write throughput, 16 clients spread over the servers (sidecar register; etcd put)", unit: unitRate})
	rPut16L := b.add(&row{sec: "throughput", what: "  same, 16 clients through the Raft leader's HTTP", unit: unitRate, goal: "≥ etcd", met: ratioAtLeast(1)})
	rPut16C := b.add(&row{sec: "throughput", what: "  same, 16 clients through the client agents", unit: unitRate, goal: "≥ etcd", met: ratioAtLeast(1)})
	rPut64 := b.add(&row{sec: "throughput", what: "write throughput, 64 clients spread over the servers", unit: unitRate, goal: "≥ 2× etcd", met: ratioAtLeast(2)})
	rPut64L := b.add(&row{sec: "throughput", what: "  same, 64 clients through the Raft leader's HTTP", unit: unitRate, goal: "≥ etcd", met: ratioAtLeast(1)})
	rPut64C := b.add(&row{sec: "throughput", what: "  same, 64 clients through the client agents", unit: unitRate, goal: "≥ etcd", met: ratioAtLeast(1)})
	rScale := b.add(&row{sec: "scale", what: fmt.Sprintf("registration throughput, 16 clients, on top of %s existing instances", thousands(scaleInstances)), unit: unitRate})
	rGap := b.add(&row{sec: "leader", what: "longest write gap after Raft leader SIGKILL: median", goal: "≤ 0.5× etcd", met: ratioAtMost(0.5)})
	rGapMax := b.add(&row{sec: "leader", what: "  same, max"})
	rNewLeader := b.add(&row{sec: "leader", what: "time to a new Raft leader after leader SIGKILL: median"})
	rRSSServer := b.add(&row{sec: "rss", what: "idle RSS: sidecar server vs etcd member", unit: unitBytes, goal: "sidecar < 40 MB", met: below(40e6)})
	rRSSClient := b.add(&row{sec: "rss", what: "idle RSS: sidecar client vs etcd member", unit: unitBytes, goal: "sidecar < 20 MB", met: below(20e6)})
	rRSSAfter := b.add(&row{sec: "throughput", what: "RSS after the write rows: sidecar server vs etcd member", unit: unitBytes})
	rRSSScale := b.add(&row{sec: "scale", what: fmt.Sprintf("RSS with %s+ instances: sidecar server vs etcd member", thousands(scaleInstances)), unit: unitBytes})
	rDNS := b.add(&row{sec: "dns", what: "DNS SRV queries/s, 50 instances (dnsperf, dev agent)", unit: unitRate})
	rProp50 := b.add(&row{sec: "propagation", what: "registration → DNS on another client: p50"})
	rProp99 := b.add(&row{sec: "propagation", what: "registration → DNS on another client: p99"})

	need := func(names ...string) bool {
		for _, s := range names {
			if b.cfg.sections[s] {
				return true
			}
		}
		return false
	}
	if need("rss", "kill", "node", "graceful", "lock", "propagation", "leader", "throughput", "tls", "acl", "scale", "diag", "profile") {
		// The tls and acl sections compare sidecar with itself: alone,
		// they start no etcd.
		withEtcd := need("rss", "kill", "node", "graceful", "lock", "propagation", "leader", "throughput", "scale", "diag", "profile")
		if withEtcd {
			logf("starting a 3-server etcd cluster")
			if b.et, err = startEtcd(b.sup, b.cfg.etcdBin, filepath.Join(b.cfg.dir, "etcd"), 3); err != nil {
				b.fail("etcd cluster", err)
				return b.finish(machine)
			}
			defer b.et.close()
		}
		logf("starting a 3-server sidecar cluster and 2 clients")
		if b.sc, err = startSidecar(b.sup, b.cfg.sidecarBin, filepath.Join(b.cfg.dir, "sidecar"), clusterOpts{}, 3, "client-0", "client-1"); err != nil {
			b.fail("sidecar cluster", err)
			return b.finish(machine)
		}
		// A new cluster is empty until a section writes to it.
		b.scEmpty = !need("kill", "node", "graceful", "lock", "propagation", "leader", "throughput", "tls", "acl", "diag", "profile")
		if withEtcd {
			if b.etcdMin, err = b.et.minTTL(); err != nil {
				b.fail("etcd minimum TTL", err)
				b.etcdMin = 2
			}
			logf("etcd grants %ds for a 1s lease", b.etcdMin)
			b.notes = append(b.notes, fmt.Sprintf("etcd granted a %ds lease when asked for 1s: its shortest TTL here.", b.etcdMin))
		} else {
			b.etcdMin = 2
		}
		src := b.sc.streamSources()
		logf("sidecar change streams: %s", src)
		b.notes = append(b.notes, "sidecar clients' change streams (they feed the rows through client-0 and client-1: handovers, lock, propagation): "+src+".")
		minLabel = fmt.Sprintf("shortest TTL (sidecar 1s, etcd %ds)", b.etcdMin)
		rKill.what = "handover after holder process SIGKILL, " + minLabel + ": median"
		rNode.what = "handover after holder node SIGKILL, " + minLabel + ": median"
	}

	if need("rss") {
		logf("idle RSS: settling 5s")
		time.Sleep(5 * time.Second)
		var srv, cl, et []float64
		for _, s := range b.sc.servers {
			if v, err := rssBytes(s.p.pid()); err == nil {
				srv = append(srv, v)
			}
		}
		for _, s := range b.sc.clients {
			if v, err := rssBytes(s.p.pid()); err == nil {
				cl = append(cl, v)
			}
		}
		for _, pid := range b.et.pids() {
			if v, err := rssBytes(pid); err == nil {
				et = append(et, v)
			}
		}
		logf("idle RSS MB: sidecar servers %v, clients %v, etcd %v", mb(srv), mb(cl), mb(et))
		rRSSServer.sidecar, rRSSServer.etcd = median(srv), median(et)
		rRSSClient.sidecar, rRSSClient.etcd = median(cl), median(et)
	}

	if need("kill") {
		for _, ttl := range []struct {
			sc    string
			scTTL time.Duration
			et    int64
			med   *row
			max   *row
		}{{"1s", time.Second, b.etcdMin, rKill, rKillMax}, {"5s", 5 * time.Second, 5, rKill5, rKill5Max}} {
			var scs, ets []float64
			for i := 0; i < n; i++ {
				d, err := b.sc.killHandover(fmt.Sprintf("kill-%s-%d", ttl.sc, i), ttl.sc, false, 0, phase(i, n, ttl.scTTL))
				if err != nil {
					b.fail("sidecar process kill "+ttl.sc, err)
					break
				}
				logf("sidecar process kill, TTL %s, trial %d: %v", ttl.sc, i+1, d)
				scs = append(scs, seconds(d))
			}
			for i := 0; i < n; i++ {
				d, err := b.et.killHandover(b.self, fmt.Sprintf("kill-%d-%d", ttl.et, i), ttl.et, phase(i, n, time.Duration(ttl.et)*time.Second))
				if err != nil {
					b.fail(fmt.Sprintf("etcd process kill %ds", ttl.et), err)
					break
				}
				logf("etcd process kill, TTL %ds, trial %d: %v", ttl.et, i+1, d)
				ets = append(ets, seconds(d))
			}
			ttl.med.sidecar, ttl.med.etcd = median(scs), median(ets)
			ttl.max.sidecar, ttl.max.etcd = maxOf(scs), maxOf(ets)
			ttl.med.note = fmt.Sprintf("(n=%d)", len(scs))
		}
	}

	if need("node") {
		seq := 0
		for _, ttl := range []struct {
			sc      string
			scTTL   time.Duration
			med     *row
			max     *row
			etcdMed *row
			etcdMax *row
		}{{"1s", time.Second, rNode, rNodeMax, rKill, rKillMax}, {"5s", 5 * time.Second, rNode5, rNode5Max, rKill5, rKill5Max}} {
			var scs []float64
			for i := 0; i < n; i++ {
				seq++
				d, err := b.sc.killHandover(fmt.Sprintf("node-%s-%d", ttl.sc, i), ttl.sc, true, seq, phase(i, n, ttl.scTTL))
				if err != nil {
					b.fail("sidecar node kill "+ttl.sc, err)
					break
				}
				logf("sidecar node kill, TTL %s, trial %d: %v", ttl.sc, i+1, d)
				scs = append(scs, seconds(d))
			}
			ttl.med.sidecar, ttl.max.sidecar = median(scs), maxOf(scs)
			ttl.med.note = fmt.Sprintf("(n=%d)", len(scs))
			// etcd has no agent: the session lives in the holder process,
			// so its node kill is the process kill measured above.
			ttl.med.etcd, ttl.max.etcd = ttl.etcdMed.etcd, ttl.etcdMax.etcd
		}
		if b.cfg.sections["kill"] {
			b.notes = append(b.notes, "etcd's node-kill rows repeat its process-kill trials: an etcd session lives in the holder process, there is no agent to kill.")
		}
	}

	if need("graceful") {
		var scs, ets []float64
		trials := 2 * n
		for i := 0; i < trials; i++ {
			d, err := b.sc.gracefulHandover(fmt.Sprintf("graceful-%d", i), "10s")
			if err != nil {
				b.fail("sidecar graceful handover", err)
				break
			}
			scs = append(scs, seconds(d))
		}
		for i := 0; i < trials; i++ {
			d, err := b.et.gracefulHandover(fmt.Sprintf("graceful-%d", i), 10)
			if err != nil {
				b.fail("etcd graceful handover", err)
				break
			}
			ets = append(ets, seconds(d))
		}
		logf("graceful handover ms: sidecar %v, etcd %v", msList(scs), msList(ets))
		rGrace.sidecar, rGrace.etcd = median(scs), median(ets)
		rGraceMax.sidecar, rGraceMax.etcd = maxOf(scs), maxOf(ets)
		rGrace.note = fmt.Sprintf("(n=%d)", len(scs))
	}

	if need("lock") {
		var sc50, sc99, et50, et99 []float64
		for i := 0; i < n; i++ {
			if lat, err := b.sc.lockLatency(b.sc.clients[0], b.cfg.lockOps); err != nil {
				b.fail("sidecar lock latency", err)
			} else {
				sc50, sc99 = append(sc50, quantile(lat, .5)), append(sc99, quantile(lat, .99))
			}
			if lat, err := b.et.lockLatency(b.cfg.lockOps); err != nil {
				b.fail("etcd lock latency", err)
			} else {
				et50, et99 = append(et50, quantile(lat, .5)), append(et99, quantile(lat, .99))
			}
		}
		logf("lock p50 ms: sidecar %v etcd %v; p99 ms: sidecar %v etcd %v", msList(sc50), msList(et50), msList(sc99), msList(et99))
		rLock50.sidecar, rLock50.etcd = median(sc50), median(et50)
		rLock99.sidecar, rLock99.etcd = median(sc99), median(et99)
	}

	if need("propagation") {
		var p50, p99 []float64
		for i := 0; i < n; i++ {
			lat, err := b.sc.propagation(b.cfg.propSamples, i)
			if err != nil {
				b.fail("propagation", err)
				break
			}
			p50, p99 = append(p50, quantile(lat, .5)), append(p99, quantile(lat, .99))
		}
		logf("propagation p50 ms %v, p99 ms %v", msList(p50), msList(p99))
		rProp50.sidecar, rProp99.sidecar = median(p50), median(p99)
	}

	if need("leader") {
		var scGap, etGap, scLead, etLead []float64
		for i := 0; i < n; i++ {
			if g, l, err := b.sidecarLeaderKill(i); err != nil {
				b.fail("sidecar leader kill", err)
			} else {
				scGap, scLead = append(scGap, g), append(scLead, l)
			}
			if g, l, err := b.etcdLeaderKill(i); err != nil {
				b.fail("etcd leader kill", err)
			} else {
				etGap, etLead = append(etGap, g), append(etLead, l)
			}
		}
		rGap.sidecar, rGap.etcd = median(scGap), median(etGap)
		rGapMax.sidecar, rGapMax.etcd = maxOf(scGap), maxOf(etGap)
		rNewLeader.sidecar, rNewLeader.etcd = median(scLead), median(etLead)
		rGap.note = fmt.Sprintf("(n=%d)", len(scGap))
		b.notes = append(b.notes, "after the leader kills: "+b.sc.streamSources()+".")
	}

	if need("throughput") {
		// Each row starts from an empty registry and etcd: writers cycle
		// over idsPerWriter ids each, so a row leaves up to 64,000
		// instances behind.
		servers := func() ([]*scNode, error) { return b.sc.servers, nil }
		leader := func() ([]*scNode, error) {
			l, err := b.sc.leader()
			return []*scNode{l}, err
		}
		clients := func() ([]*scNode, error) { return b.sc.clients, nil }
		if err := resetAll(b.sc); err != nil {
			b.fail("throughput: emptying the sidecar cluster", err)
		}
		var etcdRates []float64
		for _, t := range []struct {
			clients int
			check   bool
			what    string
			agents  func() ([]*scNode, error)
			r       *row
			etcd    bool // measure etcd alongside; else repeat the row before's
			last    bool
		}{
			{16, true, "the servers", servers, rReg16, true, false},
			{16, true, "the leader", leader, rReg16L, false, false},
			{64, true, "the servers", servers, rReg64, true, false},
			{64, true, "the leader", leader, rReg64L, false, false},
			{16, false, "the servers", servers, rPut16, true, false},
			{16, false, "the leader", leader, rPut16L, false, false},
			{16, false, "the clients", clients, rPut16C, false, false},
			{64, false, "the servers", servers, rPut64, true, false},
			{64, false, "the leader", leader, rPut64L, false, false},
			{64, false, "the clients", clients, rPut64C, false, true},
		} {
			agents, err := t.agents()
			if err != nil {
				b.fail(fmt.Sprintf("throughput %d clients through %s", t.clients, t.what), err)
				continue
			}
			target := &writeTarget{what: t.what, c: b.sc, agents: agents}
			sc, et, err := b.writeTrials(t.clients, t.check, []*writeTarget{target}, t.etcd)
			if err != nil {
				b.fail(fmt.Sprintf("throughput %d clients through %s", t.clients, t.what), err)
			}
			if t.etcd {
				etcdRates = et
			}
			t.r.sidecar, t.r.etcd = median(sc[0]), median(etcdRates)
			if t.last {
				b.measureRSS(rRSSAfter, "after the write rows")
			}
			if err := resetAll(b.sc); err != nil {
				b.fail("throughput: emptying the sidecar cluster", err)
				break
			}
			b.scEmpty = true
		}
		b.notes = append(b.notes, fmt.Sprintf("write rows: each writer cycles over %d ids; every row starts from an empty sidecar cluster (its agents killed, data dirs removed, started again) and an etcd without those keys and leases. Rows through the leader and through the client agents repeat the etcd figures of the row spread over the servers above them (measured alternately with it, in this run).", idsPerWriter))
		b.notes = append(b.notes, "after the write rows: "+b.sc.streamSources()+".")
	}

	if need("tls") {
		b.scEmpty = false
		b.tlsSection()
	}

	if need("acl") {
		b.scEmpty = false
		b.aclSection()
	}

	if need("diag") {
		b.scEmpty = false
		b.diag()
	}
	if need("floor") {
		b.httpFloor()
	}
	if need("profile") {
		b.scEmpty = false
		b.profile()
	}
	if need("scale") {
		b.scaleSection(rScale, rRSSScale)
	}

	if b.sc != nil || b.et != nil {
		logf("stopping the clusters")
		b.sup.stopAll(5 * time.Second)
	}

	if need("dns") {
		if qps, err := b.dnsRow(); err != nil {
			b.fail("dns", err)
		} else {
			rDNS.sidecar = qps
		}
	}
	return b.finish(machine)
}

// phase spreads trial i of n over one TTL, so that the kills fall at
// every point of the holder's keepalive cycle.
func phase(i, n int, ttl time.Duration) time.Duration {
	return time.Duration((float64(i) + 0.5) / float64(n) * float64(ttl))
}

func mb(xs []float64) []string {
	var s []string
	for _, x := range xs {
		s = append(s, fmt.Sprintf("%.1f", x/1e6))
	}
	return s
}

func msList(xs []float64) []string {
	var s []string
	for _, x := range xs {
		s = append(s, fmt.Sprintf("%.1f", x*1000))
	}
	return s
}

// sidecarLeaderKill: a sequential writer registers through client 0 while
// the Raft leader dies by SIGKILL; it returns the longest gap between
// acknowledged writes and the time until a survivor names a new leader,
// then restarts the killed server and waits for a healthy cluster.
func (b *bench) sidecarLeaderKill(trial int) (gap, newLeader float64, err error) {
	c := b.sc
	if err := c.waitHealthy(60 * time.Second); err != nil {
		return 0, 0, err
	}
	cl := c.clients[0].c
	w := startGapWriter(func(i int) func(ctx context.Context) error {
		reg := registration(fmt.Sprintf("gap-%d", i%64), "gap", 1+i%60000, false)
		return func(ctx context.Context) error { _, err := cl.Register(ctx, reg); return err }
	})
	time.Sleep(time.Second)
	leader, err := c.leader()
	if err != nil {
		w.finish()
		return 0, 0, err
	}
	before := w.count()
	t0 := time.Now()
	leader.p.signal(syscall.SIGKILL)
	var led time.Duration
	for led == 0 && time.Since(t0) < 30*time.Second {
		for _, s := range c.servers {
			if s == leader {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			st, err := s.c.Status(ctx)
			cancel()
			if err == nil && st.Leader != "" && st.Leader != leader.name {
				led = time.Since(t0)
				break
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	waitWrites(w, t0, before)
	g, complete := w.finish()
	<-leader.p.done
	logf("sidecar leader kill %d: killed %s, new leader after %v, longest write gap %v (complete %v, %d writes)", trial+1, leader.name, led, g, complete, w.count())
	if rerr := c.run(leader); rerr != nil {
		return 0, 0, rerr
	}
	if herr := c.waitHealthy(60 * time.Second); herr != nil {
		return 0, 0, herr
	}
	if led == 0 || !complete {
		return 0, 0, fmt.Errorf("no new leader (%v) or no write after the kill", led)
	}
	return seconds(g), seconds(led), nil
}

// waitWrites lets the writer run until 4 s after the kill and at least 20
// acknowledged writes after it (at most 30 s).
func waitWrites(w *gapWriter, t0 time.Time, before int) {
	for time.Since(t0) < 30*time.Second {
		if time.Since(t0) > 4*time.Second && w.count() > before+20 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (b *bench) etcdLeaderKill(trial int) (gap, newLeader float64, err error) {
	c := b.et
	if err := c.waitHealthy(60 * time.Second); err != nil {
		return 0, 0, err
	}
	w := startGapWriter(func(i int) func(ctx context.Context) error {
		key, val := fmt.Sprintf("/bench/gap/%d", i%64), fmt.Sprintf(`{"id":"gap-%d","name":"gap","address":"10.0.0.1","port":%d}`, i%64, 1+i%60000)
		return func(ctx context.Context) error { _, err := c.cli.Put(ctx, key, val); return err }
	})
	time.Sleep(time.Second)
	leader, leaderID, err := c.leader()
	if err != nil {
		w.finish()
		return 0, 0, err
	}
	before := w.count()
	t0 := time.Now()
	leader.p.signal(syscall.SIGKILL)
	var led time.Duration
	for led == 0 && time.Since(t0) < 30*time.Second {
		for _, m := range c.members {
			if m == leader {
				continue
			}
			if _, l, err := c.status(m, 200*time.Millisecond); err == nil && l != 0 && l != leaderID {
				led = time.Since(t0)
				break
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	waitWrites(w, t0, before)
	g, complete := w.finish()
	<-leader.p.done
	logf("etcd leader kill %d: killed %s, new leader after %v, longest write gap %v (complete %v, %d writes)", trial+1, leader.name, led, g, complete, w.count())
	if rerr := c.restart(leader); rerr != nil {
		return 0, 0, rerr
	}
	if herr := c.waitHealthy(60 * time.Second); herr != nil {
		return 0, 0, herr
	}
	if led == 0 || !complete {
		return 0, 0, fmt.Errorf("no new leader (%v) or no write after the kill", led)
	}
	return seconds(g), seconds(led), nil
}

// dnsRow runs bench/dns/run.sh (dnsperf against a dev agent) for SRV and
// returns its max-rate queries per second.
func (b *bench) dnsRow() (float64, error) {
	if b.cfg.dnsScript == "" {
		return 0, fmt.Errorf("no -dns-script")
	}
	script, err := filepath.Abs(b.cfg.dnsScript)
	if err != nil {
		return 0, err
	}
	logf("DNS: %s (QTYPES=SRV DURATION=5)", b.cfg.dnsScript)
	p, err := b.sup.startEnv("bench-dns", []string{"QTYPES=SRV", "DURATION=5", "SIDECAR_BIN=" + b.cfg.sidecarBin}, "bash", script)
	if err != nil {
		return 0, err
	}
	select {
	case <-p.done:
	case <-time.After(5 * time.Minute):
		p.stop(10 * time.Second)
		return 0, fmt.Errorf("bench/dns/run.sh did not finish within 5 minutes")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		return 0, fmt.Errorf("bench/dns/run.sh exited %d: %s", code, p.tail())
	}
	line, err := p.waitLine("max rate:", time.Second)
	if err != nil {
		return 0, err
	}
	logf("DNS: %s", line)
	f := strings.Fields(line[strings.Index(line, "max rate:"):])
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "qps" {
			return strconv.ParseFloat(f[i+1], 64)
		}
	}
	return 0, fmt.Errorf("no qps in %q", line)
}

// finish prints the machine, the table and the notes on stdout (and to
// -out), and returns 1 if a section failed.
func (b *bench) finish(machine string) int {
	var out strings.Builder
	fmt.Fprintf(&out, "sidecar vs etcd, 3-server clusters on 127.0.0.1, default timings; medians of %d trials (graceful: %d; throughput: %s each, writers cycling over %d ids each)\n\n",
		b.cfg.trials, 2*b.cfg.trials, b.cfg.seconds, idsPerWriter)
	out.WriteString(machine)
	out.WriteString("\n")
	// Rows of sections not asked for (BENCH_SECTIONS) are left out.
	var rows []*row
	for _, r := range b.rows {
		if b.cfg.sections[r.sec] {
			rows = append(rows, r)
		}
	}
	if len(rows) > 0 {
		out.WriteString(markdown(rows, "sidecar", "etcd"))
	}
	if len(b.notes) > 0 {
		out.WriteString("\n")
		for _, n := range b.notes {
			out.WriteString("- " + n + "\n")
		}
	}
	if len(b.tlsRows) > 0 {
		out.WriteString("\nsidecar with TLS on (mutual TLS 1.3 on every agent's Raft/RPC port, certificates from `sidecar tls`, gossip encrypted with --encrypt; HTTP API plain on loopback) beside plain sidecar, two clusters of the same shape in this run, trials alternating\n\n")
		out.WriteString(markdown(b.tlsRows, "TLS", "plain"))
		if len(b.tlsNote) > 0 {
			out.WriteString("\n")
			for _, n := range b.tlsNote {
				out.WriteString("- " + n + "\n")
			}
		}
	}
	if len(b.aclRows) > 0 {
		out.WriteString("\nsidecar with ACLs on (--acl-default-policy deny, every request carrying a token with rules) beside plain sidecar, two clusters of the same shape in this run, trials alternating\n\n")
		out.WriteString(markdown(b.aclRows, "ACL", "plain"))
		for i, n := range b.aclNote {
			if i == 0 {
				out.WriteString("\n")
			}
			out.WriteString("- " + n + "\n")
		}
	}
	if len(b.errors) > 0 {
		out.WriteString("\nFailed sections (their rows show —):\n")
		for _, e := range b.errors {
			out.WriteString("- " + e + "\n")
		}
	}
	fmt.Print(out.String())
	if b.cfg.out != "" {
		if err := os.WriteFile(b.cfg.out, []byte(out.String()), 0o644); err != nil {
			logf("writing %s: %v", b.cfg.out, err)
		}
	}
	if len(b.errors) > 0 {
		return 1
	}
	return 0
}

// describeMachine names the CPU, memory, kernel, OS and the versions run.
func describeMachine(cfg config) string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(l[strings.Index(l, ":")+1:])
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb float64
		fmt.Sscanf(strings.SplitN(string(b), "\n", 2)[0], "MemTotal: %f kB", &kb)
		mem = fmt.Sprintf("%.0f GB RAM", kb/1024/1024)
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	osName := runtime.GOOS
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
				osName = strings.Trim(v, `"`)
			}
		}
	}
	version := func(bin string, args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, args...).Output()
		if err != nil {
			return "unknown"
		}
		return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	return fmt.Sprintf("- machine: %d CPUs (%s), %s, Linux %s, %s\n- versions: %s; %s; driver built with %s\n",
		runtime.NumCPU(), cpu, mem, strings.TrimSpace(string(kernel)), osName,
		version(cfg.sidecarBin, "version"), version(cfg.etcdBin, "--version"), runtime.Version())
}
