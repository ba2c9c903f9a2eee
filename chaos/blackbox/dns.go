package blackbox

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/sidecarhq/sidecar/api"
)

// DNSLagBound: in a healed cluster, a registration or deregistration shows
// in every node's DNS answers within this of its acknowledgement (the
// followers' commit lag plus the clients' change stream, well under it).
const DNSLagBound = 2 * time.Second

// srvSet asks n's DNS for <svc>.service.sidecar. SRV and returns its
// answer as sorted "address:port" (the address from the additional A of
// each target); a truncated UDP answer is asked again over TCP.
func srvSet(ctx context.Context, n *Node, svc string) ([]string, error) {
	m := new(dns.Msg)
	m.SetQuestion(svc+".service.sidecar.", dns.TypeSRV)
	m.SetEdns0(4096, false)
	var in *dns.Msg
	var err error
	for _, proto := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: proto, Timeout: time.Second}
		in, _, err = c.ExchangeContext(ctx, m, n.DNSAddr)
		if err != nil {
			return nil, fmt.Errorf("dns %s of %s on %s: %w", proto, svc, n.Name, err)
		}
		if !in.Truncated {
			break
		}
	}
	if in.Rcode != dns.RcodeSuccess && in.Rcode != dns.RcodeNameError {
		return nil, fmt.Errorf("dns of %s on %s: rcode %s", svc, n.Name, dns.RcodeToString[in.Rcode])
	}
	addr := map[string]string{}
	for _, rr := range in.Extra {
		if a, ok := rr.(*dns.A); ok {
			addr[strings.ToLower(a.Hdr.Name)] = a.A.String()
		}
	}
	var out []string
	for _, rr := range in.Answer {
		if s, ok := rr.(*dns.SRV); ok {
			out = append(out, fmt.Sprintf("%s:%d", addr[strings.ToLower(s.Target)], s.Port))
		}
	}
	sort.Strings(out)
	return out, nil
}

// registrySet is the same set from a consistent read of passing instances.
func registrySet(ctx context.Context, via *Node, svc string) ([]string, error) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	list, _, err := via.API.Service(rctx, svc, true, "", &api.QueryOptions{Consistent: true})
	if err != nil && !api.IsNotFound(err) {
		return nil, fmt.Errorf("consistent read of %s via %s: %w", svc, via.Name, err)
	}
	out := []string{}
	for _, in := range list {
		out = append(out, fmt.Sprintf("%s:%d", in.Address, in.Port))
	}
	sort.Strings(out)
	return out, nil
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// ProbeDNS registers a probe instance through owner, then deregisters it,
// and after each acknowledgement polls every node's DNS until it shows the
// change; it returns the two lags (the slowest node each time). A node that
// does not show it within limit is an error.
func ProbeDNS(ctx context.Context, c *Cluster, owner *Node, seq int, limit time.Duration) (reg, dereg time.Duration, err error) {
	svc := fmt.Sprintf("probe%d", seq)
	id := fmt.Sprintf("probe-%d", seq)
	port := 40000 + seq%20000
	want := []string{fmt.Sprintf("%s:%d", owner.IP, port)}
	// A quiet gap can still see an election (the aftermath of a pause):
	// like any app, the probe writes again on a 503 (an upsert, and a
	// deregistration already done is done), and measures from the write
	// that was acknowledged.
	err = retryUnavailable(ctx, func(ctx context.Context) error {
		_, err := owner.API.Register(ctx, api.ServiceRegistration{ID: id, Name: svc, Address: owner.IP, Port: port})
		return err
	})
	if err != nil {
		return 0, 0, fmt.Errorf("probe %s: register via %s: %w", id, owner.Name, err)
	}
	if reg, err = waitDNS(ctx, c, svc, want, limit); err != nil {
		return reg, 0, fmt.Errorf("probe %s registered via %s: %w", id, owner.Name, err)
	}
	retried := false
	err = retryUnavailable(ctx, func(ctx context.Context) error {
		err := owner.API.Deregister(ctx, id)
		if retried && api.IsNotFound(err) {
			return nil // an earlier attempt of unknown outcome took it
		}
		retried = true
		return err
	})
	if err != nil {
		return reg, 0, fmt.Errorf("probe %s: deregister via %s: %w", id, owner.Name, err)
	}
	if dereg, err = waitDNS(ctx, c, svc, nil, limit); err != nil {
		return reg, dereg, fmt.Errorf("probe %s deregistered via %s: %w", id, owner.Name, err)
	}
	return reg, dereg, nil
}

// retryUnavailable runs write, 5 s at most per attempt, again while it
// answers 503 (no leader, or a leader lost mid-write), for up to 15 s.
func retryUnavailable(ctx context.Context, write func(context.Context) error) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := write(wctx)
		cancel()
		var se *api.StatusError
		if err == nil || !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitDNS polls every node's DNS until each answers want; it returns how
// long the slowest took.
func waitDNS(ctx context.Context, c *Cluster, svc string, want []string, limit time.Duration) (time.Duration, error) {
	start := time.Now()
	pending := map[*Node]bool{}
	for _, n := range c.Nodes {
		pending[n] = true
	}
	err := poll(ctx, limit, 10*time.Millisecond, func() (bool, string) {
		var late []string
		for n := range pending {
			got, err := srvSet(ctx, n, svc)
			if err == nil && sameSet(got, want) {
				delete(pending, n)
				continue
			}
			late = append(late, fmt.Sprintf("%s %v (%v)", n.Name, got, err))
		}
		sort.Strings(late)
		return len(pending) == 0, fmt.Sprintf("want %v; %s", want, strings.Join(late, "; "))
	})
	return time.Since(start), err
}

// CompareDNS checks, for every service of a consistent read, that each
// node's SRV answer is the set of passing instances. It returns the number
// of services compared and one line per mismatch.
func CompareDNS(ctx context.Context, c *Cluster, via *Node) (int, []string, error) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	svcs, _, err := via.API.Services(rctx, &api.QueryOptions{Consistent: true})
	cancel()
	if err != nil {
		return 0, nil, fmt.Errorf("consistent list of services via %s: %w", via.Name, err)
	}
	names := make([]string, 0, len(svcs))
	for s := range svcs {
		names = append(names, s)
	}
	sort.Strings(names)
	var bad []string
	for _, svc := range names {
		want, err := registrySet(ctx, via, svc)
		if err != nil {
			return 0, nil, err
		}
		if len(want) >= 64 {
			return 0, nil, fmt.Errorf("service %s has %d passing instances, beyond DNS's 64-record cap: the workload must keep fewer", svc, len(want))
		}
		for _, n := range c.Nodes {
			got, err := srvSet(ctx, n, svc)
			if err != nil {
				bad = append(bad, err.Error())
				continue
			}
			if !sameSet(got, want) {
				bad = append(bad, fmt.Sprintf("%s on %s: DNS %v, registry %v", svc, n.Name, got, want))
			}
		}
	}
	return len(names), bad, nil
}
