package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

const composePath = "compose/docker-compose.yml"

// composeService is the part of a compose service the tests look at.
type composeService struct {
	Image       string            `yaml:"image"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Volumes     []string          `yaml:"volumes"`
	DependsOn   yaml.Node         `yaml:"depends_on"`
	Restart     string            `yaml:"restart"`
	ReadOnly    bool              `yaml:"read_only"`
	NetworkMode string            `yaml:"network_mode"`
}

// dependsOn lists the services a service depends on, with their condition
// (service_started for the short form).
func (s composeService) dependsOn(t *testing.T) map[string]string {
	t.Helper()
	deps := map[string]string{}
	switch s.DependsOn.Kind {
	case 0:
	case yaml.SequenceNode:
		var names []string
		if err := s.DependsOn.Decode(&names); err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			deps[n] = "service_started"
		}
	default:
		var long map[string]struct {
			Condition string `yaml:"condition"`
		}
		if err := s.DependsOn.Decode(&long); err != nil {
			t.Fatal(err)
		}
		for n, d := range long {
			deps[n] = d.Condition
		}
	}
	return deps
}

func loadCompose(t *testing.T) map[string]composeService {
	t.Helper()
	b, err := os.ReadFile(composePath)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Services map[string]composeService `yaml:"services"`
		Volumes  map[string]any            `yaml:"volumes"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("%s: %v", composePath, err)
	}
	if _, ok := f.Volumes["tls"]; !ok {
		t.Fatalf("%s declares no volume tls", composePath)
	}
	return f.Services
}

// TestCompose_tls checks, without Docker, what makes the compose cluster
// run with TLS (make e2e runs it): every agent sets only agent settings,
// the three TLS files in the read-only volume tls named after its
// SIDECAR_NAME, and the gossip key, required, from SIDECAR_ENCRYPT; each
// has a one-shot step that makes its certificate, of the right kind,
// ordered after the CA; the steps write to /data, which the image owns as
// the agents' user, so the volume does too.
func TestCompose_tls(t *testing.T) {
	services := loadCompose(t)
	known := agentEnvNames(t)

	dockerfile, err := os.ReadFile("container/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(dockerfile), "COPY --chown=65532:65532 rootfs/data/ /data/") {
		t.Fatalf("the image's /data is not owned by 65532: the tls-* steps mount the new volume there so that it is")
	}
	step := func(name string) composeService {
		t.Helper()
		s, ok := services[name]
		if !ok {
			t.Fatalf("no service %s", name)
		}
		if !slices.Contains(s.Volumes, "tls:/data") && !slices.Contains(s.Volumes, "tls:/data:ro") {
			t.Errorf("%s mounts %v, want the volume tls on /data", name, s.Volumes)
		}
		if s.NetworkMode != "none" || !s.ReadOnly {
			t.Errorf("%s: want network_mode none and read_only", name)
		}
		return s
	}
	if ca := step("tls-ca"); !slices.Equal(ca.Command, []string{"tls", "ca", "create", "--dir", "/data"}) {
		t.Errorf("tls-ca runs %q", ca.Command)
	}
	ready := step("tls-ca-ready")
	if !strings.HasPrefix(ready.Restart, "on-failure") || ready.dependsOn(t)["tls-ca"] == "" {
		t.Errorf("tls-ca-ready must follow tls-ca and retry (restart on-failure) until the CA signs: restart %q, depends on %v", ready.Restart, ready.dependsOn(t))
	}

	agents := 0
	for name, s := range services {
		if !slices.Equal(s.Command, []string{"agent"}) {
			continue
		}
		agents++
		env := s.Environment
		for k := range env {
			if _, ok := known[k]; strings.HasPrefix(k, "SIDECAR_") && !ok {
				t.Errorf("%s: %s is not an agent setting (sidecar agent --help)", name, k)
			}
		}
		node := env["SIDECAR_NAME"]
		want := map[string]string{
			"SIDECAR_TLS_CA_FILE":   "/etc/sidecar/tls/sidecar-ca.pem",
			"SIDECAR_TLS_CERT_FILE": "/etc/sidecar/tls/" + node + ".pem",
			"SIDECAR_TLS_KEY_FILE":  "/etc/sidecar/tls/" + node + "-key.pem",
		}
		for k, v := range want {
			if env[k] != v {
				t.Errorf("%s: %s=%q, want %q", name, k, env[k], v)
			}
		}
		if !strings.HasPrefix(env["SIDECAR_ENCRYPT"], "${SIDECAR_ENCRYPT:?") {
			t.Errorf("%s: SIDECAR_ENCRYPT=%q, want ${SIDECAR_ENCRYPT:?...} (required: TLS needs a gossip key)", name, env["SIDECAR_ENCRYPT"])
		}
		if !slices.Contains(s.Volumes, "tls:/etc/sidecar/tls:ro") {
			t.Errorf("%s: volumes %v, want tls:/etc/sidecar/tls:ro", name, s.Volumes)
		}
		if s.Restart != "on-failure" {
			t.Errorf("%s: restart %q, want on-failure (an agent started before its certificate was written starts again)", name, s.Restart)
		}
		certStep := "tls-" + node
		if _, ok := s.dependsOn(t)[certStep]; !ok {
			t.Errorf("%s does not depend on %s, which makes its certificate", name, certStep)
		}
		kind := "--client"
		if env["SIDECAR_SERVER"] == "true" {
			kind = "--server"
		}
		cs := step(certStep)
		if want := []string{"tls", "cert", "create", kind, "--node", node, "--dir", "/data"}; !slices.Equal(cs.Command, want) {
			t.Errorf("%s runs %q, want %q", certStep, cs.Command, want)
		}
		if cs.dependsOn(t)["tls-ca-ready"] != "service_completed_successfully" {
			t.Errorf("%s must wait for tls-ca-ready to complete successfully: %v", certStep, cs.dependsOn(t))
		}
	}
	if agents != 5 {
		t.Errorf("%d agents in %s, want 5 (3 servers, 2 sidecars)", agents, composePath)
	}
}

// TestCompose_acl checks the ACL wiring: every agent denies by default;
// the acl-* steps run in a server's network namespace, bootstrap first
// (retried until a leader answers), then the apps' token and the anonymous
// rules; the apps start after them and read their own token, not the
// management token. The steps' commands are run with the real CLI against
// a stand-in for the agent, twice, as on a first and a later `up`.
func TestCompose_acl(t *testing.T) {
	services := loadCompose(t)
	for name, s := range services {
		if slices.Equal(s.Command, []string{"agent"}) && s.Environment["SIDECAR_ACL_DEFAULT_POLICY"] != "deny" {
			t.Errorf("%s: SIDECAR_ACL_DEFAULT_POLICY=%q, want deny", name, s.Environment["SIDECAR_ACL_DEFAULT_POLICY"])
		}
	}
	steps := []string{"acl-bootstrap", "acl-app-token", "acl-anonymous"}
	for _, name := range steps {
		s, ok := services[name]
		if !ok {
			t.Fatalf("no service %s", name)
		}
		if !strings.HasPrefix(s.NetworkMode, "service:server-") || !s.ReadOnly || len(s.Command) < 2 || s.Command[0] != "acl" {
			t.Errorf("%s: want an acl command, read_only, in a server's network namespace: %+v", name, s)
		}
		if name != "acl-bootstrap" && s.dependsOn(t)["acl-bootstrap"] != "service_completed_successfully" {
			t.Errorf("%s must wait for acl-bootstrap to complete successfully: %v", name, s.dependsOn(t))
		}
	}
	if b := services["acl-bootstrap"]; !strings.HasPrefix(b.Restart, "on-failure") || !slices.Contains(b.Volumes, "acl:/data") {
		t.Errorf("acl-bootstrap: restart %q (want on-failure: retried until a leader answers), volumes %v (want acl:/data)", b.Restart, b.Volumes)
	}
	for _, app := range []string{"app-a", "app-b"} {
		s := services[app]
		deps := s.dependsOn(t)
		if deps["acl-app-token"] != "service_completed_successfully" || deps["acl-anonymous"] != "service_completed_successfully" {
			t.Errorf("%s must start after acl-app-token and acl-anonymous complete: %v", app, deps)
		}
		if f := s.Environment["SIDECAR_TOKEN_FILE"]; f != "/etc/sidecar/acl/app.token" {
			t.Errorf("%s: SIDECAR_TOKEN_FILE=%q, want /etc/sidecar/acl/app.token", app, f)
		}
		if !slices.Equal(s.Volumes, []string{"acl-app:/etc/sidecar/acl:ro"}) {
			t.Errorf("%s: volumes %v, want only acl-app:/etc/sidecar/acl:ro (its own token, not the management token)", app, s.Volumes)
		}
	}

	// Run the steps. Volume paths map to directories; the agent is a stand-in
	// that keeps tokens.
	dirs := map[string]string{"acl": t.TempDir(), "acl-app": t.TempDir()}
	agent := newFakeACLAgent(t)
	runStep := func(name string) {
		t.Helper()
		s := services[name]
		args := slices.Clone(s.Command)
		for _, v := range s.Volumes {
			parts := strings.Split(v, ":")
			for i, a := range args {
				if strings.HasPrefix(a, parts[1]+"/") {
					args[i] = filepath.Join(dirs[parts[0]], strings.TrimPrefix(a, parts[1]+"/"))
				}
			}
		}
		cmd := exec.Command(sidecarBin, args...)
		cmd.Env = append(os.Environ(), "SIDECAR_HTTP_ADDR="+agent.addr, "SIDECAR_TOKEN=", "SIDECAR_TOKEN_FILE=")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: sidecar %q: %v\n%s", name, args, err, out)
		}
	}
	for round := 1; round <= 2; round++ {
		for _, name := range steps {
			runStep(name)
		}
		mgmt := readSecret(t, filepath.Join(dirs["acl"], "management.token"))
		app := readSecret(t, filepath.Join(dirs["acl-app"], "app.token"))
		if !agent.isManagement(mgmt) || agent.rules(app) == "" || agent.rules("anonymous") == "" {
			t.Fatalf("round %d: management %v, app rules %q, anonymous rules %q", round, agent.isManagement(mgmt), agent.rules(app), agent.rules("anonymous"))
		}
		if n := agent.count(); n != 3 {
			t.Errorf("round %d: %d tokens, want 3 (management, demo-app, anonymous): a later up must not make more", round, n)
		}
	}
}

func readSecret(t *testing.T, path string) string {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %v, want 0600", path, fi.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}
