package election_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/sidecarhq/sidecar/internal/hangwatch"
)

func TestMain(m *testing.M) {
	hangwatch.Start()
	goleak.VerifyTestMain(m)
}
