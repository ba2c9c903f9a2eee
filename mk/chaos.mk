# Fault-injection suite (chaos/): real Raft servers under partitions, one-way
# cuts, delays, loss and crashes, histories checked with porcupine and the
# guarantees of SPEC.md. See chaos/doc.go and chaos/run.sh.

# Seed of `make chaos` (default: the clock) and its length.
SEED     ?= $(shell date +%s)
DURATION ?= 30m
# The bounded run of `make test`: two campaigns (3 and 5 servers) of
# CHAOS_BOUNDED_DURATION, then each bug switch on CHAOS_BUG_RUNS seeds of
# CHAOS_BUG_DURATION, each switch detected at least once (the rate is
# printed; `make chaos-bugs` asks for most runs). Up to CHAOS_JOBS campaigns
# run at once (chaos/run.sh). About 5.5 minutes on 2 cores. 40 s per bug
# run: with keepalives confirmed by a quorum, leaselocalclock needs a server
# to lose and regain leadership within the run (0/5 detected at 20 s, 5/6
# at 40 s).
# Every campaign's servers talk Raft over mutual TLS 1.3 under the faults
# (CHAOS_TRANSPORT=tls, chaos/inproc/stream.go); CHAOS_TRANSPORT=inmem runs
# the layer as before TLS, tcp over plain loopback TCP.
CHAOS_BOUNDED_DURATION ?= 60s
CHAOS_BUG_DURATION     ?= 40s
CHAOS_BUG_RUNS         ?= 4

.PHONY: chaos chaos-bounded chaos-bugs chaos-compare

## chaos: long fault-injection campaign (SEED=N DURATION=30m): prints operations, faults, anomalies, handovers; on failure the seed and porcupine visualizations
chaos:
	./chaos/run.sh campaign $(SEED) $(DURATION) 1

## chaos-bounded: bounded fault-injection run of make test (2 campaigns + every bug switch must be detected), under 8 minutes
chaos-bounded:
	./chaos/run.sh campaign $(SEED) $(CHAOS_BOUNDED_DURATION) 2
	CHAOS_MIN_FOUND=1 ./chaos/run.sh bugs $(SEED) $(CHAOS_BUG_DURATION) $(CHAOS_BUG_RUNS)

## chaos-bugs: every bug switch on 5 seeds; each must be detected in most runs
chaos-bugs:
	./chaos/run.sh bugs $(SEED) $(CHAOS_BUG_DURATION) 5

## chaos-compare: the same CHAOS_COMPARE_RUNS seeds (SEED=N) of CHAOS_BOUNDED_DURATION over raft's in-memory transport and over TLS: handovers, new leader after a leader crash, convergence
CHAOS_COMPARE_RUNS ?= 6
chaos-compare:
	./chaos/run.sh compare $(SEED) $(CHAOS_BOUNDED_DURATION) $(CHAOS_COMPARE_RUNS) inmem tls

TEST_EXTRA += chaos-bounded
