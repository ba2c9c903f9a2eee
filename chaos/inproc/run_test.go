package inproc

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sidecarhq/sidecar/internal/hangwatch"
)

func TestMain(m *testing.M) {
	hangwatch.Start()
	goleak.VerifyTestMain(m)
}

// TestCampaign runs one campaign. CHAOS_SEED picks the seed (default: from
// the clock), CHAOS_DURATION its length (default 5s, so that `go test ./...`
// stays quick), CHAOS_SERVERS 3 or 5 (default: from the seed), CHAOS_OUT
// where visualizations go, CHAOS_TRANSPORT what Raft crosses under the
// faults: tls (default), tcp or inmem (see stream.go). A build with a bug switch (tag chaosbug_*) must
// report anomalies; a normal build must report none. A build with a bug
// switch stops its clients and faults at the first anomaly
// (Config.StopOnAnomaly); CHAOS_STOP_EARLY=0 runs it to its length,
// CHAOS_STOP_EARLY=1 stops a normal build early too.
func TestCampaign(t *testing.T) {
	seed := time.Now().UnixNano() % 1_000_000
	if s := os.Getenv("CHAOS_SEED"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("CHAOS_SEED: %v", err)
		}
		seed = v
	}
	dur := 5 * time.Second
	if s := os.Getenv("CHAOS_DURATION"); s != "" {
		v, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("CHAOS_DURATION: %v", err)
		}
		dur = v
	}
	servers := 0
	if s := os.Getenv("CHAOS_SERVERS"); s != "" {
		servers, _ = strconv.Atoi(s)
	}
	transport := TransportTLS
	if s := os.Getenv("CHAOS_TRANSPORT"); s != "" {
		if !ValidTransport(s) {
			t.Fatalf("CHAOS_TRANSPORT %q: want tls, tcp or inmem", s)
		}
		transport = s
	}
	t.Logf("seed %d, duration %v, transport %s, planted bug %q (replay: CHAOS_SEED=%d CHAOS_TRANSPORT=%s)", seed, dur, transport, plantedBug, seed, transport)
	res, err := Run(context.Background(), Config{
		Seed: seed, Duration: dur, Servers: servers, Dir: t.TempDir(), OutDir: os.Getenv("CHAOS_OUT"),
		Logf: t.Logf, Transport: transport, NoACL: os.Getenv("CHAOS_ACL") == "0",
		StopOnAnomaly: os.Getenv("CHAOS_STOP_EARLY") == "1" || plantedBug != "" && os.Getenv("CHAOS_STOP_EARLY") != "0",
	})
	if err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
	t.Logf("seed %d: %d servers, converged in %v after healing, run took %v, new leader after leader crash: %v\n%s",
		seed, res.Servers, res.Convergence.Round(time.Millisecond), res.Elapsed.Round(time.Second), res.LeaderRecovery, res.Report)
	// One line for scripts (chaos/run.sh compare sums them up).
	var newLeader []string
	for _, d := range res.LeaderRecovery {
		newLeader = append(newLeader, strconv.FormatInt(d.Milliseconds(), 10))
	}
	if len(newLeader) == 0 {
		newLeader = []string{"-"}
	}
	first := "-"
	if res.FirstAnomaly > 0 {
		first = strconv.FormatInt(res.FirstAnomaly.Milliseconds(), 10)
	}
	t.Logf("CHAOS-RESULT seed=%d transport=%s bug=%s ops=%d faults=%d handovers=%d anomalies=%d newleader_ms=%s converge_ms=%d first_anomaly_ms=%s elapsed_ms=%d",
		seed, res.Transport, plantedBug, res.Report.Ops, res.Report.Faults, res.Report.Handovers, len(res.Report.Anomalies),
		strings.Join(newLeader, ","), res.Convergence.Milliseconds(), first, res.Elapsed.Milliseconds())
	switch {
	case plantedBug == "" && len(res.Report.Anomalies) > 0:
		t.Errorf("seed %d: %d anomalies (replay with CHAOS_SEED=%d); visualizations: %s", seed,
			len(res.Report.Anomalies), seed, strings.Join(res.Report.Visualizations, " "))
	case plantedBug != "" && len(res.Report.Anomalies) == 0:
		t.Errorf("seed %d: bug %q planted, no anomaly found", seed, plantedBug)
	}
	if res.Report.Ops == 0 || res.Report.Faults == 0 && dur >= 5*time.Second && res.FirstAnomaly == 0 {
		t.Errorf("seed %d: the run did nothing (%d operations, %d faults)", seed, res.Report.Ops, res.Report.Faults)
	}
}
