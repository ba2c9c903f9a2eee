# make bench: sidecar against etcd on the same work, in one run (bench/).
.PHONY: bench

## bench: sidecar vs etcd, 3-server clusters each on loopback (installs Debian's etcd-server if missing): one table of medians with ratios (BENCH_TRIALS=5; ~10 min)
bench: build
	./bench/run.sh

.PHONY: bench-scale
## bench-scale: registrations through one server at 0-10k and 40k-60k instances, their ratio and heap per instance (median of BENCH_SCALE_COUNT=3 runs; ~2 min)
BENCH_SCALE_COUNT ?= 3
bench-scale:
	@out=$$(mktemp); \
	$(GO) test -run '^$$' -bench RegisterScale -benchtime 1x -count $(BENCH_SCALE_COUNT) -timeout 30m ./agent | grep -E '^(Benchmark|ok|FAIL)' | tee $$out; \
	for m in regs/s_0-10k regs/s_40k-60k ratio heapB/instance; do \
		awk -v m=$$m '/^Benchmark/ {for (i = 3; i < NF; i++) if ($$(i+1) == m) print $$i}' $$out | sort -g | \
			awk -v m=$$m '{v[NR] = $$1} END {if (NR) printf "median %-16s %s (n=%d)\n", m, v[int((NR+1)/2)], NR}'; \
	done; rm -f $$out
