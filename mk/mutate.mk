# make mutate: mutation testing of the safety core (not part of make test).
.PHONY: mutate
MUTATE_PKGS ?= fsm acl tlsutil localstate election dnsserver
## mutate: gremlins v0.6.0 (installed if missing) on MUTATE_PKGS (fsm acl tlsutil localstate election dnsserver), each with its own tests; one table, non-zero below efficacy 95% (fsm, acl, tlsutil) / 85% (the others) or mutant coverage 90% (about an hour; MUTATE_PKGS=fsm for one, MUTATE_DIFF=main for changed lines only)
mutate:
	@test -x "$$(go env GOPATH)/bin/gremlins" || $(GO) install github.com/go-gremlins/gremlins/cmd/gremlins@v0.6.0
	./scripts/mutate.sh $(MUTATE_PKGS)
