package test

import (
	"net/http"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestProcess_DNSWeightsAndZone: through the built binary, a weight given
// to `sidecar register --weight` or PUT /v1/services is the SRV weight; no
// weight is 1; the apex has its NS and the empty non-terminals a minimising
// resolver walks through answer NOERROR.
func TestProcess_DNSWeightsAndZone(t *testing.T) {
	httpAddr, dnsAddr := freeAddr(t), freeAddr(t)
	start(t, "agent", "--dev", "--name", "dev", "--http-addr", httpAddr, "--dns-addr", dnsAddr,
		"--bind-addr", freeAddr(t), "--raft-addr", freeAddr(t))
	url := "http://" + httpAddr
	deadline := time.Now().Add(20 * time.Second)
	for {
		if resp, err := http.Get(url + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("dev agent not ready within 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}

	cli := exec.Command(binary, "register", "--http-addr", httpAddr, "--name", "web", "--port", "8001", "--address", "10.0.0.1", "--weight", "3")
	if out, err := cli.CombinedOutput(); err != nil {
		t.Fatalf("sidecar register --weight 3: %v\n%s", err, out)
	}
	for _, body := range []string{
		`{"id":"web-2","name":"web","address":"10.0.0.2","port":8002,"weight":7}`,
		`{"id":"web-3","name":"web","address":"10.0.0.3","port":8003}`,
	} {
		if code, out := call(t, "PUT", url+"/v1/services", body); code != 200 {
			t.Fatalf("register %s: %d %s", body, code, out)
		}
	}
	if code, out := call(t, "PUT", url+"/v1/services", `{"id":"web-4","name":"web","port":8004,"weight":0}`); code != 400 {
		t.Errorf("weight 0: %d %s, want 400", code, out)
	}

	ask := func(name string, qtype uint16) *dns.Msg {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		in, _, err := (&dns.Client{Net: "tcp", Timeout: 2 * time.Second}).Exchange(m, dnsAddr)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return in
	}
	var weights []string
	for _, rr := range ask("_web._tcp.service.sidecar.", dns.TypeSRV).Answer {
		srv := rr.(*dns.SRV)
		weights = append(weights, srv.Target+" "+strconv.Itoa(int(srv.Port))+" w"+strconv.Itoa(int(srv.Weight)))
	}
	slices.Sort(weights)
	want := []string{"0a000001.addr.sidecar. 8001 w3", "0a000002.addr.sidecar. 8002 w7", "0a000003.addr.sidecar. 8003 w1"}
	if !slices.Equal(weights, want) {
		t.Errorf("SRV records %q, want %q", weights, want)
	}

	ns := ask("sidecar.", dns.TypeNS)
	if len(ns.Answer) != 1 || ns.Answer[0].(*dns.NS).Ns != "ns.sidecar." {
		t.Errorf("NS sidecar.: %v", ns.Answer)
	}
	if a := ask("ns.sidecar.", dns.TypeA); len(a.Answer) != 1 || !strings.HasPrefix(dnsAddr, a.Answer[0].(*dns.A).A.String()+":") {
		t.Errorf("ns.sidecar. A: %v, want the agent's DNS address %s", a.Answer, dnsAddr)
	}
	for _, name := range []string{"service.sidecar.", "_tcp.service.sidecar.", "node.sidecar.", "addr.sidecar."} {
		if r := ask(name, dns.TypeA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 || len(r.Ns) != 1 {
			t.Errorf("%s: %s with %d answers, %d authority records; want NOERROR, none, the SOA", name, dns.RcodeToString[r.Rcode], len(r.Answer), len(r.Ns))
		}
	}
	if r := ask("leader.sidecar.", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("leader.sidecar. without elections: %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
}
