# Black-box fault injection (chaos/blackbox): 5 servers and 2 clients of
# bin/sidecar as processes in their own network namespaces, cut apart with
# iptables, paused with SIGSTOP and killed with SIGKILL. Needs root; the
# script installs iproute2/iptables if missing. See chaos/blackbox/README.md.

# The bounded run of `make test`: the full durability series (15 leader
# kills, 5 random kills) and a campaign of BLACKBOX_BOUNDED_DURATION; about
# 2 minutes on 2 cores. Every agent runs with mutual TLS on its Raft/RPC port
# and an encrypted gossip (files made per run by bin/sidecar tls); BLACKBOX_TLS=0
# runs the same in plain text, for comparison.
BLACKBOX_BOUNDED_DURATION ?= 60s
# Known sidecar bugs whose checks report without failing the bounded run
# (chaos/blackbox/README.md), e.g. nodesession; none since e71e794 fixed the
# node session renewal. `make chaos-blackbox` never excuses them.
BLACKBOX_KNOWN_BUGS ?=
# Also set by mk/chaos.mk; repeated so this fragment stands alone.
SEED     ?= $(shell date +%s)
DURATION ?= 30m

.PHONY: chaos-blackbox chaos-blackbox-bounded chaos-blackbox-compare

## chaos-blackbox: black-box campaign of DURATION (SEED=N DURATION=30m) and the kill -9 durability series (15 leader + 5 random kills); logs in /tmp/sidecar-chaos-logs/blackbox-SEED
chaos-blackbox: build
	./chaos/blackbox/run.sh durability $(SEED) 15 5
	./chaos/blackbox/run.sh campaign $(SEED) $(DURATION)

## chaos-blackbox-bounded: bounded black-box run of make test: durability series (15 leader + 5 random kills) and a 60 s campaign, about 2 minutes
chaos-blackbox-bounded: build
	./chaos/blackbox/run.sh durability $(SEED) 15 5
	BLACKBOX_KNOWN_BUGS=$(BLACKBOX_KNOWN_BUGS) ./chaos/blackbox/run.sh campaign $(SEED) $(BLACKBOX_BOUNDED_DURATION)

## chaos-blackbox-compare: the bounded black-box run (SEED=N) in plain text, then with TLS, one after the other; both sets of figures
chaos-blackbox-compare: build
	./chaos/blackbox/compare.sh $(SEED) $(BLACKBOX_BOUNDED_DURATION) 15 5

TEST_EXTRA += chaos-blackbox-bounded
