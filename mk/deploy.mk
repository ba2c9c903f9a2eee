# Deployment (deploy/, examples/demo): container images and the compose
# end-to-end test. The unit tests of deploy/ (systemd unit, example env files,
# Kubernetes manifests) are ordinary Go tests that `make test-go` runs.

DOCKER     ?= docker
# Tags of the images `make image` builds and `make e2e` runs (kept after the
# run: a rebuild replaces them and removes the dangling old ones).
IMAGE      ?= sidecar:latest
DEMO_IMAGE ?= sidecar-demo:latest
DEMO_BIN   := bin/sidecar-demo

TEST_EXTRA += e2e
.PHONY: demo image e2e

## demo: static bin/sidecar-demo, the example app of deploy/compose and deploy/kubernetes
demo:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(DEMO_BIN) ./examples/demo

## image: the images FROM scratch around the static binaries, IMAGE (sidecar:latest) and DEMO_IMAGE (sidecar-demo:latest); needs a Docker engine, no pull
image: build demo
	DOCKER=$(DOCKER) deploy/container/build.sh deploy/container/Dockerfile $(BIN) $(IMAGE) $(VERSION)
	DOCKER=$(DOCKER) deploy/container/build.sh examples/demo/Dockerfile $(DEMO_BIN) $(DEMO_IMAGE) $(VERSION)

## e2e: build the images, run deploy/compose (3 servers, 2 demo apps) and test DNS SRV, failover of the leading app and of the Raft leader, then remove it all (fails when no Docker engine answers; under 5 minutes)
e2e: image
	DOCKER=$(DOCKER) SIDECAR_IMAGE=$(IMAGE) DEMO_IMAGE=$(DEMO_IMAGE) GO=$(GO) deploy/e2e.sh
