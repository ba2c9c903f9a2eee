package deploy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.yaml.in/yaml/v3"

	"github.com/sidecarhq/sidecar/agent"
	"github.com/sidecarhq/sidecar/agent/agenttest"
	"github.com/sidecarhq/sidecar/api"
)

const (
	dashboardPath  = "grafana/sidecar.json"
	alertsPath     = "prometheus/alerts.yml"
	alertsTestPath = "prometheus/alerts_test.yml"
	// dsVar is the dashboard's data source variable.
	dsVar = "${DS_PROMETHEUS}"
)

// dashboard is the part of Grafana's dashboard JSON model the tests read.
type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Definition string          `json:"definition"`
			Datasource *datasource     `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID         int         `json:"id"`
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Datasource *datasource `json:"datasource"`
	GridPos    *struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID      string      `json:"refId"`
		Expr       string      `json:"expr"`
		Datasource *datasource `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's
}

// query is one PromQL expression of the dashboard or the rules, named for
// messages.
type query struct{ where, expr string }

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(b) {
		t.Fatalf("%s: not valid JSON", dashboardPath)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return d
}

// allPanels flattens rows' nested panels.
func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

// dashboardQueries returns every PromQL expression of the dashboard: its
// panels' targets and its query variables.
func dashboardQueries(t *testing.T, d dashboard) []query {
	t.Helper()
	var qs []query
	for _, p := range allPanels(d.Panels) {
		for _, tg := range p.Targets {
			qs = append(qs, query{fmt.Sprintf("panel %d %q target %s", p.ID, p.Title, tg.RefID), tg.Expr})
		}
	}
	for _, v := range d.Templating.List {
		if v.Type == "query" {
			qs = append(qs, query{fmt.Sprintf("variable %s", v.Name), v.Definition})
		}
	}
	return qs
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func readRules(t *testing.T) ruleFile {
	t.Helper()
	b, err := os.ReadFile(alertsPath)
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.Unmarshal(b, &rf); err != nil {
		t.Fatalf("%s: %v", alertsPath, err)
	}
	return rf
}

func ruleQueries(rf ruleFile) []query {
	var qs []query
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			qs = append(qs, query{"alert " + r.Alert, r.Expr})
		}
	}
	return qs
}

// TestMonitoring_dashboardStructure checks the dashboard's JSON model: a
// data source variable every panel and target uses, job and instance
// variables every sidecar_* selector applies, unique panel ids, a grid
// position on each panel without overlaps, and queries on every panel but
// rows.
func TestMonitoring_dashboardStructure(t *testing.T) {
	d := readDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("uid %q, title %q: both must be set (the uid keeps links stable across imports)", d.UID, d.Title)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		if v.Type == "query" && (v.Datasource == nil || v.Datasource.UID != dsVar) {
			t.Errorf("variable %s: datasource %+v, want uid %s", v.Name, v.Datasource, dsVar)
		}
	}
	for name, typ := range map[string]string{"DS_PROMETHEUS": "datasource", "job": "query", "instance": "query"} {
		if vars[name] != typ {
			t.Errorf("variable %s: type %q, want %q", name, vars[name], typ)
		}
	}

	ids := map[int]string{}
	// cells marks the grid cells a panel covers (24 columns), so that
	// overlapping panels are caught.
	cells := map[[2]int]int{}
	ps := allPanels(d.Panels)
	if len(ps) < 20 {
		t.Errorf("%d panels: the dashboard lost its panels?", len(ps))
	}
	for _, p := range ps {
		name := fmt.Sprintf("panel %d %q", p.ID, p.Title)
		if p.ID <= 0 {
			t.Errorf("%s: id must be positive", name)
		}
		if other, ok := ids[p.ID]; ok {
			t.Errorf("%s: id also used by %s", name, other)
		}
		ids[p.ID] = p.Title
		if p.Title == "" {
			t.Errorf("%s: no title", name)
		}
		if g := p.GridPos; g == nil || g.H <= 0 || g.W <= 0 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
			t.Errorf("%s: gridPos %+v: want h, w > 0 and x+w <= 24", name, p.GridPos)
		} else {
			overlaps := map[int]bool{}
			for y := g.Y; y < g.Y+g.H; y++ {
				for x := g.X; x < g.X+g.W; x++ {
					if o, ok := cells[[2]int{x, y}]; ok && !overlaps[o] {
						t.Errorf("%s overlaps panel %d at x=%d y=%d", name, o, x, y)
						overlaps[o] = true
					}
					cells[[2]int{x, y}] = p.ID
				}
			}
		}
		if p.Type == "row" {
			if len(p.Targets) > 0 {
				t.Errorf("%s: a row with queries", name)
			}
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != dsVar || p.Datasource.Type != "prometheus" {
			t.Errorf("%s: datasource %+v, want prometheus %s", name, p.Datasource, dsVar)
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: no targets", name)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("%s target %s: empty expr", name, tg.RefID)
			}
			if tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("%s: refId %q empty or repeated", name, tg.RefID)
			}
			refs[tg.RefID] = true
			if tg.Datasource != nil && tg.Datasource.UID != dsVar {
				t.Errorf("%s target %s: datasource %+v, want %s", name, tg.RefID, tg.Datasource, dsVar)
			}
		}
	}

	// Every sidecar_* selector honours the job variable (the instance one
	// is left out where a figure is the cluster's: Raft leaders, leases).
	for _, q := range dashboardQueries(t, d) {
		if strings.HasPrefix(q.where, "variable job") {
			continue
		}
		for _, s := range selectors(q.expr) {
			if !strings.Contains(s.matchers, `job=~"$job"`) {
				t.Errorf("%s: %s{%s} does not filter on $job", q.where, s.name, s.matchers)
			}
		}
	}
}

// TestMonitoring_dashboardCovers checks that the dashboard shows what it
// is for (issue #17): each of these series is read by some panel.
func TestMonitoring_dashboardCovers(t *testing.T) {
	used := map[string]bool{}
	for _, q := range dashboardQueries(t, readDashboard(t)) {
		for _, s := range selectors(q.expr) {
			used[s.name] = true
		}
	}
	for _, m := range []string{
		"sidecar_raft_state", "sidecar_raft_leader", "sidecar_raft_commit_index", "sidecar_raft_applied_index",
		"sidecar_raft_apply_duration_seconds_bucket", "sidecar_http_requests_total", "sidecar_leases_active",
		"sidecar_lease_expirations_total", "sidecar_lock_acquisitions_total", "sidecar_election_leader",
		"sidecar_checks", "sidecar_dns_queries_total", "sidecar_gossip_members",
	} {
		if !used[m] {
			t.Errorf("no panel reads %s", m)
		}
	}
}

// TestMonitoring_rulesTested checks that every alerting rule has a promtool
// unit test that expects it to fire and one that expects it not to, and a
// runbook line in README.md.
func TestMonitoring_rulesTested(t *testing.T) {
	rf := readRules(t)
	b, err := os.ReadFile(alertsTestPath)
	if err != nil {
		t.Fatal(err)
	}
	var tf struct {
		RuleFiles []string `yaml:"rule_files"`
		Tests     []struct {
			AlertRuleTest []struct {
				Alertname string           `yaml:"alertname"`
				ExpAlerts []map[string]any `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(b, &tf); err != nil {
		t.Fatalf("%s: %v", alertsTestPath, err)
	}
	if !slices.Equal(tf.RuleFiles, []string{filepath.Base(alertsPath)}) {
		t.Errorf("%s: rule_files %q, want [%s]", alertsTestPath, tf.RuleFiles, filepath.Base(alertsPath))
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tf.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			n++
			if r.Alert == "" {
				t.Errorf("group %s: a rule without alert name (recording rules belong elsewhere)", g.Name)
				continue
			}
			if !fires[r.Alert] || !quiet[r.Alert] {
				t.Errorf("alert %s: tested firing %v, tested not firing %v: want both", r.Alert, fires[r.Alert], quiet[r.Alert])
			}
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s: want a severity label and summary and description annotations", r.Alert)
			}
			if !regexp.MustCompile("(?m)^- `" + r.Alert + "`").Match(readme) {
				t.Errorf("alert %s: no runbook line (- `%s` ...) in README.md", r.Alert, r.Alert)
			}
		}
	}
	if n < 7 {
		t.Errorf("%d rules, want at least 7", n)
	}
}

// TestMonitoring_metricsExist runs a dev agent, makes it do a little of
// everything (a service with a check, a lock, an election, a lease that
// expires, DNS answers including a SERVFAIL), scrapes GET /metrics and
// checks every sidecar_* series the dashboard and the rules read against
// the scrape: the name, the labels it is matched or grouped on, and the
// values it is matched against with =.
func TestMonitoring_metricsExist(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an agent")
	}
	// A recursor that is not there: forwarded names are SERVFAIL.
	dead := closedUDPAddr(t)
	n := agenttest.Start(t, func(c *agent.Config) { c.Recursors = []string{dead} })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := api.NewClient(n.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()

	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	_, err = c.Register(ctx, api.ServiceRegistration{ID: "web-1", Name: "web", Port: 8080,
		Checks: []api.CheckDefinition{{ID: "web-1:ttl", Type: "ttl", TTL: "30s"}}})
	must("register", err)
	must("check pass", c.UpdateCheck(ctx, "web-1:ttl", "pass", ""))
	lr, err := c.Lock(ctx, "nightly", api.LockRequest{})
	must("lock", err)
	if !lr.Held {
		t.Fatalf("lock nightly not held: %+v", lr)
	}
	must("unlock", c.Unlock(ctx, "nightly", ""))
	cr, err := c.Campaign(ctx, "primary", api.CampaignRequest{Candidate: "db-1", Value: "127.0.0.1:5432"})
	must("campaign", err)
	if !cr.Leader {
		t.Fatalf("campaign primary: not leader: %+v", cr)
	}
	_, err = c.GrantLease(ctx, time.Second)
	must("grant lease", err)
	dnsQuery(t, n.DNSAddr(), "web.service.sidecar.", dns.TypeSRV, dns.RcodeSuccess)
	dnsQuery(t, n.DNSAddr(), "db.example.org.", dns.TypeA, dns.RcodeServerFailure)

	// The 1 s lease expires on the leader's next round.
	var scrape map[string][]map[string]string
	var families map[string]string
	agenttest.WaitFor(t, 10*time.Second, "a lease expiry in /metrics", func() bool {
		scrape, families = scrapeMetrics(t, n.URL)
		for _, s := range scrape["sidecar_lease_expirations_total"] {
			if s[valueLabel] != "0" {
				return true
			}
		}
		return false
	})
	names := make([]string, 0, len(families))
	for name := range families {
		names = append(names, name)
	}
	sort.Strings(names)
	t.Logf("%d families in the scrape", len(names))

	d := readDashboard(t)
	qs := append(dashboardQueries(t, d), ruleQueries(readRules(t))...)
	used := map[string]bool{}
	for _, q := range qs {
		sels := selectors(q.expr)
		if len(sels) == 0 && !strings.Contains(q.expr, "up{") {
			t.Errorf("%s: reads no sidecar_* series: %s", q.where, q.expr)
		}
		exprLabels := map[string]bool{"job": true, "instance": true}
		for _, s := range sels {
			used[s.name] = true
			samples, ok := scrape[s.name]
			if !ok {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(s.name, "_bucket"), "_sum"), "_count")
				switch typ := families[s.name]; {
				case typ == "histogram" || typ == "summary":
					t.Errorf("%s: %s is a %s: read %[2]s_bucket, _sum or _count", q.where, s.name, typ)
				case base != s.name && families[base] == "":
					t.Errorf("%s: %s: no family %s in the scrape", q.where, s.name, base)
				default:
					t.Errorf("%s: %s: no such series in the scrape", q.where, s.name)
				}
				continue
			}
			for l := range samples[0] {
				exprLabels[l] = true
			}
			for _, m := range s.parsed {
				if m.label == "job" || m.label == "instance" {
					continue // added by Prometheus
				}
				if _, ok := samples[0][m.label]; !ok {
					t.Errorf("%s: %s has no label %q (it has %v)", q.where, s.name, m.label, labelNames(samples[0]))
					continue
				}
				if m.op != "=" {
					continue
				}
				found := false
				for _, smp := range samples {
					found = found || smp[m.label] == m.value
				}
				if !found {
					t.Errorf("%s: no series %s{%s=%q} in the scrape", q.where, s.name, m.label, m.value)
				}
			}
		}
		for _, l := range groupingLabels(q.expr) {
			if !exprLabels[l] {
				t.Errorf("%s: grouped by %q, a label none of its series has", q.where, l)
			}
		}
	}
	var list []string
	for name := range used {
		list = append(list, name)
	}
	sort.Strings(list)
	t.Logf("series read by the dashboard and the rules: %s", strings.Join(list, " "))
}

// TestMonitoring_dashboardQueriesParse has promtool parse every query of
// the dashboard (Grafana's variables replaced by values), as recording
// rules. mk/grafana.mk runs it with SIDECAR_REQUIRE_PROMTOOL=1 once it has
// promtool; without promtool and that variable it skips.
func TestMonitoring_dashboardQueriesParse(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("SIDECAR_REQUIRE_PROMTOOL") != "" {
			t.Fatal("promtool not on PATH")
		}
		t.Skip("promtool not on PATH (make alerts-test installs it and runs this test)")
	}
	d := readDashboard(t)
	repl := strings.NewReplacer("$__rate_interval", "1m", "$__interval", "1m", "$__range", "1h", "$job", ".*", "$instance", ".*")
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []rule
	var where []string
	for i, q := range dashboardQueries(t, d) {
		expr := q.expr
		if strings.HasPrefix(expr, "label_values(") {
			// label_values(selector, label) is Grafana's, not PromQL: check
			// its selector.
			inner := strings.TrimSuffix(strings.TrimPrefix(expr, "label_values("), ")")
			expr = inner[:strings.LastIndex(inner, ",")]
		}
		rules = append(rules, rule{Record: fmt.Sprintf("dashboard_query_%d", i), Expr: repl.Replace(expr)})
		where = append(where, q.where)
	}
	out, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := exec.Command(promtool, "check", "rules", path).CombinedOutput()
	if err != nil {
		for i, w := range where {
			if strings.Contains(string(res), fmt.Sprintf("dashboard_query_%d\"", i)) ||
				strings.Contains(string(res), fmt.Sprintf("%d:", i)) {
				t.Logf("dashboard_query_%d is %s", i, w)
			}
		}
		t.Fatalf("promtool check rules on the dashboard's queries: %v\n%s\n%s", err, res, out)
	}
	t.Logf("promtool: %s", strings.TrimSpace(string(res)))
}

// --- PromQL and exposition format helpers ---------------------------------

var (
	// A sidecar_* metric name and, when there is one, its {matchers}. A
	// name inside a quoted string (a label value) is not a name: strings
	// are blanked out first.
	selectorRe = regexp.MustCompile(`\b(sidecar_[a-z0-9_]+)\b(\{[^}]*\})?`)
	matcherRe  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"`)
	groupingRe = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	stringRe   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
)

type matcher struct{ label, op, value string }

type selector struct {
	name     string
	matchers string // the text between the braces
	parsed   []matcher
}

// selectors returns the sidecar_* series an expression reads.
func selectors(expr string) []selector {
	// Blank out string contents, keeping offsets, to find names outside
	// strings; then read the matchers from the original text.
	blank := stringRe.ReplaceAllStringFunc(expr, func(s string) string {
		return `"` + strings.Repeat(" ", len(s)-2) + `"`
	})
	var out []selector
	for _, m := range selectorRe.FindAllStringSubmatchIndex(blank, -1) {
		s := selector{name: expr[m[2]:m[3]]}
		if m[4] >= 0 {
			s.matchers = expr[m[4]+1 : m[5]-1]
			for _, mm := range matcherRe.FindAllStringSubmatch(s.matchers, -1) {
				s.parsed = append(s.parsed, matcher{mm[1], mm[2], mm[3]})
			}
		}
		out = append(out, s)
	}
	return out
}

// groupingLabels returns the labels of by/without/on/ignoring clauses.
func groupingLabels(expr string) []string {
	var out []string
	for _, m := range groupingRe.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(m[1], ",") {
			if l = strings.TrimSpace(l); l != "" {
				out = append(out, l)
			}
		}
	}
	return out
}

func labelNames(s map[string]string) []string {
	var out []string
	for l := range s {
		if l != valueLabel {
			out = append(out, l)
		}
	}
	sort.Strings(out)
	return out
}

// valueLabel holds a sample's value among its labels (no label may start
// with two underscores).
const valueLabel = "__value__"

var sampleRe = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)`)

// scrapeMetrics GETs /metrics and returns the samples by series name (each
// a map of its labels, the value under valueLabel) and the families'
// types by family name.
func scrapeMetrics(t *testing.T, base string) (map[string][]map[string]string, map[string]string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := hc.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %s: %s", resp.Status, b)
	}
	samples := map[string][]map[string]string{}
	types := map[string]string{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if f, ok := strings.CutPrefix(line, "# TYPE "); ok {
			if name, typ, ok := strings.Cut(f, " "); ok {
				types[name] = typ
			}
			continue
		}
		if line == "" || line[0] == '#' {
			continue
		}
		m := sampleRe.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("/metrics: cannot read %q", line)
		}
		labels := map[string]string{valueLabel: m[3]}
		for _, lm := range matcherRe.FindAllStringSubmatch(m[2], -1) {
			labels[lm[1]] = lm[3]
		}
		if !strings.HasPrefix(m[1], "sidecar_") {
			t.Errorf("/metrics: %s is not prefixed sidecar_", m[1])
		}
		samples[m[1]] = append(samples[m[1]], labels)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return samples, types
}

// closedUDPAddr returns a loopback UDP address nothing listens on.
func closedUDPAddr(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

func dnsQuery(t *testing.T, addr, name string, qtype uint16, want int) {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	cl := &dns.Client{Timeout: 5 * time.Second}
	r, _, err := cl.Exchange(m, addr)
	if err != nil {
		t.Fatalf("DNS %s %s: %v", dns.TypeToString[qtype], name, err)
	}
	if r.Rcode != want {
		t.Fatalf("DNS %s %s: rcode %s, want %s", dns.TypeToString[qtype], name, dns.RcodeToString[r.Rcode], dns.RcodeToString[want])
	}
}
