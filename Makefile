# sidecar's build, test and check targets. CI runs `make test` (via .ci/run);
# `make help` lists every target with its comment.

GO       ?= go
# The version stamped into the binary (`sidecar version`): the git
# description when there is one, else "dev".
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
BIN      := bin/sidecar
# How long each fuzz target runs under `make fuzz`, and extra flags for
# `go test -fuzz` (FUZZFLAGS=-parallel=1 leaves a core free).
FUZZTIME ?= 30s
FUZZFLAGS ?=

# Process-level tests exec this binary instead of building their own.
export SIDECAR_BIN := $(CURDIR)/$(BIN)

.DEFAULT_GOAL := build

# Each area (deploy, chaos, bench) keeps its targets in mk/<area>.mk and adds
# what `make test` must also run to TEST_EXTRA.
TEST_EXTRA :=
-include mk/*.mk
.PHONY: help build run test test-go integ fuzz bench-go bench-dns lint tidy-check

## help: list the targets
help:
	@grep -hE '^## ' $(MAKEFILE_LIST) | sed 's/^## /  /'

## build: static binary at bin/sidecar (CGO off, version from git)
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/sidecar

## run: a dev agent (one in-memory server on loopback: HTTP 127.0.0.1:7080, DNS 127.0.0.1:7053)
run:
	$(GO) run -ldflags '$(LDFLAGS)' ./cmd/sidecar agent --dev

## test: every test with the race detector, fuzz seed corpora included (builds bin/sidecar first for the process tests), then TEST_EXTRA
test: build test-go $(TEST_EXTRA)

## test-go: go test -race of every package
test-go: build
	$(GO) test -race -count=1 ./...

## integ: only the process-level tests in ./test, against bin/sidecar
integ: build
	$(GO) test -race -count=1 -v ./test/...

## fuzz: run every Fuzz* target of every package for FUZZTIME each (default 30s)
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
		for fn in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "== $$pkg $$fn ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) $(FUZZFLAGS) $$pkg; \
		done; \
	done

## bench-go: every Go benchmark, with allocations
bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./...

## bench-dns: dnsperf (installed from Debian if missing) against a dev agent with one service of 50 instances: SRV and A, 10 s each
bench-dns: build
	./bench/dns/run.sh

## lint: go vet, and gofmt must have nothing to change
lint:
	$(GO) vet ./...
	@out=$$(gofmt -l .); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

## tidy-check: go.mod and go.sum are tidy (fails if `go mod tidy` changes them)
tidy-check:
	$(GO) mod tidy
	git diff --exit-code go.mod go.sum
