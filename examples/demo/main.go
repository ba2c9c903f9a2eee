// Command sidecar-demo is the small application of sidecar's deployment
// examples (deploy/compose, deploy/kubernetes). It runs beside its own
// sidecar agent, in the same network namespace, and uses it the way any
// application would:
//
//   - it registers itself as an instance of -service (with an HTTP check on
//     its own /healthz) through the agent's HTTP API;
//   - it finds its peers with a DNS SRV lookup of
//     _<service>._tcp.service.<domain> on the agent's DNS address, and asks
//     each one who it is (GET /whoami);
//   - with -election, it campaigns with a connection-bound candidacy
//     ("hold":"connection") and runs its leader-only job exactly while the
//     agent says it leads: the job starts on {"leader":true,"token":N} and
//     stops on anything else (a not-leader line, an error, the connection
//     to the agent breaking);
//   - it reports all of that as JSON on GET /status, which is what the
//     end-to-end test reads.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/sidecarhq/sidecar/api"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stderr))
}

// config holds the flags.
type config struct {
	name        string
	listen      string
	port        int
	service     string
	election    string
	value       string
	holdTTL     string
	sidecarHTTP string
	sidecarDNS  string
	domain      string
	interval    time.Duration
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	host, _ := os.Hostname()
	c := &config{}
	fs := flag.NewFlagSet("sidecar-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.name, "name", host, "this instance's name: the instance id, the candidate id and what /whoami answers")
	fs.StringVar(&c.listen, "listen", "0.0.0.0:8080", "HTTP listen address")
	fs.IntVar(&c.port, "port", 0, "port registered for this instance (default: the port of -listen)")
	fs.StringVar(&c.service, "service", "demo", "service name to register as and to resolve")
	fs.StringVar(&c.election, "election", "", "election to campaign in; the leader-only job runs while leading (empty: no campaign)")
	fs.StringVar(&c.value, "value", "", "value published while leading (default: <first non-loopback IP>:<port>)")
	fs.StringVar(&c.holdTTL, "hold-ttl", "", "TTL of the candidacy's lease, used only if the agent dies (default: the agent's --session-ttl)")
	fs.StringVar(&c.sidecarHTTP, "sidecar-http", "127.0.0.1:7080", "the local sidecar's HTTP address")
	fs.StringVar(&c.sidecarDNS, "sidecar-dns", "127.0.0.1:7053", "the local sidecar's DNS address")
	fs.StringVar(&c.domain, "domain", "sidecar.", "the sidecar DNS domain")
	fs.DurationVar(&c.interval, "interval", time.Second, "how often to resolve peers and to tick the leader-only job")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if c.port == 0 {
		_, p, err := net.SplitHostPort(c.listen)
		if err != nil {
			return nil, fmt.Errorf("-listen: %w", err)
		}
		if c.port, err = strconv.Atoi(p); err != nil || c.port == 0 {
			return nil, fmt.Errorf("-listen %q: give a fixed port or -port", c.listen)
		}
	}
	if c.value == "" {
		c.value = net.JoinHostPort(firstIP(), strconv.Itoa(c.port))
	}
	if c.domain == "" || c.domain[len(c.domain)-1] != '.' {
		c.domain += "."
	}
	if c.interval <= 0 {
		return nil, errors.New("-interval must be positive")
	}
	return c, nil
}

// firstIP is the first non-loopback IPv4 address, the one the agent
// advertises by default; loopback if there is none.
func firstIP() string {
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			return n.IP.String()
		}
	}
	return "127.0.0.1"
}

// Peer is one instance found by the SRV lookup.
type Peer struct {
	Target  string `json:"target"`
	Address string `json:"address"`
	Port    int    `json:"port"`
	// Name is what the peer's GET /whoami answered; Error why it did not.
	Name  string `json:"name,omitempty"`
	Error string `json:"error,omitempty"`
}

// Report is the body of GET /status.
type Report struct {
	Name       string `json:"name"`
	Service    string `json:"service"`
	Registered bool   `json:"registered"`
	// Peers are the answers of the last SRV lookup of the service, this
	// instance included, sorted by address and port (none when the lookup
	// failed: ResolveError says why).
	Peers         []Peer    `json:"peers"`
	ResolvedAt    time.Time `json:"resolved_at"`
	ResolveError  string    `json:"resolve_error,omitempty"`
	Election      string    `json:"election,omitempty"`
	Leader        bool      `json:"leader"`
	Token         uint64    `json:"token,omitempty"`
	CurrentLeader string    `json:"current_leader,omitempty"`
	CampaignError string    `json:"campaign_error,omitempty"`
	// Terms counts the times this instance became leader; WorkTicks the
	// ticks its leader-only job ran, over all terms.
	Terms     int    `json:"terms"`
	WorkTicks uint64 `json:"work_ticks"`
}

// app holds the state reported on /status.
type app struct {
	cfg    *config
	log    *slog.Logger
	client *api.Client
	peerHC *http.Client

	mu  sync.Mutex
	rep Report
}

func run(ctx context.Context, args []string, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "sidecar-demo:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("name", cfg.name)
	client, err := api.NewClient(cfg.sidecarHTTP)
	if err != nil {
		fmt.Fprintln(stderr, "sidecar-demo: -sidecar-http:", err)
		return 2
	}
	if client.Token, err = tokenFromEnv(); err != nil {
		fmt.Fprintln(stderr, "sidecar-demo:", err)
		return 2
	}
	a := &app{cfg: cfg, log: log, client: client, peerHC: &http.Client{Timeout: time.Second},
		rep: Report{Name: cfg.name, Service: cfg.service, Election: cfg.election, Peers: []Peer{}}}

	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		log.Error("listen", "err", err)
		return 1
	}
	srv := &http.Server{Handler: a.routes(), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	log.Info("sidecar-demo serving", "listen", ln.Addr().String(), "service", cfg.service, "election", cfg.election, "value", cfg.value)

	var wg sync.WaitGroup
	loops := []func(context.Context){a.registerLoop, a.resolveLoop}
	if cfg.election != "" {
		loops = append(loops, a.campaignLoop)
	}
	for _, loop := range loops {
		wg.Add(1)
		go func() { defer wg.Done(); loop(ctx) }()
	}
	<-ctx.Done()
	log.Info("shutting down")
	wg.Wait() // the campaign loop closes its stream: the agent resigns at once
	dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := client.Deregister(dctx, cfg.name); err != nil {
		log.Warn("deregister", "err", err)
	}
	srv.Shutdown(dctx)
	return 0
}

func (a *app) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /whoami", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]string{"name": a.cfg.name})
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, a.report()) })
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func (a *app) report() Report {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.rep
	r.Peers = append([]Peer{}, r.Peers...)
	return r
}

func (a *app) update(f func(*Report)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f(&a.rep)
}

// every runs f now and then every d until ctx ends.
func every(ctx context.Context, d time.Duration, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		f()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// registerLoop keeps this instance registered: it registers when the
// agent's copy of the registry does not hold it (at start, and after the
// agent restarted on a fresh node).
func (a *app) registerLoop(ctx context.Context) {
	reg := api.ServiceRegistration{
		ID: a.cfg.name, Name: a.cfg.service, Port: a.cfg.port,
		Checks: []api.CheckDefinition{{
			Type: "http", HTTP: "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(a.cfg.port)) + "/healthz",
			Interval: "1s", Timeout: "1s",
		}},
	}
	every(ctx, 2*a.cfg.interval, func() {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		list, _, err := a.client.Service(rctx, a.cfg.service, false, "", nil)
		if err == nil {
			for _, in := range list {
				if in.ID == reg.ID {
					a.update(func(r *Report) { r.Registered = true })
					return
				}
			}
			_, err = a.client.Register(rctx, reg)
		}
		a.update(func(r *Report) { r.Registered = err == nil })
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("register with the local sidecar", "err", err)
			}
			return
		}
		a.log.Info("registered", "id", reg.ID, "service", reg.Name, "port", reg.Port)
	})
}

// resolveLoop looks the service up over DNS SRV through the local agent and
// asks every instance found who it is.
func (a *app) resolveLoop(ctx context.Context) {
	qname := "_" + a.cfg.service + "._tcp.service." + a.cfg.domain
	dc := &dns.Client{Timeout: time.Second}
	every(ctx, a.cfg.interval, func() {
		peers, err := a.lookup(ctx, dc, qname)
		a.update(func(r *Report) {
			r.ResolvedAt = time.Now().UTC()
			r.ResolveError, r.Peers = "", peers
			if err != nil {
				r.ResolveError, r.Peers = err.Error(), []Peer{}
			}
		})
	})
}

func (a *app) lookup(ctx context.Context, dc *dns.Client, qname string) ([]Peer, error) {
	m := new(dns.Msg)
	m.SetQuestion(qname, dns.TypeSRV)
	in, _, err := dc.ExchangeContext(ctx, m, a.cfg.sidecarDNS)
	if err != nil {
		return nil, err
	}
	if in.Truncated {
		in, _, err = (&dns.Client{Net: "tcp", Timeout: dc.Timeout}).ExchangeContext(ctx, m, a.cfg.sidecarDNS)
		if err != nil {
			return nil, err
		}
	}
	if in.Rcode != dns.RcodeSuccess {
		return nil, fmt.Errorf("SRV %s: %s", qname, dns.RcodeToString[in.Rcode])
	}
	addrs := map[string]string{}
	for _, rr := range in.Extra {
		switch rr := rr.(type) {
		case *dns.A:
			addrs[dns.CanonicalName(rr.Hdr.Name)] = rr.A.String()
		case *dns.AAAA:
			addrs[dns.CanonicalName(rr.Hdr.Name)] = rr.AAAA.String()
		}
	}
	peers := []Peer{}
	for _, rr := range in.Answer {
		srv, ok := rr.(*dns.SRV)
		if !ok {
			continue
		}
		p := Peer{Target: srv.Target, Address: addrs[dns.CanonicalName(srv.Target)], Port: int(srv.Port)}
		if p.Address == "" {
			p.Error = "no address record for the target"
		} else {
			p.Name, err = a.whoami(ctx, net.JoinHostPort(p.Address, strconv.Itoa(p.Port)))
			if err != nil {
				p.Error = err.Error()
			}
		}
		peers = append(peers, p)
	}
	sort.Slice(peers, func(i, j int) bool {
		if peers[i].Address != peers[j].Address {
			return peers[i].Address < peers[j].Address
		}
		return peers[i].Port < peers[j].Port
	})
	return peers, nil
}

func (a *app) whoami(ctx context.Context, hostport string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+hostport+"/whoami", nil)
	if err != nil {
		return "", err
	}
	resp, err := a.peerHC.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var v struct {
		Name string `json:"name"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return "", fmt.Errorf("GET /whoami: %w", err)
	}
	return v.Name, nil
}

// campaignLoop keeps a connection-bound candidacy open and runs the
// leader-only job exactly while the agent says this candidate leads. When
// the stream ends (the agent died or restarted) it campaigns again.
func (a *app) campaignLoop(ctx context.Context) {
	for ctx.Err() == nil {
		err := a.campaign(ctx)
		if ctx.Err() != nil {
			return
		}
		a.log.Warn("candidacy ended, campaigning again", "err", err)
		a.update(func(r *Report) { r.CampaignError = err.Error() })
		select {
		case <-ctx.Done():
		case <-time.After(a.cfg.interval):
		}
	}
}

func (a *app) campaign(ctx context.Context) error {
	st, err := a.client.HoldCampaign(ctx, a.cfg.election, api.CampaignRequest{
		Candidate: a.cfg.name, Value: a.cfg.value, TTL: a.cfg.holdTTL,
	})
	if err != nil {
		return err
	}
	defer st.Close() // cancelling ctx closes it too

	var stopJob context.CancelFunc
	endTerm := func(why string) {
		if stopJob == nil {
			return
		}
		stopJob()
		stopJob = nil
		a.update(func(r *Report) { r.Leader, r.Token = false, 0 })
		a.log.Info("leadership lost: leader-only job stopped", "election", a.cfg.election, "why", why)
	}
	defer endTerm("candidacy ended")
	for {
		res, err := st.Next()
		if err != nil {
			return err
		}
		if res.Leader && stopJob == nil {
			a.update(func(r *Report) {
				r.Leader, r.Token, r.CurrentLeader, r.CampaignError = true, res.Token, a.cfg.name, ""
				r.Terms++
			})
			a.log.Info("leading: leader-only job started", "election", a.cfg.election, "token", res.Token)
			stopJob = a.startJob(ctx, res.Token)
			continue
		}
		if !res.Leader {
			endTerm("agent reports not leader")
			cur := ""
			if res.Current != nil {
				cur = res.Current.Candidate
			}
			a.update(func(r *Report) { r.CurrentLeader, r.CampaignError = cur, "" })
		}
	}
}

// startJob starts the leader-only job of the term of token; the returned
// function stops it.
func (a *app) startJob(ctx context.Context, token uint64) context.CancelFunc {
	jctx, cancel := context.WithCancel(ctx)
	go a.job(jctx, token)
	return cancel
}

// job is the leader-only work: it ticks while its term lasts.
func (a *app) job(ctx context.Context, token uint64) {
	t := time.NewTicker(a.cfg.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.update(func(r *Report) {
				if r.Leader && r.Token == token {
					r.WorkTicks++
				}
			})
		}
	}
}

// tokenFromEnv is the ACL token the app sends its sidecar, as the sidecar
// CLI finds it: $SIDECAR_TOKEN, else the content of the file
// $SIDECAR_TOKEN_FILE (a mounted secret), else none.
func tokenFromEnv() (string, error) {
	if t := strings.TrimSpace(os.Getenv("SIDECAR_TOKEN")); t != "" {
		return t, nil
	}
	f := os.Getenv("SIDECAR_TOKEN_FILE")
	if f == "" {
		return "", nil
	}
	b, err := os.ReadFile(f)
	if err != nil {
		return "", fmt.Errorf("SIDECAR_TOKEN_FILE: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("SIDECAR_TOKEN_FILE %s is empty", f)
	}
	return t, nil
}
