# make bench: sidecar against etcd on the same work, in one run (bench/).
.PHONY: bench

## bench: sidecar vs etcd, 3-server clusters each on loopback (installs Debian's etcd-server if missing): one table of medians with ratios, and sidecar with TLS beside plain sidecar (BENCH_TRIALS=5; ~15 min; BENCH_SECTIONS=tls,throughput,... for a subset)
bench: build
	./bench/run.sh

.PHONY: bench-scale bench-scale-long
## bench-scale: registrations through one server per 10k step up to BENCH_SCALE_INSTANCES (100k), last step vs first, DNS SRV p99 after each step, heap and RSS per instance, GET /v1/services, snapshot size and time, restart time (medians of BENCH_SCALE_COUNT=3 runs); then the agent's CPU with 10,000 blocked queries and 100 unrelated writes/s (~8 min in all)
BENCH_SCALE_COUNT ?= 3
BENCH_SCALE_TIMEOUT ?= 30m
bench-scale: build
	@out=$$(mktemp); \
	$(GO) test -run '^$$' -bench RegisterScale -benchtime 1x -count $(BENCH_SCALE_COUNT) -timeout $(BENCH_SCALE_TIMEOUT) ./agent | grep -E '^(Benchmark|ok|FAIL)|RegisterScale at|heapB/instance' | tee $$out; \
	for m in regs/s_0-10k regs/s_last10k ratio heapB/instance rssB/instance srv_p99_ms services_ms snapshot_MiB snapshot_ms restart_s; do \
		awk -v m=$$m '/heapB\/instance/ {for (i = 3; i < NF; i++) if ($$(i+1) == m) print $$i}' $$out | sort -g | \
			awk -v m=$$m '{v[NR] = $$1} END {if (NR) printf "median %-16s %s (n=%d)\n", m, v[int((NR+1)/2)], NR}'; \
	done; rm -f $$out
	$(GO) test -run '^$$' -bench BlockingQueries10k -benchtime 1x -timeout 10m ./test | grep -E '^(Benchmark|ok|FAIL)'

## bench-scale-long: bench-scale at 1,000,000 instances, one run (~15 min)
bench-scale-long:
	BENCH_SCALE_INSTANCES=1000000 $(MAKE) bench-scale BENCH_SCALE_COUNT=1 BENCH_SCALE_TIMEOUT=150m
