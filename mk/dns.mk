# DNS interoperability (test/dnsinterop): sidecar's DNS behind unbound with
# strict query-name minimisation, dnsmasq with glibc's resolver behind it,
# systemd-resolved with dig and glibc behind it, and HAProxy's
# server-template over SRV, from Debian's packages (installed when missing;
# systemd-resolved's only downloaded, cached in ~/.cache/sidecar-dnsinterop,
# and run in network and mount namespaces of the test's own, since
# installing it would take over the machine's /etc/resolv.conf); and
# CoreDNS, built from the Go module proxy with only the plugins of its
# recipe (test/dnsinterop/coredns, a module of its own; the binary is kept
# in ~/.cache/sidecar-dnsinterop), in namespaces of its own. The
# configurations are README.md's recipes. Needs root (apt-get, unshare,
# mount); skips otherwise.
# About 40 s, most of it the 30 s HAProxy must hold an unchanged service;
# about 80 s on a fresh machine, where CoreDNS builds meanwhile.

.PHONY: dns-interop

## dns-interop: sidecar's DNS behind unbound (strict qname minimisation), dnsmasq + glibc getent, systemd-resolved and CoreDNS + dig and getent, HAProxy server-template over UDP and TCP; README recipes; needs root, installs Debian packages if missing; about 40 s (80 s the first time: CoreDNS builds)
dns-interop: build
	SIDECAR_DNS_INTEROP=1 $(GO) test -race -count=1 -v -run '^TestInterop$$' ./test/dnsinterop

TEST_EXTRA += dns-interop
