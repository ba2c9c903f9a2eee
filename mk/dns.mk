# DNS interoperability (test/dnsinterop): sidecar's DNS behind unbound with
# strict query-name minimisation, dnsmasq with glibc's resolver behind it,
# and HAProxy's server-template over SRV, from Debian's packages (installed
# when missing). The configurations are README.md's recipes. Needs root
# (apt-get, a mount namespace for its own resolv.conf); skips otherwise.
# About 35 s, most of it the 30 s HAProxy must hold an unchanged service.

.PHONY: dns-interop

## dns-interop: sidecar's DNS behind unbound (strict qname minimisation), dnsmasq + glibc getent, HAProxy server-template over UDP and TCP; README recipes; needs root, installs Debian packages if missing; about 35 s
dns-interop: build
	SIDECAR_DNS_INTEROP=1 $(GO) test -race -count=1 -v -run '^TestInterop$$' ./test/dnsinterop

TEST_EXTRA += dns-interop
