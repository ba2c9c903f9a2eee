package election_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/fsm"
)

// benchServer starts one bootstrapped server, in memory or on raft-boltdb
// in a temporary dir (each entry then costs an fsync).
func benchServer(b *testing.B, onDisk bool) *election.Server {
	b.Helper()
	cfg := election.DefaultServerConfig()
	cfg.Node = "bench"
	cfg.Bootstrap = true
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if onDisk {
		cfg.DataDir = b.TempDir()
		cfg.RaftAddr = "127.0.0.1:0"
	} else {
		cfg.InMemory = true
	}
	s, err := election.NewServer(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	for !s.IsLeader() {
		time.Sleep(5 * time.Millisecond)
	}
	ctx := context.Background()
	if _, err := s.Apply(ctx, &fsm.RegisterNode{Name: "bench", Address: "127.0.0.1"}); err != nil {
		b.Fatal(err)
	}
	return s
}

func BenchmarkServer_Register(b *testing.B) {
	for _, disk := range []bool{false, true} {
		b.Run(map[bool]string{false: "inmem", true: "disk"}[disk], func(b *testing.B) {
			s := benchServer(b, disk)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				in := fsm.Instance{ID: fmt.Sprintf("web-%d", i%1000), Name: "web", Node: "bench", Address: "10.0.0.1", Port: 8080,
					Tags: []string{"v1"}, Checks: []fsm.Check{{ID: fmt.Sprintf("web-%d:1", i%1000), Type: "ttl", TTL: 10e9}}}
				if _, err := s.Apply(ctx, &fsm.RegisterInstance{Instance: in}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkServer_LockAcquireRelease(b *testing.B) {
	for _, disk := range []bool{false, true} {
		b.Run(map[bool]string{false: "inmem", true: "disk"}[disk], func(b *testing.B) {
			s := benchServer(b, disk)
			ctx := context.Background()
			lease, err := s.Apply(ctx, &fsm.GrantLease{TTL: 60e9})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				res, err := s.Apply(ctx, &fsm.AcquireLock{Name: "job", Lease: lease.LeaseID, Now: int64(i)})
				if err != nil || !res.Held {
					b.Fatalf("acquire: %+v %v", res, err)
				}
				if _, err := s.Apply(ctx, &fsm.ReleaseLock{Name: "job", Lease: lease.LeaseID, Now: int64(i)}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkServer_RegisterParallel shows group commit: concurrent writers
// share appends (and fsyncs) on raft-boltdb.
func BenchmarkServer_RegisterParallel(b *testing.B) {
	s := benchServer(b, true)
	ctx := context.Background()
	var n atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			in := fsm.Instance{ID: fmt.Sprintf("web-%d", i%1000), Name: "web", Node: "bench", Address: "10.0.0.1", Port: 8080}
			if _, err := s.Apply(ctx, &fsm.RegisterInstance{Instance: in}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
