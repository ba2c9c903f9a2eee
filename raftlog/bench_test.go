package raftlog

import (
	"testing"

	"github.com/hashicorp/raft"
)

// BenchmarkStoreLogs: one batch of n entries of 300 bytes per op, each
// batch one write and one fdatasync.
func BenchmarkStoreLogs(b *testing.B) {
	for _, n := range []int{1, 16, 64} {
		b.Run(map[int]string{1: "1", 16: "16", 64: "64"}[n], func(b *testing.B) {
			s, err := Open(b.TempDir(), Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			data := make([]byte, 300)
			next := uint64(1)
			batch := make([]*raft.Log, n)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for j := range batch {
					batch[j] = &raft.Log{Index: next, Term: 1, Data: data}
					next++
				}
				if err := s.StoreLogs(batch); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
