package deploy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

const k8sDir = "kubernetes"

// The parts of the Kubernetes objects the tests look at.
type (
	k8sObject struct {
		APIVersion string   `yaml:"apiVersion"`
		Kind       string   `yaml:"kind"`
		Metadata   metadata `yaml:"metadata"`
		Spec       k8sSpec  `yaml:"spec"`
		file       string
	}
	metadata struct {
		Name   string            `yaml:"name"`
		Labels map[string]string `yaml:"labels"`
	}
	// k8sSpec is the union of the specs of Service, StatefulSet, Deployment
	// and PodDisruptionBudget.
	k8sSpec struct {
		// Service
		ClusterIP                string        `yaml:"clusterIP"`
		PublishNotReadyAddresses bool          `yaml:"publishNotReadyAddresses"`
		Ports                    []servicePort `yaml:"ports"`
		// StatefulSet, Deployment, PodDisruptionBudget
		Replicas             *int            `yaml:"replicas"`
		ServiceName          string          `yaml:"serviceName"`
		PodManagementPolicy  string          `yaml:"podManagementPolicy"`
		Selector             yaml.Node       `yaml:"selector"`
		Template             podTemplate     `yaml:"template"`
		VolumeClaimTemplates []claimTemplate `yaml:"volumeClaimTemplates"`
		Strategy             deployStrategy  `yaml:"strategy"`
		MaxUnavailable       any             `yaml:"maxUnavailable"`
	}
	servicePort struct {
		Name       string `yaml:"name"`
		Port       int    `yaml:"port"`
		TargetPort any    `yaml:"targetPort"`
		Protocol   string `yaml:"protocol"`
	}
	podTemplate struct {
		Metadata metadata `yaml:"metadata"`
		Spec     podSpec  `yaml:"spec"`
	}
	podSpec struct {
		SecurityContext struct {
			RunAsNonRoot *bool `yaml:"runAsNonRoot"`
			RunAsUser    *int  `yaml:"runAsUser"`
			FSGroup      *int  `yaml:"fsGroup"`
		} `yaml:"securityContext"`
		TerminationGracePeriodSeconds *int        `yaml:"terminationGracePeriodSeconds"`
		InitContainers                []container `yaml:"initContainers"`
		Containers                    []container `yaml:"containers"`
		Volumes                       []volume    `yaml:"volumes"`
	}
	volume struct {
		Name   string `yaml:"name"`
		Secret *struct {
			SecretName  string       `yaml:"secretName"`
			DefaultMode *int         `yaml:"defaultMode"`
			Items       []secretItem `yaml:"items"`
		} `yaml:"secret"`
		Projected *struct {
			DefaultMode *int `yaml:"defaultMode"`
			Sources     []struct {
				Secret *struct {
					Name  string       `yaml:"name"`
					Items []secretItem `yaml:"items"`
				} `yaml:"secret"`
			} `yaml:"sources"`
		} `yaml:"projected"`
		EmptyDir *struct {
			Medium string `yaml:"medium"`
		} `yaml:"emptyDir"`
	}
	secretItem struct {
		Key  string `yaml:"key"`
		Path string `yaml:"path"`
	}
	container struct {
		Name         string          `yaml:"name"`
		Image        string          `yaml:"image"`
		Args         []string        `yaml:"args"`
		Env          []envEntry      `yaml:"env"`
		Ports        []containerPort `yaml:"ports"`
		Readiness    *probe          `yaml:"readinessProbe"`
		Liveness     *probe          `yaml:"livenessProbe"`
		VolumeMounts []struct {
			Name      string `yaml:"name"`
			MountPath string `yaml:"mountPath"`
			ReadOnly  bool   `yaml:"readOnly"`
		} `yaml:"volumeMounts"`
		SecurityContext struct {
			AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
			ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
		} `yaml:"securityContext"`
	}
	envEntry struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			FieldRef *struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
			SecretKeyRef *struct {
				Name     string `yaml:"name"`
				Key      string `yaml:"key"`
				Optional bool   `yaml:"optional"`
			} `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	}
	containerPort struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
		Protocol      string `yaml:"protocol"`
	}
	probe struct {
		HTTPGet *struct {
			Path string `yaml:"path"`
			Port any    `yaml:"port"`
		} `yaml:"httpGet"`
	}
	claimTemplate struct {
		Metadata metadata `yaml:"metadata"`
		Spec     struct {
			AccessModes []string `yaml:"accessModes"`
			Resources   struct {
				Requests map[string]string `yaml:"requests"`
			} `yaml:"resources"`
		} `yaml:"spec"`
	}
	deployStrategy struct {
		Type          string `yaml:"type"`
		RollingUpdate struct {
			MaxUnavailable any `yaml:"maxUnavailable"`
		} `yaml:"rollingUpdate"`
	}
)

// selectorLabels reads a Service's selector (a flat map) or a workload's
// (matchLabels).
func (o *k8sObject) selectorLabels(t *testing.T) map[string]string {
	t.Helper()
	var flat map[string]string
	if o.Kind == "Service" {
		if err := o.Spec.Selector.Decode(&flat); err != nil {
			t.Fatalf("%s %s: selector: %v", o.Kind, o.Metadata.Name, err)
		}
		return flat
	}
	var sel struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	}
	if err := o.Spec.Selector.Decode(&sel); err != nil {
		t.Fatalf("%s %s: selector: %v", o.Kind, o.Metadata.Name, err)
	}
	return sel.MatchLabels
}

// loadKustomization reads kustomization.yaml and every resource it lists,
// and checks that it lists every manifest of the directory.
func loadKustomization(t *testing.T) []*k8sObject {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(k8sDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Kind      string   `yaml:"kind"`
		Resources []string `yaml:"resources"`
		Images    []struct {
			Name string `yaml:"name"`
		} `yaml:"images"`
	}
	if err := yaml.Unmarshal(b, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	if k.Kind != "Kustomization" {
		t.Fatalf("kustomization.yaml: kind %q", k.Kind)
	}
	files, _ := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	for _, f := range files {
		if base := filepath.Base(f); base != "kustomization.yaml" && !slices.Contains(k.Resources, base) {
			t.Errorf("kustomization.yaml does not list %s", base)
		}
	}
	var objs []*k8sObject
	for _, r := range k.Resources {
		data, err := os.ReadFile(filepath.Join(k8sDir, r))
		if err != nil {
			t.Fatalf("kustomization.yaml lists %s: %v", r, err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for {
			o := &k8sObject{file: r}
			if err := dec.Decode(o); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", r, err)
			}
			if o.APIVersion == "" || o.Kind == "" || o.Metadata.Name == "" {
				t.Fatalf("%s: an object without apiVersion, kind or name", r)
			}
			objs = append(objs, o)
		}
	}
	images := map[string]bool{}
	for _, i := range k.Images {
		images[i.Name] = true
	}
	for _, o := range objs {
		for _, c := range append(slices.Clone(o.Spec.Template.Spec.InitContainers), o.Spec.Template.Spec.Containers...) {
			if !images[c.Image] {
				t.Errorf("%s: container %s image %q is not in the kustomization's images", o.file, c.Name, c.Image)
			}
		}
	}
	return objs
}

func find(t *testing.T, objs []*k8sObject, kind, name string) *k8sObject {
	t.Helper()
	for _, o := range objs {
		if o.Kind == kind && o.Metadata.Name == name {
			return o
		}
	}
	t.Fatalf("no %s %s in the kustomization", kind, name)
	return nil
}

func containerNamed(t *testing.T, o *k8sObject, name string) *container {
	t.Helper()
	for i, c := range o.Spec.Template.Spec.Containers {
		if c.Name == name {
			return &o.Spec.Template.Spec.Containers[i]
		}
	}
	t.Fatalf("%s %s has no container %s", o.Kind, o.Metadata.Name, name)
	return nil
}

func (c *container) env(name string) (envEntry, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e, true
		}
	}
	return envEntry{}, false
}

func (c *container) envValue(t *testing.T, name string) string {
	t.Helper()
	e, ok := c.env(name)
	if !ok || e.ValueFrom != nil {
		t.Fatalf("container %s: %s is not set to a value", c.Name, name)
	}
	return e.Value
}

// port resolves a probe's or Service's port (number or name) against the
// container's ports.
func (c *container) port(t *testing.T, p any, proto string) int {
	t.Helper()
	switch v := p.(type) {
	case int:
		return v
	case string:
		for _, cp := range c.Ports {
			if cp.Name == v && cp.Protocol == proto {
				return cp.ContainerPort
			}
		}
		t.Fatalf("container %s has no %s port named %q", c.Name, proto, v)
	}
	t.Fatalf("container %s: port %v (%T)", c.Name, p, p)
	return 0
}

func (c *container) hasPort(port int, proto string) bool {
	for _, cp := range c.Ports {
		if cp.ContainerPort == port && cp.Protocol == proto {
			return true
		}
	}
	return false
}

// checkAgentEnv checks a sidecar container's environment against the
// agent's flags: only known SIDECAR_ names, listen addresses that are
// literal ip:port with declared container ports, name and advertise address
// from the pod; it returns the HTTP port.
func checkAgentEnv(t *testing.T, c *container, known map[string]agentFlag, server bool) (httpPort int) {
	t.Helper()
	for _, e := range c.Env {
		if strings.HasPrefix(e.Name, "SIDECAR_") {
			if _, ok := known[e.Name]; !ok {
				t.Errorf("container %s: %s is not an agent setting (sidecar agent --help)", c.Name, e.Name)
			}
		}
	}
	if len(c.Args) != 1 || c.Args[0] != "agent" {
		t.Errorf("container %s: args %q, want [agent]", c.Name, c.Args)
	}
	if e, _ := c.env("SIDECAR_ACL_DEFAULT_POLICY"); e.Value != "deny" {
		t.Errorf("container %s: SIDECAR_ACL_DEFAULT_POLICY=%q, want deny (README, ACL tokens)", c.Name, e.Value)
	}
	if e, _ := c.env("SIDECAR_NAME"); e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.name" {
		t.Errorf("container %s: SIDECAR_NAME must come from metadata.name (unique node names)", c.Name)
	}
	if e, _ := c.env("SIDECAR_ADVERTISE_ADDR"); e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "status.podIP" {
		t.Errorf("container %s: SIDECAR_ADVERTISE_ADDR must come from status.podIP", c.Name)
	}
	if e, ok := c.env("SIDECAR_ENCRYPT"); ok && (e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil) {
		t.Errorf("container %s: SIDECAR_ENCRYPT must come from a Secret, not a literal", c.Name)
	}
	listen := func(name string) (string, int) {
		v := c.envValue(t, name)
		host, p, err := net.SplitHostPort(v)
		if err != nil || net.ParseIP(host) == nil {
			t.Fatalf("container %s: %s=%q is not a literal ip:port", c.Name, name, v)
		}
		port, _ := strconv.Atoi(p)
		return host, port
	}
	_, gossip := listen("SIDECAR_BIND_ADDR")
	if !c.hasPort(gossip, "TCP") || !c.hasPort(gossip, "UDP") {
		t.Errorf("container %s: gossip port %d must be declared for TCP and UDP", c.Name, gossip)
	}
	host, httpPort := listen("SIDECAR_HTTP_ADDR")
	if host != "0.0.0.0" {
		t.Errorf("container %s: SIDECAR_HTTP_ADDR on %s: the kubelet probes the pod IP, bind 0.0.0.0", c.Name, host)
	}
	if !c.hasPort(httpPort, "TCP") {
		t.Errorf("container %s: HTTP port %d not declared", c.Name, httpPort)
	}
	if host, _ := listen("SIDECAR_DNS_ADDR"); host != "127.0.0.1" {
		t.Errorf("container %s: DNS for the pod only: 127.0.0.1, not %s", c.Name, host)
	}
	if server {
		_, raft := listen("SIDECAR_RAFT_ADDR")
		if !c.hasPort(raft, "TCP") {
			t.Errorf("container %s: Raft port %d not declared", c.Name, raft)
		}
	} else if _, ok := c.env("SIDECAR_SERVER"); ok {
		t.Errorf("container %s: a client sets no SIDECAR_SERVER", c.Name)
	}
	if c.Readiness == nil || c.Readiness.HTTPGet == nil || c.Readiness.HTTPGet.Path != "/readyz" ||
		c.port(t, c.Readiness.HTTPGet.Port, "TCP") != httpPort {
		t.Errorf("container %s: readiness probe must be GET /readyz on the HTTP port %d", c.Name, httpPort)
	}
	if c.Liveness == nil || c.Liveness.HTTPGet == nil || c.Liveness.HTTPGet.Path != "/healthz" ||
		c.port(t, c.Liveness.HTTPGet.Port, "TCP") != httpPort {
		t.Errorf("container %s: liveness probe must be GET /healthz on the HTTP port %d", c.Name, httpPort)
	}
	checkHardened(t, c)
	return httpPort
}

func checkHardened(t *testing.T, c *container) {
	t.Helper()
	sc := c.SecurityContext
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("container %s: want allowPrivilegeEscalation false and readOnlyRootFilesystem true", c.Name)
	}
}

func checkPodNonRoot(t *testing.T, o *k8sObject) {
	t.Helper()
	sc := o.Spec.Template.Spec.SecurityContext
	if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != 65532 {
		t.Errorf("%s %s: pod must run as non-root 65532, the images' user", o.Kind, o.Metadata.Name)
	}
}

// The Secrets the manifests read; deploy/README.md has the commands that
// make them.
const (
	caSecret     = "sidecar-ca"     // sidecar-ca.pem, sidecar-ca-key.pem
	caCertKey    = "sidecar-ca.pem" // the only key of caSecret an agent sees
	gossipSecret = "sidecar-gossip" // key: sidecar keygen
)

// volumeNamed finds a pod volume.
func (o *k8sObject) volumeNamed(t *testing.T, name string) volume {
	t.Helper()
	for _, v := range o.Spec.Template.Spec.Volumes {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("%s %s has no volume %s", o.Kind, o.Metadata.Name, name)
	return volume{}
}

// mountOf finds the volume mount of c under which path lies.
func (c *container) mountOf(path string) (name, mountPath string, readOnly, ok bool) {
	for _, m := range c.VolumeMounts {
		if rel, err := filepath.Rel(m.MountPath, path); err == nil && !strings.HasPrefix(rel, "..") && rel != "." {
			return m.Name, m.MountPath, m.ReadOnly, true
		}
	}
	return "", "", false, false
}

// secretKeys lists, per Secret, the keys a volume projects (nil: all).
func (v volume) secretKeys() map[string][]string {
	keys := map[string][]string{}
	items := func(its []secretItem) []string {
		if len(its) == 0 {
			return nil
		}
		var ks []string
		for _, i := range its {
			ks = append(ks, i.Key)
		}
		return ks
	}
	if v.Secret != nil {
		keys[v.Secret.SecretName] = items(v.Secret.Items)
	}
	if v.Projected != nil {
		for _, src := range v.Projected.Sources {
			if src.Secret != nil {
				keys[src.Secret.Name] = items(src.Secret.Items)
			}
		}
	}
	return keys
}

// checkSecretVolumes: every Secret volume of the pod is 0440, readable by
// the pod's fsGroup 65532 (the images' user) and by no one else; and no
// container but the one named signer (if any) mounts the CA key.
func checkSecretVolumes(t *testing.T, o *k8sObject, signer string) {
	t.Helper()
	spec := o.Spec.Template.Spec
	if fs := spec.SecurityContext.FSGroup; fs == nil || *fs != 65532 {
		t.Errorf("%s %s: fsGroup %v: the TLS Secrets are readable by group 65532, the images' user", o.Kind, o.Metadata.Name, fs)
	}
	for _, v := range spec.Volumes {
		var mode *int
		switch {
		case v.Secret != nil:
			mode = v.Secret.DefaultMode
		case v.Projected != nil:
			mode = v.Projected.DefaultMode
		default:
			continue
		}
		if mode == nil || *mode != 0o440 {
			t.Errorf("%s %s: volume %s: defaultMode %v, want 0440 (keys readable by the fsGroup only)", o.Kind, o.Metadata.Name, v.Name, mode)
		}
	}
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		for _, m := range c.VolumeMounts {
			for _, v := range spec.Volumes {
				if v.Name != m.Name {
					continue
				}
				if keys, ok := v.secretKeys()[caSecret]; ok && c.Name != signer && !slices.Equal(keys, []string{caCertKey}) {
					t.Errorf("%s %s: container %s mounts Secret %s with keys %v: only %s, never the CA key", o.Kind, o.Metadata.Name, c.Name, caSecret, keys, caCertKey)
				}
			}
		}
	}
}

// checkAgentTLS checks an agent container's TLS settings: the three files
// are set, lie in read-only mounts, the certificate and key are the ones
// named after the node ($(SIDECAR_NAME), declared before them so that
// Kubernetes expands it), the CA certificate comes from Secret sidecar-ca,
// and the gossip key from Secret sidecar-gossip (required). It returns the
// volume holding the certificate and the directory it is mounted on.
func checkAgentTLS(t *testing.T, o *k8sObject, c *container) (certVolume volume, certDir string) {
	t.Helper()
	index := func(name string) int {
		return slices.IndexFunc(c.Env, func(e envEntry) bool { return e.Name == name })
	}
	files := map[string]string{}
	for _, k := range []string{"SIDECAR_TLS_CA_FILE", "SIDECAR_TLS_CERT_FILE", "SIDECAR_TLS_KEY_FILE"} {
		path := c.envValue(t, k)
		files[k] = path
		if _, _, ro, ok := c.mountOf(path); !ok || !ro {
			t.Errorf("container %s: %s=%s is not in a read-only volume mount (%v)", c.Name, k, path, c.VolumeMounts)
		}
	}
	certDir = filepath.Dir(files["SIDECAR_TLS_CERT_FILE"])
	if files["SIDECAR_TLS_CERT_FILE"] != certDir+"/$(SIDECAR_NAME).pem" || files["SIDECAR_TLS_KEY_FILE"] != certDir+"/$(SIDECAR_NAME)-key.pem" {
		t.Errorf("container %s: certificate %s and key %s, want DIR/$(SIDECAR_NAME).pem and DIR/$(SIDECAR_NAME)-key.pem (sidecar tls cert create --node NAME names them so)",
			c.Name, files["SIDECAR_TLS_CERT_FILE"], files["SIDECAR_TLS_KEY_FILE"])
	}
	if n := index("SIDECAR_NAME"); n < 0 || n > index("SIDECAR_TLS_CERT_FILE") || n > index("SIDECAR_TLS_KEY_FILE") {
		t.Errorf("container %s: SIDECAR_NAME must be declared before the TLS files for $(SIDECAR_NAME) to expand", c.Name)
	}
	caVol, _, _, _ := c.mountOf(files["SIDECAR_TLS_CA_FILE"])
	if keys, ok := o.volumeNamed(t, caVol).secretKeys()[caSecret]; !ok || filepath.Base(files["SIDECAR_TLS_CA_FILE"]) != caCertKey {
		t.Errorf("container %s: SIDECAR_TLS_CA_FILE=%s is not %s of Secret %s (volume %s projects %v)", c.Name, files["SIDECAR_TLS_CA_FILE"], caCertKey, caSecret, caVol, keys)
	}
	certVol, _, _, _ := c.mountOf(files["SIDECAR_TLS_CERT_FILE"])
	if e, _ := c.env("SIDECAR_ENCRYPT"); e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil ||
		e.ValueFrom.SecretKeyRef.Name != gossipSecret || e.ValueFrom.SecretKeyRef.Optional {
		t.Errorf("container %s: SIDECAR_ENCRYPT must come from Secret %s, not optional (TLS needs a gossip key)", c.Name, gossipSecret)
	}
	return o.volumeNamed(t, certVol), certDir
}

// TestKubernetes_servers checks the StatefulSet and its headless Service.
func TestKubernetes_servers(t *testing.T) {
	objs := loadKustomization(t)
	known := agentEnvNames(t)
	sts := find(t, objs, "StatefulSet", "sidecar-server")
	svc := find(t, objs, "Service", sts.Spec.ServiceName)

	if sts.Spec.Replicas == nil || *sts.Spec.Replicas != 3 {
		t.Fatalf("StatefulSet replicas %v, want 3", sts.Spec.Replicas)
	}
	if sts.Spec.PodManagementPolicy != "Parallel" {
		t.Errorf("podManagementPolicy %q: with OrderedReady pod 0 waits to be ready, which needs all 3", sts.Spec.PodManagementPolicy)
	}
	if svc.Spec.ClusterIP != "None" || !svc.Spec.PublishNotReadyAddresses {
		t.Errorf("Service %s: want headless (clusterIP None) with publishNotReadyAddresses", svc.Metadata.Name)
	}
	podLabels := sts.Spec.Template.Metadata.Labels
	for _, sel := range []map[string]string{svc.selectorLabels(t), sts.selectorLabels(t)} {
		for k, v := range sel {
			if podLabels[k] != v {
				t.Errorf("selector %s=%s does not match the pod labels %v", k, v, podLabels)
			}
		}
	}
	checkPodNonRoot(t, sts)
	if fs := sts.Spec.Template.Spec.SecurityContext.FSGroup; fs == nil || *fs != 65532 {
		t.Errorf("fsGroup %v: the volume must be writable by the image's user 65532", fs)
	}

	c := containerNamed(t, sts, "sidecar")
	checkAgentEnv(t, c, known, true)
	// TLS: each pod's server certificate from Secret sidecar-server-tls,
	// which holds one per pod (the node name is the pod name).
	checkSecretVolumes(t, sts, "")
	certVol, _ := checkAgentTLS(t, sts, c)
	if keys, ok := certVol.secretKeys()["sidecar-server-tls"]; !ok || keys != nil {
		t.Errorf("the servers' certificates must come from every key of Secret sidecar-server-tls (volume %s: %v)", certVol.Name, certVol.secretKeys())
	}
	if v := c.envValue(t, "SIDECAR_SERVER"); v != "true" {
		t.Errorf("SIDECAR_SERVER=%q", v)
	}
	if v := c.envValue(t, "SIDECAR_BOOTSTRAP_EXPECT"); v != strconv.Itoa(*sts.Spec.Replicas) {
		t.Errorf("SIDECAR_BOOTSTRAP_EXPECT=%s, want replicas (%d)", v, *sts.Spec.Replicas)
	}
	if join := strings.Split(c.envValue(t, "SIDECAR_JOIN"), ","); !slices.Contains(join, svc.Metadata.Name) {
		t.Errorf("SIDECAR_JOIN=%q does not name the headless Service %s", join, svc.Metadata.Name)
	}
	// The data directory is the mount of the claim template's volume.
	dataDir := c.envValue(t, "SIDECAR_DATA_DIR")
	if len(sts.Spec.VolumeClaimTemplates) != 1 {
		t.Fatalf("want one volumeClaimTemplate, have %d", len(sts.Spec.VolumeClaimTemplates))
	}
	claim := sts.Spec.VolumeClaimTemplates[0]
	mounted := false
	for _, m := range c.VolumeMounts {
		if m.Name == claim.Metadata.Name && m.MountPath == dataDir {
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("SIDECAR_DATA_DIR=%s is not where the claim %s is mounted (%v)", dataDir, claim.Metadata.Name, c.VolumeMounts)
	}
	if !slices.Contains(claim.Spec.AccessModes, "ReadWriteOnce") || claim.Spec.Resources.Requests["storage"] == "" {
		t.Errorf("claim %s: want ReadWriteOnce and a storage request", claim.Metadata.Name)
	}
	// Every port the Service publishes is one the container declares, for
	// the same protocol, and the gossip and Raft ports are published.
	published := map[string]bool{}
	for _, p := range svc.Spec.Ports {
		proto := p.Protocol
		if proto == "" {
			proto = "TCP"
		}
		if target := c.port(t, p.TargetPort, proto); target != p.Port {
			t.Errorf("Service port %s: %d -> container port %d (keep them equal: agents advertise the container port)", p.Name, p.Port, target)
		}
		published[strconv.Itoa(p.Port)+"/"+proto] = true
	}
	_, raftPort, _ := net.SplitHostPort(c.envValue(t, "SIDECAR_RAFT_ADDR"))
	_, gossipPort, _ := net.SplitHostPort(c.envValue(t, "SIDECAR_BIND_ADDR"))
	for _, want := range []string{gossipPort + "/TCP", gossipPort + "/UDP", raftPort + "/TCP"} {
		if !published[want] {
			t.Errorf("headless Service does not publish %s", want)
		}
	}
	pdb := find(t, objs, "PodDisruptionBudget", "sidecar-server")
	if pdb.Spec.MaxUnavailable != 1 {
		t.Errorf("PodDisruptionBudget maxUnavailable %v, want 1 (keep a quorum of 3)", pdb.Spec.MaxUnavailable)
	}
}

// flagArg finds -name=value (or -name value) in the demo app's args.
func flagArg(args []string, name string) (string, bool) {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "-"+name+"="); ok {
			return v, true
		}
		if a == "-"+name && i+1 < len(args) {
			return args[i+1], true
		}
	}
	return "", false
}

// TestKubernetes_demoDeployment checks the example Deployment: the sidecar
// beside the app, the app pointed at it, and the leader-only readiness
// probe on /v1/elections/<the app's election>/self of the sidecar.
func TestKubernetes_demoDeployment(t *testing.T) {
	objs := loadKustomization(t)
	known := agentEnvNames(t)
	dep := find(t, objs, "Deployment", "demo")
	servers := find(t, objs, "StatefulSet", "sidecar-server")
	checkPodNonRoot(t, dep)

	sc := containerNamed(t, dep, "sidecar")
	httpPort := checkAgentEnv(t, sc, known, false)
	if join := strings.Split(sc.envValue(t, "SIDECAR_JOIN"), ","); !slices.Contains(join, servers.Spec.ServiceName) {
		t.Errorf("sidecar SIDECAR_JOIN=%q does not name the servers' Service %s", join, servers.Spec.ServiceName)
	}
	_, dnsPort, _ := net.SplitHostPort(sc.envValue(t, "SIDECAR_DNS_ADDR"))
	checkDemoTLS(t, dep, sc)

	app := containerNamed(t, dep, "app")
	checkHardened(t, app)
	checkAppToken(t, dep, app, sc)
	// The app talks to its own sidecar on loopback, at the sidecar's ports.
	if v, _ := flagArg(app.Args, "sidecar-http"); v != "127.0.0.1:"+strconv.Itoa(httpPort) {
		t.Errorf("app -sidecar-http=%q, want 127.0.0.1:%d", v, httpPort)
	}
	if v, _ := flagArg(app.Args, "sidecar-dns"); v != "127.0.0.1:"+dnsPort {
		t.Errorf("app -sidecar-dns=%q, want 127.0.0.1:%s", v, dnsPort)
	}
	election, ok := flagArg(app.Args, "election")
	if !ok || election == "" {
		t.Fatalf("app campaigns in no election: %q", app.Args)
	}
	r := app.Readiness
	if r == nil || r.HTTPGet == nil || r.HTTPGet.Path != "/v1/elections/"+election+"/self" {
		path := "none"
		if r != nil && r.HTTPGet != nil {
			path = "GET " + r.HTTPGet.Path
		}
		t.Fatalf("app readiness probe %s, want GET /v1/elections/%s/self", path, election)
	}
	if p, ok := r.HTTPGet.Port.(int); !ok || p != httpPort {
		t.Errorf("app readiness probe on port %v, want the sidecar's HTTP port %d as a number (a port name resolves only among the app container's own ports)", r.HTTPGet.Port, httpPort)
	}
	// Only the leader is ready, so a rollout must be allowed to take every
	// old pod down, the leader included.
	if s := dep.Spec.Strategy; s.Type == "RollingUpdate" && s.RollingUpdate.MaxUnavailable != "100%" {
		t.Errorf("strategy %+v: with a leader-only readiness probe a rolling update needs maxUnavailable 100%% (or Recreate)", s)
	}
	// The Service sends traffic to the app's port of the ready (leading) pod.
	svc := find(t, objs, "Service", "demo-primary")
	for k, v := range svc.selectorLabels(t) {
		if dep.Spec.Template.Metadata.Labels[k] != v {
			t.Errorf("Service demo-primary selector %s=%s does not match the demo pods", k, v)
		}
	}
	listen, _ := flagArg(app.Args, "listen")
	_, appPort, _ := net.SplitHostPort(listen)
	for _, p := range svc.Spec.Ports {
		if got := app.port(t, p.TargetPort, "TCP"); strconv.Itoa(got) != appPort {
			t.Errorf("Service demo-primary targets port %d, the app listens on %s", got, appPort)
		}
	}
}

// checkDemoTLS: a Deployment's pod names are known only once the pod
// exists, so the init container tls-cert issues the sidecar's client
// certificate for the pod's name into a memory-backed emptyDir, with the CA
// of Secret sidecar-ca (only it mounts the CA key). Its arguments are run
// with the real CLI, paths moved to a temporary directory, and must make
// the files the sidecar reads.
func checkDemoTLS(t *testing.T, dep *k8sObject, sc *container) {
	t.Helper()
	checkSecretVolumes(t, dep, "tls-cert")
	certVol, certDir := checkAgentTLS(t, dep, sc)
	if certVol.EmptyDir == nil || certVol.EmptyDir.Medium != "Memory" {
		t.Errorf("the sidecar's certificate volume %s must be an emptyDir in memory, filled by the init container", certVol.Name)
	}
	var init *container
	for i, c := range dep.Spec.Template.Spec.InitContainers {
		if c.Name == "tls-cert" {
			init = &dep.Spec.Template.Spec.InitContainers[i]
		}
	}
	if init == nil {
		t.Fatalf("Deployment %s has no init container tls-cert to issue the sidecar's certificate", dep.Metadata.Name)
	}
	checkHardened(t, init)
	if init.Image != sc.Image {
		t.Errorf("init container tls-cert runs %s, want the sidecar image %s", init.Image, sc.Image)
	}
	if e, _ := init.env("POD_NAME"); e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.name" {
		t.Errorf("init container tls-cert: POD_NAME must come from metadata.name, as SIDECAR_NAME does")
	}
	// The init container writes where the sidecar reads.
	var initDir string
	for _, m := range init.VolumeMounts {
		if m.Name == certVol.Name {
			initDir = m.MountPath
			if m.ReadOnly {
				t.Errorf("init container tls-cert mounts %s read-only: it writes the certificate there", m.Name)
			}
		}
	}
	if initDir == "" {
		t.Fatalf("init container tls-cert does not mount the sidecar's certificate volume %s", certVol.Name)
	}
	// Run its arguments: the CA made as deploy/README.md tells, the pod's
	// mounts moved under a temporary root.
	root := t.TempDir()
	var signerDir string
	for _, m := range init.VolumeMounts {
		if keys, ok := dep.volumeNamed(t, m.Name).secretKeys()[caSecret]; ok && keys == nil {
			signerDir = m.MountPath
		}
	}
	if signerDir == "" {
		t.Fatalf("init container tls-cert mounts no volume of Secret %s with its key", caSecret)
	}
	if out, err := exec.Command(sidecarBin, "tls", "ca", "create", "--dir", filepath.Join(root, signerDir)).CombinedOutput(); err != nil {
		t.Fatalf("sidecar tls ca create: %v\n%s", err, out)
	}
	const pod = "demo-7d4b9c-x2x9q"
	var args []string
	for _, a := range init.Args {
		a = strings.ReplaceAll(a, "$(POD_NAME)", pod)
		for _, dir := range []string{signerDir, initDir} {
			a = strings.ReplaceAll(a, "="+dir+"/", "="+filepath.Join(root, dir)+"/")
			if strings.HasSuffix(a, "="+dir) {
				a = strings.TrimSuffix(a, dir) + filepath.Join(root, dir)
			}
		}
		args = append(args, a)
	}
	if out, err := exec.Command(sidecarBin, args...).CombinedOutput(); err != nil {
		t.Fatalf("the init container's sidecar %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	for _, f := range []string{pod + ".pem", pod + "-key.pem"} {
		if _, err := os.Stat(filepath.Join(root, certDir, f)); err != nil {
			t.Errorf("the init container did not make %s where the sidecar reads it (%s): %v", f, certDir, err)
		}
	}
	if !slices.Contains(init.Args, "--client") {
		t.Errorf("init container tls-cert %q: want a --client certificate", init.Args)
	}
}

// TestKubernetes_kustomizeBuilds renders the kustomization with kubectl's
// built-in kustomize, offline, when kubectl is installed.
func TestKubernetes_kustomizeBuilds(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl not installed: kustomize rendering not checked (the manifests are still parsed by the other tests)")
	}
	out, err := exec.Command(kubectl, "kustomize", k8sDir).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v\n%s", err, out)
	}
	var kinds []string
	dec := yaml.NewDecoder(bytes.NewReader(out))
	for {
		var o k8sObject
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, o.Kind+"/"+o.Metadata.Name)
		for _, c := range o.Spec.Template.Spec.Containers {
			if !strings.Contains(c.Image, ":") {
				t.Errorf("%s/%s container %s: image %q has no tag after kustomize", o.Kind, o.Metadata.Name, c.Name, c.Image)
			}
		}
	}
	slices.Sort(kinds)
	want := []string{"Deployment/demo", "PodDisruptionBudget/sidecar-server", "Service/demo-primary", "Service/sidecar-server", "StatefulSet/sidecar-server"}
	if !slices.Equal(kinds, want) {
		t.Errorf("kubectl kustomize renders %v, want %v", kinds, want)
	}
}

// checkAppToken: the app reads its ACL token from SIDECAR_TOKEN_FILE, a
// file of Secret sidecar-demo-token in a read-only mount of its own; the
// sidecar does not mount that Secret.
func checkAppToken(t *testing.T, o *k8sObject, app, sidecar *container) {
	t.Helper()
	file := app.envValue(t, "SIDECAR_TOKEN_FILE")
	secretOf := func(c *container) (dir, secret string, keys []string, readOnly bool) {
		for _, m := range c.VolumeMounts {
			for _, v := range o.Spec.Template.Spec.Volumes {
				if v.Name == m.Name && v.Secret != nil && v.Secret.SecretName == "sidecar-demo-token" {
					return m.MountPath, v.Secret.SecretName, v.secretKeys()[v.Secret.SecretName], m.ReadOnly
				}
			}
		}
		return "", "", nil, false
	}
	dir, _, keys, ro := secretOf(app)
	if dir == "" || !ro || file != dir+"/token" || !slices.Equal(keys, []string{"token"}) {
		t.Errorf("app: SIDECAR_TOKEN_FILE=%q, want the key token of Secret sidecar-demo-token in a read-only mount (mounted %q, keys %v, read-only %v)", file, dir, keys, ro)
	}
	for _, it := range o.Spec.Template.Spec.Volumes {
		if it.Secret != nil && it.Secret.SecretName == "sidecar-demo-token" {
			for _, i := range it.Secret.Items {
				if i.Key == "token" && i.Path != "token" {
					t.Errorf("Secret sidecar-demo-token: key token at %q, want token", i.Path)
				}
			}
		}
	}
	if d, _, _, _ := secretOf(sidecar); d != "" {
		t.Errorf("the sidecar container mounts the app's token on %s: only the app needs it", d)
	}
}
