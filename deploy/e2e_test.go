//go:build e2e

// The end-to-end tests of the images and the compose cluster. They need a
// Docker engine and run through deploy/e2e.sh (`make e2e`), which checks the
// engine, picks the compose command and a project name, and removes the
// project whatever happens:
//
//	E2E_COMPOSE       "docker compose" or "docker-compose"
//	E2E_PROJECT       compose project name (default sidecar-e2e-go-<pid>)
//	E2E_COMPOSE_FILE  deploy/compose/docker-compose.yml
//	SIDECAR_IMAGE, DEMO_IMAGE, DOCKER

package deploy

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/api"
)

const (
	election    = "demo-primary" // the election of the compose file's apps
	nonRootUser = "65532:65532"
)

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

var docker = env("DOCKER", "docker")

// sh runs a command with a deadline and returns its combined output.
func sh(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s %s: timed out after %v", name, strings.Join(args, " "), timeout)
	} else if err != nil {
		err = fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), err
}

// TestImage_oneStaticBinaryNonRoot checks both images: a non-root user, and
// exactly one executable file, a static ELF binary, at the expected path.
func TestImage_oneStaticBinaryNonRoot(t *testing.T) {
	for _, tc := range []struct{ image, binary string }{
		{env("SIDECAR_IMAGE", "sidecar:latest"), "usr/local/bin/sidecar"},
		{env("DEMO_IMAGE", "sidecar-demo:latest"), "usr/local/bin/sidecar-demo"},
	} {
		t.Run(tc.image, func(t *testing.T) {
			out, err := sh(30*time.Second, docker, "image", "inspect", "--format", "{{json .Config}}", tc.image)
			if err != nil {
				t.Fatal(err)
			}
			var cfg struct {
				User       string
				Entrypoint []string
			}
			if err := json.Unmarshal([]byte(out), &cfg); err != nil {
				t.Fatalf("image config: %v: %s", err, out)
			}
			if cfg.User != nonRootUser {
				t.Errorf("image user %q, want %q (non-root)", cfg.User, nonRootUser)
			}
			if len(cfg.Entrypoint) == 0 || cfg.Entrypoint[0] != "/"+tc.binary {
				t.Errorf("entrypoint %q, want /%s", cfg.Entrypoint, tc.binary)
			}
			files := imageFiles(t, tc.image)
			var execs []string
			for name, f := range files {
				if f.mode&0o111 != 0 {
					execs = append(execs, name)
				}
			}
			if len(execs) != 1 || execs[0] != tc.binary {
				names := slices.Sorted(func(yield func(string) bool) {
					for n := range files {
						if !yield(n) {
							return
						}
					}
				})
				t.Fatalf("executable files %v, want only %s; the image holds %v", execs, tc.binary, names)
			}
			f, err := elf.NewFile(bytes.NewReader(files[tc.binary].data))
			if err != nil {
				t.Fatalf("%s: %v", tc.binary, err)
			}
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP {
					t.Errorf("%s has an ELF interpreter: not a static binary (build with CGO_ENABLED=0)", tc.binary)
				}
			}
			if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
				t.Errorf("%s needs shared libraries %v", tc.binary, libs)
			}
			t.Logf("%s: user %s, %d files, one static binary /%s (%d bytes)", tc.image, cfg.User, len(files), tc.binary, len(files[tc.binary].data))
		})
	}
}

type imageFile struct {
	mode int64
	data []byte
}

// imageFiles reads the regular files of an image's layers through
// `docker save` (the classic layout and the OCI one both list the layers in
// manifest.json).
func imageFiles(t *testing.T, image string) map[string]imageFile {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, docker, "save", image)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	raw, err := cmd.Output()
	if err != nil {
		t.Fatalf("docker save %s: %v: %s", image, err, stderr.String())
	}
	outer := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(raw))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("docker save %s: %v", image, err)
		}
		if h.Typeflag == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			outer[path.Clean(h.Name)] = b
		}
	}
	var manifest []struct{ Layers []string }
	if err := json.Unmarshal(outer["manifest.json"], &manifest); err != nil || len(manifest) != 1 {
		t.Fatalf("docker save %s: manifest.json: %v", image, err)
	}
	files := map[string]imageFile{}
	for _, l := range manifest[0].Layers {
		layer, ok := outer[path.Clean(l)]
		if !ok {
			t.Fatalf("docker save %s: layer %s missing", image, l)
		}
		var r io.Reader = bytes.NewReader(layer)
		if len(layer) > 2 && layer[0] == 0x1f && layer[1] == 0x8b {
			if r, err = gzip.NewReader(r); err != nil {
				t.Fatal(err)
			}
		}
		lr := tar.NewReader(r)
		for {
			h, err := lr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("layer %s: %v", l, err)
			}
			name := strings.TrimPrefix(path.Clean(h.Name), "./")
			if strings.HasPrefix(path.Base(name), ".wh.") {
				delete(files, path.Join(path.Dir(name), strings.TrimPrefix(path.Base(name), ".wh.")))
				continue
			}
			if h.Typeflag == tar.TypeReg {
				b, _ := io.ReadAll(lr)
				files[name] = imageFile{mode: h.Mode, data: b}
			}
		}
	}
	return files
}

// cluster is the compose project under test.
type cluster struct {
	t       *testing.T
	compose []string // command and leading arguments, -p and -f included
	project string
	apps    map[string]string // app service -> base URL of its published port
	last    map[string]report // last status seen per app, for failure messages
}

// report is the demo app's GET /status (examples/demo).
type report struct {
	Name       string `json:"name"`
	Registered bool   `json:"registered"`
	Peers      []struct {
		Address string `json:"address"`
		Port    int    `json:"port"`
		Name    string `json:"name"`
		Error   string `json:"error"`
	} `json:"peers"`
	ResolveError  string `json:"resolve_error"`
	Leader        bool   `json:"leader"`
	Token         uint64 `json:"token"`
	CurrentLeader string `json:"current_leader"`
	CampaignError string `json:"campaign_error"`
	Terms         int    `json:"terms"`
	WorkTicks     uint64 `json:"work_ticks"`
}

func (r report) peerNames() []string {
	var names []string
	for _, p := range r.Peers {
		if p.Error == "" {
			names = append(names, p.Name)
		}
	}
	sort.Strings(names)
	return names
}

func (r report) String() string {
	b, _ := json.Marshal(r)
	return string(b)
}

// run runs a compose subcommand.
func (c *cluster) run(timeout time.Duration, args ...string) (string, error) {
	all := append(append([]string{}, c.compose[1:]...), args...)
	return sh(timeout, c.compose[0], all...)
}

func (c *cluster) must(timeout time.Duration, args ...string) string {
	c.t.Helper()
	out, err := c.run(timeout, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// sidecar runs the sidecar CLI in a container of the project (the image has
// no shell, but the binary is the CLI), with the management token: the
// agents deny by default, and every agent mounts the volume acl.
func (c *cluster) sidecar(service string, args ...string) (string, error) {
	return c.run(30*time.Second, append([]string{"exec", "-T", "-e", "SIDECAR_TOKEN_FILE=/etc/sidecar/acl/management.token", service, "sidecar"}, args...)...)
}

func (c *cluster) status(app string) (report, error) {
	hc := &http.Client{Timeout: 2 * time.Second}
	resp, err := hc.Get(c.apps[app] + "/status")
	if err != nil {
		return report{}, err
	}
	defer resp.Body.Close()
	var r report
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return report{}, fmt.Errorf("%s /status: %w", app, err)
	}
	c.last[app] = r
	return r, nil
}

// statuses reads both apps; ok is false when one does not answer.
func (c *cluster) statuses() (a, b report, err error) {
	if a, err = c.status("app-a"); err != nil {
		return
	}
	b, err = c.status("app-b")
	return
}

// waitFor polls cond every 250ms until it returns true or timeout passes (cut
// short so that the test ends before go test's own -timeout, leaving time to
// collect logs and clean up); cond's string tells the state on failure.
func (c *cluster) waitFor(timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
	c.t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	if d, ok := c.t.Deadline(); ok && d.Add(-30*time.Second).Before(deadline) {
		deadline = d.Add(-30 * time.Second)
	}
	for {
		ok, state := cond()
		if ok {
			took := time.Since(start).Round(10 * time.Millisecond)
			c.t.Logf("%s: after %v", what, took)
			return took
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out after %v waiting for %s; last state: %s", time.Since(start).Round(time.Millisecond), what, state)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// newCluster brings the compose project up and registers its removal.
func newCluster(t *testing.T) *cluster {
	compose := strings.Fields(env("E2E_COMPOSE", ""))
	if len(compose) == 0 {
		if _, err := sh(10*time.Second, docker, "compose", "version"); err == nil {
			compose = []string{docker, "compose"}
		} else {
			compose = []string{"docker-compose"}
		}
	}
	file := env("E2E_COMPOSE_FILE", filepath.Join("compose", "docker-compose.yml"))
	project := env("E2E_PROJECT", fmt.Sprintf("sidecar-e2e-go-%d", os.Getpid()))
	c := &cluster{t: t, project: project, compose: append(compose, "-p", project, "-f", file),
		apps: map[string]string{}, last: map[string]report{}}
	t.Logf("compose: %s", strings.Join(c.compose, " "))

	t.Cleanup(func() {
		if _, err := c.run(90*time.Second, "down", "-v", "--remove-orphans", "-t", "5"); err != nil {
			t.Errorf("compose down: %v", err)
		}
	})
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		ps, _ := c.run(30*time.Second, "ps")
		logs, _ := c.run(60*time.Second, "logs", "--no-color", "--tail", "150")
		t.Logf("compose ps:\n%s\ncompose logs (last 150 lines per container):\n%s", ps, logs)
		for app, r := range c.last {
			t.Logf("last /status of %s: %s", app, r)
		}
	})

	start := time.Now()
	c.must(2*time.Minute, "up", "-d")
	t.Logf("compose up -d: %v", time.Since(start).Round(10*time.Millisecond))
	for _, app := range []string{"app-a", "app-b"} {
		out := strings.TrimSpace(c.must(30*time.Second, "port", app, "8080"))
		if i := strings.LastIndex(out, "\n"); i >= 0 {
			out = out[i+1:] // v1 may print warnings first
		}
		c.apps[app] = "http://" + out
	}
	return c
}

// steady waits until both apps resolve both apps over DNS SRV and exactly
// one leads, with its token, and the other one names it; it returns the
// leading app's service name and token.
func (c *cluster) steady(timeout time.Duration, what string) (leader string, token uint64) {
	c.t.Helper()
	c.waitFor(timeout, what, func() (bool, string) {
		a, b, err := c.statuses()
		if err != nil {
			return false, err.Error()
		}
		state := fmt.Sprintf("app-a %s; app-b %s", a, b)
		if a.Leader && b.Leader {
			c.t.Fatalf("both apps lead: %s", state)
		}
		both := []string{"app-a", "app-b"}
		if !a.Registered || !b.Registered || !slices.Equal(a.peerNames(), both) || !slices.Equal(b.peerNames(), both) {
			return false, state
		}
		switch {
		case a.Leader && a.Token > 0 && b.CurrentLeader == "app-a":
			leader, token = "app-a", a.Token
		case b.Leader && b.Token > 0 && a.CurrentLeader == "app-b":
			leader, token = "app-b", b.Token
		default:
			return false, state
		}
		return true, state
	})
	return leader, token
}

func other(app string) string {
	if app == "app-a" {
		return "app-b"
	}
	return "app-a"
}

// sidecarOf is the sidecar service beside an app service.
func sidecarOf(app string) string { return "sidecar-" + strings.TrimPrefix(app, "app-") }

// electionLeader asks an agent who leads the demo election.
func (c *cluster) electionLeader(service string) (*api.Holder, error) {
	out, err := c.sidecar(service, "leader", election, "--json")
	if err != nil {
		return nil, err
	}
	var e api.ElectionInfo
	if err := json.Unmarshal([]byte(out), &e); err != nil {
		return nil, fmt.Errorf("sidecar leader --json: %w: %s", err, out)
	}
	return e.Leader, nil
}

func (c *cluster) raftStatus(server string) (*api.Status, error) {
	out, err := c.sidecar(server, "status", "--json")
	if err != nil {
		return nil, err
	}
	var st api.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return nil, fmt.Errorf("sidecar status --json: %w: %s", err, out)
	}
	return &st, nil
}

// TestE2E_compose brings deploy/compose up and checks, through the demo
// apps: DNS SRV finds both apps and exactly one leads; the Raft/RPC port
// answers nothing without a certificate; killing the leading app's sidecar
// moves leadership to the other app with a greater token; stopping the Raft
// leader's container leaves the cluster serving.
func TestE2E_compose(t *testing.T) {
	total := time.Now()
	c := newCluster(t)

	// 1. Both apps find each other over DNS SRV through their own sidecar;
	// exactly one leads, and the agents agree with the apps.
	leader, token := c.steady(90*time.Second, "both apps resolve both over DNS SRV, exactly one leads")
	t.Logf("%s leads %s with token %d", leader, election, token)
	h, err := c.electionLeader(sidecarOf(other(leader)))
	if err != nil {
		t.Fatal(err)
	}
	if h == nil || h.Candidate != leader || h.Token != token {
		t.Fatalf("the agents say %+v leads, the apps say %s with token %d", h, leader, token)
	}
	for _, svc := range []string{"server-1", "server-2", "server-3", "sidecar-a", "sidecar-b", "app-a", "app-b"} {
		id := strings.TrimSpace(c.must(30*time.Second, "ps", "-q", svc))
		out, err := sh(30*time.Second, docker, "top", id, "-eo", "pid,uid,comm")
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		for _, l := range lines[1:] {
			if f := strings.Fields(l); len(f) > 1 && f[1] != strings.Split(nonRootUser, ":")[0] {
				t.Errorf("%s runs a process as uid %s: %q", svc, f[1], l)
			}
		}
	}

	// 1b. Transport security: every agent runs with TLS and a gossip key;
	// the CLI works; a peer without a certificate of the cluster's CA gets
	// nothing from a server's Raft/RPC port.
	c.checkTLS()

	// 1c. ACLs deny by default: a write without a token is refused (403)
	// and changes nothing; reads without one work (the anonymous rules of
	// acl-anonymous), as the apps' DNS lookups above did.
	if out, err := c.run(30*time.Second, "exec", "-T", "sidecar-b", "sidecar", "register", "--name", "e2e-anon", "--port", "9"); err == nil || !strings.Contains(out, "403") {
		t.Errorf("register without a token on sidecar-b: err %v, output %q; want a 403 refusal", err, out)
	}
	if out, err := c.run(30*time.Second, "exec", "-T", "sidecar-b", "sidecar", "services", "demo"); err != nil {
		t.Errorf("services demo without a token on sidecar-b: %v: %s", err, out)
	}

	// 2. Kill (SIGKILL) the leading app's sidecar: that app loses leadership
	// at once (its connection-bound candidacy broke); the other one leads
	// with a greater token once the hold's lease (3s) expired. Never both.
	follower := other(leader)
	t.Logf("killing %s, the sidecar of the leading app", sidecarOf(leader))
	c.must(30*time.Second, "kill", sidecarOf(leader))
	var newToken uint64
	c.waitFor(30*time.Second, follower+" leads with a greater token, "+leader+" does not", func() (bool, string) {
		a, b, err := c.statuses()
		if err != nil {
			return false, err.Error()
		}
		state := fmt.Sprintf("app-a %s; app-b %s", a, b)
		if a.Leader && b.Leader {
			t.Fatalf("both apps lead: %s", state)
		}
		old, now := c.last[leader], c.last[follower]
		if old.Leader || !now.Leader || now.Token <= token {
			return false, state
		}
		newToken = now.Token
		return true, state
	})
	t.Logf("%s leads with token %d > %d", follower, newToken, token)
	// The dead node's instance turns critical and leaves DNS.
	c.waitFor(20*time.Second, follower+" resolves only itself", func() (bool, string) {
		r, err := c.status(follower)
		if err != nil {
			return false, err.Error()
		}
		return slices.Equal(r.peerNames(), []string{follower}), r.String()
	})

	// 3. Start the killed sidecar again: its app registers and campaigns
	// again, behind the new leader, which keeps leading.
	c.must(60*time.Second, "start", sidecarOf(leader))
	l2, t2 := c.steady(60*time.Second, "the restarted sidecar's app is back in DNS, behind the leader")
	if l2 != follower || t2 != newToken {
		t.Fatalf("after the restart %s leads with token %d, want %s still with %d", l2, t2, follower, newToken)
	}
	leader, token = l2, t2

	// 4. Stop (SIGTERM, graceful) the Raft leader's container: the other two
	// servers elect a leader, writes go through, the apps keep resolving and
	// exactly one leads.
	var raftLeader string
	c.waitFor(20*time.Second, "the Raft leader is known", func() (bool, string) {
		st, err := c.raftStatus("server-1")
		if err != nil {
			return false, err.Error()
		}
		raftLeader = st.Leader
		return strings.HasPrefix(raftLeader, "server-"), fmt.Sprintf("%+v", st)
	})
	t.Logf("stopping %s, the Raft leader", raftLeader)
	c.must(60*time.Second, "stop", "-t", "10", raftLeader)
	var rest []string
	for _, s := range []string{"server-1", "server-2", "server-3"} {
		if s != raftLeader {
			rest = append(rest, s)
		}
	}
	c.waitFor(30*time.Second, "the other servers agree on a new Raft leader", func() (bool, string) {
		var leaders []string
		for _, s := range rest {
			st, err := c.raftStatus(s)
			if err != nil {
				return false, err.Error()
			}
			leaders = append(leaders, st.Leader)
		}
		return leaders[0] == leaders[1] && slices.Contains(rest, leaders[0]), fmt.Sprint(leaders)
	})
	c.waitFor(30*time.Second, "a write through sidecar-b, read on "+rest[0], func() (bool, string) {
		if out, err := c.sidecar("sidecar-b", "register", "--name", "e2e-probe", "--id", "e2e-probe", "--port", "9"); err != nil {
			return false, out + err.Error()
		}
		out, err := c.sidecar(rest[0], "services", "e2e-probe", "--json")
		if err != nil {
			return false, err.Error()
		}
		return strings.Contains(out, `"e2e-probe"`), out
	})
	l3, t3 := c.steady(30*time.Second, "the apps keep resolving both and exactly one leads")
	t.Logf("after the Raft leader stopped, %s leads with token %d (before: %s, %d)", l3, t3, leader, token)
	if t3 < token {
		t.Fatalf("token went back from %d to %d", token, t3)
	}

	// 5. Start it again: it rejoins from its data directory as a voter.
	c.must(60*time.Second, "start", raftLeader)
	c.waitFor(60*time.Second, raftLeader+" is back as a voter", func() (bool, string) {
		back, err := c.raftStatus(raftLeader)
		if err != nil {
			return false, err.Error()
		}
		seen, err := c.raftStatus(rest[0])
		if err != nil {
			return false, err.Error()
		}
		state := fmt.Sprintf("%s: %+v; %s: %+v", raftLeader, back, rest[0], seen)
		return len(seen.Peers) == 3 && slices.Contains(seen.Peers, raftLeader) && back.Leader != "" && back.Leader == seen.Leader, state
	})
	t.Logf("end to end: %v (cleanup follows)", time.Since(total).Round(10*time.Millisecond))
}

// checkTLS checks what the compose file's TLS setup promises: the tls-*
// steps made the files (owned by the image's user, keys 0600), every agent
// started with TLS on and gossip encrypted, `sidecar status` works,
// plain-text or certificate-less connections to a server's Raft/RPC port
// (7947) from inside the compose network get no answer, and SIGHUP reloads
// a server's files while it keeps serving.
func (c *cluster) checkTLS() {
	t := c.t
	t.Helper()
	for _, svc := range []string{"server-1", "server-2", "server-3", "sidecar-a", "sidecar-b"} {
		logs := c.must(30*time.Second, "logs", "--no-color", svc)
		if !strings.Contains(logs, "encrypted=true") {
			t.Errorf("%s: gossip is not encrypted (no encrypted=true in its log)", svc)
		}
		if strings.Contains(logs, "TLS is off") {
			t.Errorf("%s runs without TLS: its log says \"TLS is off\"", svc)
		}
	}
	for _, s := range []string{"server-1", "server-2", "server-3"} {
		out, err := c.sidecar(s, "status")
		if err != nil {
			t.Fatalf("sidecar status on %s: %v", s, err)
		}
		if !strings.Contains(out, "server-1, server-2, server-3") {
			t.Errorf("sidecar status on %s does not list the 3 voters:\n%s", s, out)
		}
	}

	// The probe runs in app-b's network namespace (where sidecar-b runs),
	// from the sidecar image (no shell: the probe is copied in), with the
	// TLS volume mounted to look at the files. Its control: sidecar-b's
	// HTTP API on 127.0.0.1:7080 does answer plain text.
	probe := filepath.Join(t.TempDir(), "tlsprobe")
	build := exec.Command("go", "build", "-o", probe, "./testdata/tlsprobe")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build tlsprobe: %v: %s", err, out)
	}
	appB := strings.TrimSpace(c.must(30*time.Second, "ps", "-q", "app-b"))
	server := strings.TrimSpace(c.must(30*time.Second, "ps", "-q", "server-1"))
	volume, err := sh(30*time.Second, docker, "inspect", "-f",
		`{{range .Mounts}}{{if eq .Destination "/etc/sidecar/tls"}}{{.Name}}{{end}}{{end}}`, server)
	if err != nil || strings.TrimSpace(volume) == "" {
		t.Fatalf("server-1 mounts no volume on /etc/sidecar/tls: %v %s", err, volume)
	}
	id, err := sh(30*time.Second, docker, "create", "--network", "container:"+appB,
		"-v", strings.TrimSpace(volume)+":/tls:ro", "--entrypoint", "/tlsprobe",
		env("SIDECAR_IMAGE", "sidecar:latest"),
		"answers", "127.0.0.1:7080", "plain", "server-1:7947", "nocert", "server-1:7947", "files", "/tls", strings.Split(nonRootUser, ":")[0])
	if err != nil {
		t.Fatal(err)
	}
	id = strings.TrimSpace(id[strings.LastIndex(strings.TrimSpace(id), "\n")+1:])
	defer sh(30*time.Second, docker, "rm", "-f", id)
	if _, err := sh(30*time.Second, docker, "cp", probe, id+":/tlsprobe"); err != nil {
		t.Fatal(err)
	}
	out, err := sh(time.Minute, docker, "start", "-a", id)
	t.Logf("tlsprobe in app-b's network namespace:\n%s", strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("a connection without a certificate got an answer, or the TLS files are wrong: %v", err)
	}

	// SIGHUP, as deploy/README.md tells for rotation: the server reloads its
	// files (the log says so) and keeps serving.
	c.must(30*time.Second, "kill", "-s", "SIGHUP", "server-1")
	c.waitFor(15*time.Second, "server-1 reloads its TLS files on SIGHUP", func() (bool, string) {
		logs, err := c.run(30*time.Second, "logs", "--no-color", "server-1")
		if err != nil {
			return false, err.Error()
		}
		return strings.Contains(logs, `msg="TLS certificate loaded" component=tls node=server-1 role=server`), lastLines([]byte(logs), 3)
	})
	if out, err := c.sidecar("server-1", "status"); err != nil || !strings.Contains(out, "server-1, server-2, server-3") {
		t.Fatalf("sidecar status on server-1 after SIGHUP: %v\n%s", err, out)
	}
}
