package election

import "time"

// adaptSnapshots keeps the snapshot threshold at least the registry's size
// once that exceeds cfg.SnapshotAdaptAbove (cfg.SnapshotThreshold is the
// floor; a small registry, as in the fault-injection runs that snapshot
// every few dozen entries, keeps the configured threshold): a snapshot encodes the whole
// registry, so taking one every fixed number of entries makes each entry's
// share of it grow with the registry (at 100,000 instances a 16 MiB
// encoding every 8,192 writes). With the threshold in step with the size,
// that share stays constant, and a restart replays at most about as many
// entries as the snapshot holds. It checks every snapshot interval and
// reloads Raft's config only when the threshold should move by a quarter.
func (s *Server) adaptSnapshots() {
	defer s.wg.Done()
	floor, above := s.cfg.SnapshotThreshold, s.cfg.SnapshotAdaptAbove
	if above == 0 {
		above = defaultSnapshotAdaptAbove
	}
	cur := floor
	// equivalent mutant: how often the size is checked is a tuning constant
	tick := time.NewTicker(max(s.cfg.SnapshotInterval, 100*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		want := snapshotThreshold(floor, above, uint64(s.fsm.Size()))
		// equivalent mutant: the 25% band only spares reconfigurations for small changes of size
		if want == cur || want > cur && want < cur+cur/4 || want < cur && want > cur-cur/4 {
			continue
		}
		rc := s.raft.ReloadableConfig()
		rc.SnapshotThreshold = want
		rc.TrailingLogs = max(s.cfg.TrailingLogs, want)
		// equivalent mutant: cur only spares reloading the same threshold again; the log line is output only
		if err := s.raft.ReloadConfig(rc); err != nil {
			s.log.Warn("snapshot threshold not changed", "want", want, "err", err)
			continue
		}
		s.log.Debug("snapshot threshold follows the registry", "threshold", want)
		cur = want
	}
}

// defaultSnapshotAdaptAbove is raft's default threshold: below it a
// snapshot is cheap whatever the threshold.
const defaultSnapshotAdaptAbove = 8192

// snapshotThreshold is the threshold for a registry of size records.
func snapshotThreshold(floor, above, size uint64) uint64 {
	// equivalent mutant: at exactly above records either threshold serves: below it snapshots are cheap anyway
	if size <= above {
		return floor
	}
	return max(floor, size)
}
