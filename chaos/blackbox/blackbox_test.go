package blackbox

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"
)

// setup starts the cluster run.sh prepared the namespaces for, or skips.
func setup(t *testing.T) (*Cluster, int64) {
	t.Helper()
	env, ok, err := LoadEnv()
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Skip("black-box layer: run through chaos/blackbox/run.sh (it sets up the network namespaces and BLACKBOX_PREFIX)")
	}
	seed, err := strconv.ParseInt(os.Getenv("BLACKBOX_SEED"), 10, 64)
	if err != nil {
		t.Fatalf("BLACKBOX_SEED: %v", err)
	}
	c, err := NewCluster(env, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := c.InitFilters(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	if err := c.StartAll(ctx, 60*time.Second); err != nil {
		t.Fatalf("cluster start: %v", err)
	}
	if err := c.WaitConverged(ctx, 20*time.Second); err != nil {
		t.Fatalf("cluster start: %v", err)
	}
	t.Logf("%d servers and %d clients ready and converged in %v, Raft/RPC transport %s", len(c.Servers), len(c.Clients), time.Since(start).Round(time.Millisecond), env.Transport())
	return c, seed
}

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return n
}

func TestDurability(t *testing.T) {
	c, seed := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	res, err := RunDurability(ctx, c, seed, envInt(t, "BLACKBOX_LEADER_KILLS", 15), envInt(t, "BLACKBOX_RANDOM_KILLS", 5))
	res.Transport = c.Env.Transport()
	fmt.Println(res)
	if err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
	for _, f := range res.Failures {
		t.Errorf("seed %d: %s", seed, f)
	}
	if len(res.Lost) > 0 {
		t.Errorf("seed %d: %d acknowledged registrations lost, e.g. %v", seed, len(res.Lost), res.Lost[:min(10, len(res.Lost))])
	}
}

func TestCampaign(t *testing.T) {
	c, seed := setup(t)
	dur, err := time.ParseDuration(os.Getenv("BLACKBOX_DURATION"))
	if err != nil {
		t.Fatalf("BLACKBOX_DURATION: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), dur+10*time.Minute)
	defer cancel()
	out := os.Getenv("BLACKBOX_OUT")
	res, err := RunCampaign(ctx, c, seed, dur, out)
	if err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
	res.Transport = c.Env.Transport()
	fmt.Println(res)
	for _, f := range res.Failures {
		t.Errorf("seed %d: %s", seed, f)
	}
	for _, a := range res.Report.Anomalies {
		t.Errorf("seed %d: anomaly: %s", seed, a)
	}
	for _, v := range res.Report.Visualizations {
		t.Logf("visualization: %s", v)
	}
}
