package test

import (
	"time"

	"github.com/sidecarhq/sidecar/agent"
	"github.com/sidecarhq/sidecar/httpapi"
)

// setBodyReadTimeout shortens how long a request body may take to arrive,
// for the agents the test starts next; it returns the undo. (Today a
// package variable of httpapi; where it is a setting of the agent's
// config, set it on cfg instead.)
func setBodyReadTimeout(_ *agent.Config, d time.Duration) (undo func()) {
	old := httpapi.BodyReadTimeout
	httpapi.BodyReadTimeout = d
	return func() { httpapi.BodyReadTimeout = old }
}
