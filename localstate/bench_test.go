package localstate

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/fsm"
)

// BenchmarkStore_checkpointNew: the checkpoint of 20,000 new registrations
// (an agent filling its local state, as the write benchmarks do) into an
// empty local.db. The writer takes no writes while it runs, so its time is
// a stall every registration on the agent waits out.
func BenchmarkStore_checkpointNew(b *testing.B) {
	const records, writers = 20000, 64
	old := walCheckpointBytes
	walCheckpointBytes = 1 << 40 // only Close checkpoints
	defer func() { walCheckpointBytes = old }()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		s, err := Open(filepath.Join(b.TempDir(), FileName))
		if err != nil {
			b.Fatal(err)
		}
		var wg sync.WaitGroup
		for w := range writers {
			wg.Go(func() {
				for k := w; k < records; k += writers {
					id := fmt.Sprintf("inst-%d-%d", k%writers, k)
					in := fsm.Instance{ID: id, Node: "n1", Name: fmt.Sprintf("svc-%d", k%100), Address: "10.0.0.1", Port: 1024 + k%60000}
					if err := s.PutService(Service{Instance: in, Source: SourceAPI}); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		start := time.Now()
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
	}
	b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "checkpoint-ms")
}
