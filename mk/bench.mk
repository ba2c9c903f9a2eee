# make bench: sidecar against etcd on the same work, in one run (bench/).
.PHONY: bench

## bench: sidecar vs etcd, 3-server clusters each on loopback (installs Debian's etcd-server if missing): one table of medians with ratios (BENCH_TRIALS=5; ~10 min)
bench: build
	./bench/run.sh
