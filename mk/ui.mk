# The web UI (ui/): a browser test that drives Debian's chromium (installed
# with apt-get when missing; needs root then) over the DevTools protocol
# against a 3-server + 2-client in-process cluster, prints how long the page
# took to show each change, and writes screenshots to UI_SHOTS. About 20 s.
# ui-size prints what the embedded UI adds to the binary.

UI_SHOTS ?= /tmp/sidecar-ui-shots

.PHONY: ui-browser ui-size

## ui-browser: the web UI in headless chromium (installed if missing) against a 3+2 cluster: rendered states, update latencies, screenshots in UI_SHOTS (/tmp/sidecar-ui-shots)
ui-browser:
	SIDECAR_UI_BROWSER=1 SIDECAR_UI_SHOTS=$(UI_SHOTS) $(GO) test -count=1 -v -run '^TestBrowser_' ./ui

## ui-size: bytes the embedded web UI adds to bin/sidecar (built with and without its files)
ui-size:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $$tmp/with ./cmd/sidecar; \
	CGO_ENABLED=0 $(GO) build -tags sidecar_noui -trimpath -ldflags '$(LDFLAGS)' -o $$tmp/without ./cmd/sidecar; \
	with=$$(stat -c %s $$tmp/with); without=$$(stat -c %s $$tmp/without); \
	echo "bin/sidecar with the UI: $$with bytes, without: $$without bytes, UI adds $$((with - without)) bytes ($$(( (with - without) / 1024 )) KiB; budget 300 KiB)"

TEST_EXTRA += ui-browser
