# DNS interoperability (test/dnsinterop): sidecar's DNS behind unbound with
# strict query-name minimisation, dnsmasq with glibc's resolver behind it,
# systemd-resolved with dig and glibc behind it, and HAProxy's
# server-template over SRV, from Debian's packages (installed when missing;
# systemd-resolved's only downloaded, cached in ~/.cache/sidecar-dnsinterop,
# and run in network and mount namespaces of the test's own, since
# installing it would take over the machine's /etc/resolv.conf). The
# configurations are README.md's recipes. Needs root (apt-get, unshare,
# mount); skips otherwise.
# About 40 s, most of it the 30 s HAProxy must hold an unchanged service.

.PHONY: dns-interop

## dns-interop: sidecar's DNS behind unbound (strict qname minimisation), dnsmasq + glibc getent, systemd-resolved + dig and getent, HAProxy server-template over UDP and TCP; README recipes; needs root, installs Debian packages if missing; about 40 s
dns-interop: build
	SIDECAR_DNS_INTEROP=1 $(GO) test -race -count=1 -v -run '^TestInterop$$' ./test/dnsinterop

TEST_EXTRA += dns-interop
