package discovery_test

import (
	"testing"

	"github.com/sidecarhq/sidecar/discovery/discoverytest"
)

// TestMain checks that no goroutine outlives the tests. memberlist leaves
// none behind for good, but some finish their last probe after Shutdown
// returns; discoverytest.VerifyTestMain waits for them (see LeakPatience)
// instead of ignoring them.
func TestMain(m *testing.M) {
	discoverytest.VerifyTestMain(m)
}
