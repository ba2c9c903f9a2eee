// Package deploy holds no code: it is the home of sidecar's deployment files
// (systemd unit and env files, container image, compose cluster, Kubernetes
// manifests; see README.md) and of the tests that keep them working:
//
//   - systemd_test.go: the unit passes systemd-analyze verify, and agents
//     started with only the example env files' variables form a cluster and
//     tell systemd READY=1 once they serve;
//   - kubernetes_test.go: the manifests' ports, probes, env, TLS Secrets and
//     volume mounts match the agent's flags;
//   - compose_test.go: the compose file's TLS wiring (files, key, the
//     one-shot steps that make them), without Docker;
//   - e2e_test.go (build tag e2e, run by deploy/e2e.sh through `make e2e`):
//     the images and the compose cluster, end to end.
package deploy
