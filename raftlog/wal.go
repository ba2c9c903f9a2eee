// Package raftlog is the server's Raft log and stable store: entries are
// appended to segment files, each entry with a CRC-32C, and a batch costs
// one write and one fdatasync (raft-boltdb's B+tree commit costs two
// fdatasyncs and rewrites pages). A damaged entry is found when the log is
// opened or read, and stops the server; it is never skipped.
package raftlog

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sidecarhq/sidecar/internal/crashpoint"
)

// Options tune a Store.
type Options struct {
	// SegmentSize is the size of a segment file, allocated when the file
	// is made so that appends need no new disk blocks (and a full disk is
	// known before a write, not in the middle of one); compaction removes
	// whole segments. Default 64 MiB.
	SegmentSize int64
	// Reserve is the room kept in the current segment for Raft's own
	// entries (no-ops, configuration changes) once no next segment can be
	// allocated: Room then refuses new writes. Default 1 MiB.
	Reserve int64
	// Fatal is told of a failure the store cannot recover from (a damaged
	// entry read back, a failed write or fsync other than a full disk):
	// the server must stop rather than carry on with state it may not have
	// persisted. The store refuses every later write either way.
	Fatal  func(error)
	Logger *slog.Logger
	// BeforeSync, when set, runs before each background sync of deferred
	// appends (see DeferSyncWhile); tests hold syncs back with it. It must
	// return once stop is closed (Close waits for it).
	BeforeSync func(stop <-chan struct{})
}

const (
	segPrefix = "seg-"
	segSuffix = ".wal"
)

// Store implements raft.LogStore, raft.MonotonicLogStore and
// raft.StableStore.
type Store struct {
	dir  string
	opts Options
	log  *slog.Logger

	// wmu orders the writers (appends, deletions, close) and guards failed
	// and buf; it is held across the disk write and its fdatasync. mu
	// guards what readers see (segments, offsets, first and last) and is
	// held only to read or publish them, so reads never wait for a sync.
	wmu     sync.Mutex
	failed  error // sticky: set by a write whose outcome on disk is unknown
	buf     []byte
	spare   *segment // the next segment's file, allocated ahead
	lastTry time.Time
	low     atomic.Bool // no room for new writes: see Room

	lock        *os.File // holds the directory's flock
	mu          sync.RWMutex
	segs        []*segment
	first, last uint64 // 0, 0 when empty

	stable stable

	// Deferred syncs (see DeferSyncWhile). durable is the last index whose
	// entry, and every one before it, is on disk. pmu guards pending (the
	// segments written since their last sync), pendingTo (the last index
	// they hold), durableCh (closed and replaced whenever durable moves or
	// syncing fails) and syncErr. smu is held across every sync of pending
	// segments and by whatever closes or cuts a segment, so that a sync
	// never meets a closed file and durable never passes a cut.
	deferSync atomic.Pointer[func() bool]
	durable   atomic.Uint64
	smu       sync.Mutex
	pmu       sync.Mutex
	pending   []*segment
	pendingTo uint64
	durableCh chan struct{}
	syncErr   error
	kick      chan struct{}
	stop      chan struct{}
	syncDone  chan struct{}
}

type segment struct {
	base  uint64
	path  string
	f     *os.File
	offs  []int64 // offs[i]: where entry base+i starts
	size  int64   // where the next entry goes; zeroes from there on
	alloc int64   // the file's allocated size
}

func (s *segment) lastIndex() uint64 { return s.base + uint64(len(s.offs)) - 1 }

// CorruptError names a damaged entry: where it is and what to do.
type CorruptError struct {
	File   string
	Index  uint64
	Offset int64
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("raft log entry %d in %s (offset %d) is damaged: %s; this server cannot trust its log: "+
		"stop it, move its data dir aside and start it with an empty one, and it rejoins as a non-voter and is caught up from the other servers "+
		"(a single server: restore the newest snapshot with `sidecar snapshot restore`)",
		e.Index, e.File, e.Offset, e.Reason)
}

// Open opens (or creates) the store in dir. Every entry is read and
// checked. A record cut short at the very end of the newest segment is a
// write a crash interrupted before its fsync returned (so never
// acknowledged): it is removed with a warning. Any other damage is a
// *CorruptError.
func Open(dir string, opts Options) (*Store, error) {
	if opts.SegmentSize <= 0 {
		opts.SegmentSize = 64 << 20
	}
	if opts.Reserve <= 0 {
		opts.Reserve = min(1<<20, opts.SegmentSize/4)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create raft log dir: %w", err)
	}
	s := &Store{dir: dir, opts: opts, log: opts.Logger, durableCh: make(chan struct{}), kick: make(chan struct{}, 1),
		stop: make(chan struct{}), syncDone: make(chan struct{})}
	// One process per log: two appending to the same segments would
	// interleave their entries.
	lock, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open raft log lock: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("raft log %s is in use by another process (another agent on this data dir?): %w", dir, err)
	}
	s.lock = lock
	if err := s.stable.open(dir); err != nil {
		s.lock.Close()
		return nil, err
	}
	if err := s.load(); err != nil {
		s.closeFiles()
		return nil, err
	}
	// A process that led may have stopped with appends not yet synced;
	// they are in the files (the kernel keeps them), but not yet on disk,
	// and this server must not vote or acknowledge on entries a power
	// loss could still take away.
	for _, seg := range s.segs {
		if err := syscall.Fdatasync(int(seg.f.Fd())); err != nil {
			s.closeFiles()
			return nil, fmt.Errorf("fdatasync %s: %w", seg.path, err)
		}
	}
	s.durable.Store(s.last)
	s.ensureRoom()
	go s.syncer()
	return s, nil
}

func (s *Store) load() error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("read raft log dir: %w", err)
	}
	var bases []uint64
	for _, e := range entries {
		name := e.Name()
		if name == spareName {
			f, err := os.OpenFile(filepath.Join(s.dir, name), os.O_RDWR, 0o600)
			if err != nil {
				return fmt.Errorf("open raft log spare segment: %w", err)
			}
			st, err := f.Stat()
			if err != nil || st.Size() != s.opts.SegmentSize {
				// Cut short by a crash while it was made, or made with
				// another size: made again when needed.
				f.Close()
				os.Remove(filepath.Join(s.dir, name))
				continue
			}
			s.spare = &segment{path: filepath.Join(s.dir, name), f: f, alloc: st.Size()}
			continue
		}
		if !strings.HasPrefix(name, segPrefix) || !strings.HasSuffix(name, segSuffix) {
			continue
		}
		base, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, segPrefix), segSuffix), 10, 64)
		if err != nil {
			return fmt.Errorf("raft log dir %s holds %s, not a segment name of ours: move it away", s.dir, name)
		}
		bases = append(bases, base)
	}
	sort.Slice(bases, func(i, j int) bool { return bases[i] < bases[j] })
	for i, base := range bases {
		seg, err := s.openSegment(base, i == len(bases)-1)
		if err != nil {
			return err
		}
		if n := len(s.segs); n > 0 {
			prev := s.segs[n-1]
			if want := prev.base + uint64(len(prev.offs)); seg.base != want {
				seg.f.Close()
				return &CorruptError{File: seg.path, Index: want, Reason: fmt.Sprintf("a gap: the previous segment ends before %d, this one starts at %d", want, seg.base)}
			}
		}
		s.segs = append(s.segs, seg)
	}
	for _, seg := range s.segs {
		if len(seg.offs) > 0 {
			if s.first == 0 {
				s.first = seg.base
			}
			s.last = seg.lastIndex()
		}
	}
	return nil
}

// openSegment reads and checks every record of one segment. Records end
// where zeroes begin (the allocated rest of the file).
func (s *Store) openSegment(base uint64, newest bool) (*segment, error) {
	path := filepath.Join(s.dir, fmt.Sprintf("%s%020d%s", segPrefix, base, segSuffix))
	f, err := os.OpenFile(path, os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open raft log segment: %w", err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("read raft log segment %s: %w", path, err)
	}
	seg := &segment{base: base, path: path, f: f, alloc: int64(len(data))}
	var l raft.Log
	off := int64(0)
	for off < int64(len(data)) {
		index := base + uint64(len(seg.offs))
		bad := func(reason string) (*segment, error) {
			f.Close()
			return nil, &CorruptError{File: path, Index: index, Offset: off, Reason: reason}
		}
		rest := data[off:]
		// No record starts with a zero length: zeroes are the end, and all
		// that follows must be zeroes too.
		if len(rest) >= headerSize && allZero(rest[:headerSize]) && allZero(rest) {
			break
		}
		// From here on there are bytes that are not zero: a record, or the
		// remains of one a crash interrupted (only at the end of the
		// newest segment), or damage.
		if len(rest) < headerSize {
			if newest {
				return s.dropTornTail(seg, off, index, "a header cut short")
			}
			return bad("a header cut short")
		}
		n, err := payloadLen(rest)
		if err != nil {
			if newest && allZero(rest[headerSize:]) {
				return s.dropTornTail(seg, off, index, "a header without its record")
			}
			return bad(err.Error())
		}
		if headerSize+n > len(rest) {
			if newest {
				return s.dropTornTail(seg, off, index, "a record cut short")
			}
			return bad("a record cut short")
		}
		rec := rest[:headerSize+n]
		if err := decodeRecord(rec, &l); err != nil {
			// A crash tears a write at sector granularity: a torn last
			// record has a sector of zeroes where data never landed, and
			// nothing after it. A checksum mismatch without one is damage.
			if newest && allZero(rest[headerSize+n:]) && hasZeroSector(off, rec) {
				return s.dropTornTail(seg, off, index, err.Error())
			}
			return bad(err.Error())
		}
		if l.Index != index {
			return bad(fmt.Sprintf("holds index %d", l.Index))
		}
		seg.offs = append(seg.offs, off)
		off += int64(headerSize + n)
	}
	seg.size = off
	return seg, nil
}

// dropTornTail clears a segment from off on: what is there is a write a
// crash interrupted.
func (s *Store) dropTornTail(seg *segment, off int64, index uint64, why string) (*segment, error) {
	s.log.Warn("removing a raft log record cut short by a crash (its write never completed, so it was never acknowledged)",
		"file", seg.path, "index", index, "offset", off, "why", why)
	if err := seg.zeroFrom(off); err != nil {
		seg.f.Close()
		return nil, err
	}
	seg.size = off
	return seg, nil
}

// zeroFrom makes everything from off on zeroes again, keeping the
// allocation, and syncs: a later open must not read old records there.
func (seg *segment) zeroFrom(off int64) error {
	if err := seg.f.Truncate(off); err != nil {
		return fmt.Errorf("cut %s at %d: %w", seg.path, off, err)
	}
	if seg.alloc > off {
		if err := syscall.Fallocate(int(seg.f.Fd()), 0, off, seg.alloc-off); err != nil {
			// The file stays short: correct, only its blocks are not kept.
			seg.alloc = off
		}
	}
	if err := syscall.Fdatasync(int(seg.f.Fd())); err != nil {
		return fmt.Errorf("fdatasync %s: %w", seg.path, err)
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// hasZeroSector reports whether a 512-byte sector of the file, as far as
// rec (starting at file offset off) covers it, is all zero.
func hasZeroSector(off int64, rec []byte) bool {
	const sector = 512
	for i := 0; i < len(rec); {
		end := i + sector - int((off+int64(i))%sector)
		end = min(end, len(rec))
		if allZero(rec[i:end]) {
			return true
		}
		i = end
	}
	return false
}

// FirstIndex implements raft.LogStore.
func (s *Store) FirstIndex() (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.first, nil
}

// LastIndex implements raft.LogStore.
func (s *Store) LastIndex() (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.last, nil
}

// IsMonotonic implements raft.MonotonicLogStore: entries are contiguous, so
// after a snapshot is installed Raft removes the whole log.
func (s *Store) IsMonotonic() bool { return true }

// GetLog implements raft.LogStore. The entry is checked against its
// checksum; a mismatch is fatal.
func (s *Store) GetLog(index uint64, l *raft.Log) error {
	s.mu.RLock()
	if s.last == 0 || index < s.first || index > s.last || len(s.segs) == 0 {
		s.mu.RUnlock()
		return raft.ErrLogNotFound
	}
	defer s.mu.RUnlock()
	i := sort.Search(len(s.segs), func(i int) bool { return s.segs[i].base > index }) - 1
	seg := s.segs[i]
	k := int(index - seg.base)
	off, end := seg.offs[k], seg.size
	if k+1 < len(seg.offs) {
		end = seg.offs[k+1]
	}
	// The lock is held across the read: compaction or a truncation must
	// not close or cut the file under it.
	path := seg.path
	rec := make([]byte, end-off)
	if _, err := seg.f.ReadAt(rec, off); err != nil {
		return s.fatal(fmt.Errorf("read raft log entry %d from %s: %w", index, path, bare(err)))
	}
	err := decodeRecord(rec, l)
	if err == nil && l.Index != index {
		err = fmt.Errorf("holds index %d", l.Index)
	}
	if err != nil {
		return s.fatal(&CorruptError{File: path, Index: index, Offset: off, Reason: err.Error()})
	}
	return nil
}

// StoreLog implements raft.LogStore.
func (s *Store) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

// StoreLogs implements raft.LogStore: the batch is one write and one
// fdatasync. Entries must follow the last one (or start anywhere in an
// empty log). While DeferSyncWhile's condition holds, a batch without a
// configuration entry returns once written, and its fdatasync follows.
func (s *Store) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.failed != nil {
		return s.failed
	}
	if err := s.syncFailure(); err != nil {
		return err
	}
	// Only writers change last, and they hold wmu.
	next := logs[0].Index
	if s.last != 0 && next != s.last+1 {
		return fmt.Errorf("raft log: entry %d does not follow the last one, %d", next, s.last)
	}
	for i, l := range logs {
		if l.Index != next+uint64(i) {
			return fmt.Errorf("raft log: batch not contiguous at entry %d", l.Index)
		}
	}
	buf := s.buf[:0]
	offs := make([]int64, 0, len(logs))
	for _, l := range logs {
		offs = append(offs, int64(len(buf)))
		buf = appendRecord(buf, l)
	}
	if cap(buf) <= 1<<20 {
		s.buf = buf
	}
	seg, err := s.segmentFor(next, int64(len(buf)))
	if err != nil {
		return err
	}
	for i := range offs {
		offs[i] += seg.size
	}
	deferred := s.mayDefer(logs)
	if _, err := seg.f.WriteAt(buf, seg.size); err != nil {
		return s.writeFailed(seg, fmt.Errorf("append raft log entries %d-%d to %s: %w", next, next+uint64(len(logs))-1, seg.path, bare(err)))
	}
	if !deferred {
		// Everything written before this batch is synced with it: an
		// acknowledgement (a follower's) covers the whole log.
		s.smu.Lock()
		defer s.smu.Unlock()
		if err := s.syncPending(); err != nil {
			s.failed = fmt.Errorf("raft log failed, no more writes: %w", err)
			s.failSyncs(s.failed)
			return s.fatal(s.failed)
		}
		if err := syscall.Fdatasync(int(seg.f.Fd())); err != nil {
			return s.writeFailed(seg, fmt.Errorf("fdatasync %s: %w", seg.path, err))
		}
	}
	s.mu.Lock()
	seg.offs = append(seg.offs, offs...)
	seg.size += int64(len(buf))
	if s.last == 0 {
		s.first = next
	}
	s.last = logs[len(logs)-1].Index
	s.mu.Unlock()
	if deferred {
		s.pmu.Lock()
		if !slices.Contains(s.pending, seg) {
			s.pending = append(s.pending, seg)
		}
		s.pendingTo = s.last
		s.pmu.Unlock()
		select {
		case s.kick <- struct{}{}:
		default:
		}
	} else {
		s.setDurable(s.last)
	}
	crashpoint.Hit("raft-log-appended")
	if seg.alloc-seg.size < s.opts.SegmentSize/2 || s.low.Load() {
		s.ensureRoom()
	}
	return nil
}

// segmentFor returns the segment a batch of n bytes starting at index goes
// to: the current one while it has room (or is empty), else a new one.
func (s *Store) segmentFor(index uint64, n int64) (*segment, error) {
	if k := len(s.segs); k > 0 {
		cur := s.segs[k-1]
		switch {
		case s.last == 0 && cur.base != index:
			// An empty segment left by a removed log, for another index.
			old := s.segs
			s.mu.Lock()
			s.segs = nil
			s.mu.Unlock()
			if err := s.removeSegments(old); err != nil {
				return nil, err
			}
		case cur.size == 0 || cur.size+n <= cur.alloc:
			return cur, nil
		}
	}
	seg, err := s.newSegment(index)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.segs = append(s.segs, seg)
	s.mu.Unlock()
	return seg, nil
}

// newSegment turns the spare into the segment starting at index, or
// allocates one when there is no spare.
func (s *Store) newSegment(index uint64) (*segment, error) {
	path := filepath.Join(s.dir, fmt.Sprintf("%s%020d%s", segPrefix, index, segSuffix))
	if s.spare == nil {
		if err := s.allocSpare(); err != nil {
			return nil, err
		}
	}
	sp := s.spare
	if err := os.Rename(sp.path, path); err != nil {
		return nil, s.writeFailed(nil, fmt.Errorf("start raft log segment %s: %w", path, err))
	}
	if err := syncDir(s.dir); err != nil {
		return nil, s.writeFailed(nil, err)
	}
	s.spare = nil
	return &segment{base: index, path: path, f: sp.f, alloc: sp.alloc}, nil
}

const spareName = "spare" + segSuffix

// allocSpare makes the next segment's file ahead of need, with its blocks
// allocated.
func (s *Store) allocSpare() error {
	path := filepath.Join(s.dir, spareName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return s.writeFailed(nil, fmt.Errorf("create raft log segment: %w", err))
	}
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, s.opts.SegmentSize); err != nil {
		f.Close()
		os.Remove(path)
		return s.writeFailed(nil, fmt.Errorf("allocate %d bytes for a raft log segment in %s: %w", s.opts.SegmentSize, s.dir, err))
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return s.writeFailed(nil, fmt.Errorf("sync %s: %w", path, err))
	}
	s.spare = &segment{path: path, f: f, alloc: s.opts.SegmentSize}
	return nil
}

// ensureRoom allocates the spare segment once the current one is half
// full, and works out whether new writes may come: while there is no spare
// and the current segment's room is down to the reserve, Room refuses them
// (Raft's own entries still fit). Callers hold wmu.
func (s *Store) ensureRoom() {
	s.lastTry = time.Now()
	free := int64(0)
	if k := len(s.segs); k > 0 {
		cur := s.segs[k-1]
		free = cur.alloc - cur.size
	}
	if s.spare == nil && s.failed == nil && free < s.opts.SegmentSize/2 {
		if err := s.allocSpare(); err != nil && !s.low.Load() {
			s.log.Warn("cannot allocate the next raft log segment", "dir", s.dir, "err", err)
		}
	}
	low := s.spare == nil && free < s.opts.Reserve
	if was := s.low.Swap(low); was != low {
		if low {
			s.log.Error("raft log disk full: refusing writes until there is room", "dir", s.dir, "segment_bytes", s.opts.SegmentSize)
		} else {
			s.log.Info("raft log disk has room again: taking writes", "dir", s.dir)
		}
	}
}

// Room returns an error wrapping ErrDiskFull while the disk has no room
// for more of the log. It tries again to allocate at most once a second,
// so writes resume by themselves once space is freed.
func (s *Store) Room() error {
	if !s.low.Load() {
		return nil
	}
	if s.wmu.TryLock() {
		if time.Since(s.lastTry) >= time.Second {
			s.ensureRoom()
		}
		s.wmu.Unlock()
	}
	if s.low.Load() {
		return fmt.Errorf("%w (%s): the next %d-byte segment cannot be allocated", ErrDiskFull, s.dir, s.opts.SegmentSize)
	}
	return nil
}

var errClosed = errors.New("raft log closed")

// ErrDiskFull is wrapped by writes refused because the disk is full; they
// changed nothing, and writes work again once there is space.
var ErrDiskFull = errors.New("the disk holding the raft log is full")

// writeFailed handles an append that failed. A full disk is not damage:
// the partial write is cut off again and the store stays usable. Anything
// else leaves the file in a state we cannot know (after a failed fsync the
// kernel may have dropped the dirty pages), so the store refuses every
// later write and reports the failure as fatal.
func (s *Store) writeFailed(seg *segment, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		if seg == nil {
			return fmt.Errorf("%w (%s): %v", ErrDiskFull, s.dir, err)
		}
		// A write past the allocation grew the file: cut back what landed.
		if zerr := seg.zeroFrom(seg.size); zerr == nil {
			return fmt.Errorf("%w (%s): %v", ErrDiskFull, s.dir, err)
		}
	}
	s.failed = fmt.Errorf("raft log failed, no more writes: %w", err)
	s.failSyncs(s.failed)
	return s.fatal(s.failed)
}

// bare drops the file name from a file operation's error: a segment made
// from the spare keeps the spare's name in its *os.File.
func bare(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func (s *Store) fatal(err error) error {
	if s.opts.Fatal != nil {
		s.opts.Fatal(err)
	}
	return err
}

// DeleteRange implements raft.LogStore: removing a prefix (compaction
// after a snapshot), a suffix (entries a new leader overwrites) or all.
func (s *Store) DeleteRange(min, max uint64) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.failed != nil {
		return s.failed
	}
	if err := s.syncFailure(); err != nil {
		return err
	}
	s.smu.Lock()
	defer s.smu.Unlock()
	if s.last == 0 || max < s.first || min > s.last {
		return nil
	}
	switch {
	case min <= s.first && max >= s.last:
		old := s.segs
		s.mu.Lock()
		s.segs, s.first, s.last = nil, 0, 0
		s.mu.Unlock()
		s.forgetPending(old, 0)
		return s.removeSegments(old)
	case max >= s.last:
		return s.truncateFrom(min)
	case min <= s.first:
		// Whole segments below the new first index go; entries before it in
		// the segment that holds it stay on disk, unreachable.
		keep := 0
		for keep < len(s.segs)-1 && s.segs[keep].lastIndex() <= max {
			keep++
		}
		old := s.segs[:keep]
		s.mu.Lock()
		s.segs = s.segs[keep:]
		s.first = max + 1
		s.mu.Unlock()
		s.forgetPending(old, s.last)
		return s.removeSegments(old)
	default:
		return fmt.Errorf("raft log: cannot delete %d-%d from the middle of %d-%d", min, max, s.first, s.last)
	}
}

// truncateFrom removes entries index and after. Callers hold wmu and smu.
func (s *Store) truncateFrom(index uint64) error {
	i := sort.Search(len(s.segs), func(i int) bool { return s.segs[i].base > index }) - 1
	seg := s.segs[i]
	off := seg.offs[index-seg.base]
	// Readers stop seeing the entries before the file loses them.
	later := append([]*segment(nil), s.segs[i+1:]...)
	s.mu.Lock()
	seg.offs = seg.offs[:index-seg.base]
	seg.size = off
	s.segs = s.segs[:i+1]
	s.last = index - 1
	if s.last < s.first {
		s.first, s.last = 0, 0
	}
	s.mu.Unlock()
	s.forgetPending(later, s.last)
	// Later segments go first, newest first: a crash part way leaves a
	// log that is contiguous (with entries a new leader will overwrite
	// again), never one with a gap, which would read as damage.
	slices.Reverse(later)
	if err := s.removeSegments(later); err != nil {
		return err
	}
	// Zeroes, not a shorter file alone: the allocation stays, and old
	// entries must never be read back after new ones.
	if err := seg.zeroFrom(off); err != nil {
		return s.writeFailed(nil, err)
	}
	return nil
}

func (s *Store) removeSegments(segs []*segment) error {
	for _, seg := range segs {
		seg.f.Close()
		if err := os.Remove(seg.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove raft log segment: %w", err)
		}
	}
	if len(segs) > 0 {
		return syncDir(s.dir)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open %s to sync it: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// Close syncs what deferred appends wrote and closes the segment files.
func (s *Store) Close() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	// equivalent mutant: a write after Close is refused by failSyncs(errClosed) below as well
	if s.failed == nil {
		s.failed = errClosed
	}
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.syncDone
	s.smu.Lock()
	defer s.smu.Unlock()
	var first error
	if s.syncFailure() == nil {
		first = s.syncPending()
	}
	s.failSyncs(errClosed)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.closeFiles(); first == nil {
		first = err
	}
	return first
}

func (s *Store) closeFiles() error {
	var first error
	for _, seg := range s.segs {
		if err := seg.f.Close(); err != nil && first == nil {
			first = err
		}
	}
	s.segs = nil
	if s.spare != nil {
		s.spare.f.Close()
		s.spare = nil
	}
	if err := s.stable.close(); err != nil && first == nil {
		first = err
	}
	if s.lock != nil {
		s.lock.Close() // and with it the flock
		s.lock = nil
	}
	return first
}

// DeferSyncWhile lets appends return before their fdatasync while f
// reports true. A Raft leader uses it: hashicorp/raft sends entries to the
// followers only once the leader's append returns, so with the sync first
// the leader's disk and the followers' took turns; now they flush at the
// same time. Deferred appends are readable at once and synced by a
// background writer; Durable and WaitDurable say how far the disk holds
// the log, and the leader must neither apply an entry nor tell followers
// it committed before it is durable here (see election). A batch with a
// configuration entry (or any entry but a command, no-op or barrier) is
// synced before it returns, always, so membership changes keep Raft's
// own rule: on a majority's disks before the next one starts. An append
// that is not deferred syncs every deferred one before it.
func (s *Store) DeferSyncWhile(f func() bool) { s.deferSync.Store(&f) }

func (s *Store) mayDefer(logs []*raft.Log) bool {
	f := s.deferSync.Load()
	if f == nil {
		return false
	}
	for _, l := range logs {
		switch l.Type {
		case raft.LogCommand, raft.LogNoop, raft.LogBarrier:
		default:
			return false
		}
	}
	return (*f)()
}

// Durable is the last index whose entry, with every one before it, is on
// disk.
func (s *Store) Durable() uint64 { return s.durable.Load() }

// WaitDurable waits until the entry at index is on disk. It fails if the
// disk failed a sync (the store then refuses every write and has reported
// the failure as fatal) or the store closed.
func (s *Store) WaitDurable(index uint64) error {
	for {
		s.pmu.Lock()
		ch, err := s.durableCh, s.syncErr
		s.pmu.Unlock()
		// After taking ch: a sync that ends now closes it.
		if s.durable.Load() >= index {
			return nil
		}
		if err != nil {
			return err
		}
		<-ch
	}
}

func (s *Store) setDurable(index uint64) {
	s.pmu.Lock()
	s.durable.Store(index)
	close(s.durableCh)
	s.durableCh = make(chan struct{})
	s.pmu.Unlock()
}

func (s *Store) syncFailure() error {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	return s.syncErr
}

// failSyncs records why deferred appends can no longer reach the disk and
// wakes every waiter.
func (s *Store) failSyncs(err error) {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	if s.syncErr == nil {
		s.syncErr = err
		close(s.durableCh)
		s.durableCh = make(chan struct{})
	}
}

// syncPending syncs the segments deferred appends wrote to. Callers hold
// smu.
func (s *Store) syncPending() error {
	s.pmu.Lock()
	segs, to := s.pending, s.pendingTo
	s.pending = nil
	s.pmu.Unlock()
	for _, seg := range segs {
		if err := syscall.Fdatasync(int(seg.f.Fd())); err != nil {
			return fmt.Errorf("fdatasync %s: %w", seg.path, err)
		}
	}
	// equivalent mutant: setting durable to the value it has changes nothing
	if to > s.durable.Load() {
		s.setDurable(to)
	}
	return nil
}

// syncer syncs deferred appends as they come: every append waiting when
// one sync starts shares the next.
func (s *Store) syncer() {
	defer close(s.syncDone)
	for {
		select {
		case <-s.stop:
			return
		case <-s.kick:
		}
		if s.opts.BeforeSync != nil {
			s.opts.BeforeSync(s.stop)
			select {
			case <-s.stop: // Close syncs what is left
				return
			default:
			}
		}
		s.smu.Lock()
		err := s.syncPending()
		s.smu.Unlock()
		if err != nil {
			// After a failed fsync the kernel may have dropped the pages:
			// nothing written since the last good sync can be trusted.
			err = fmt.Errorf("raft log failed, no more writes: %w", err)
			s.failSyncs(err)
			s.fatal(err)
			return
		}
	}
}

// forgetPending drops cut or removed segments from the pending syncs and
// lowers durable and pendingTo to last. Callers hold wmu and smu.
func (s *Store) forgetPending(gone []*segment, last uint64) {
	s.pmu.Lock()
	s.pending = slices.DeleteFunc(s.pending, func(p *segment) bool { return slices.Contains(gone, p) })
	s.pendingTo = min(s.pendingTo, last)
	s.pmu.Unlock()
	// equivalent mutant: setting durable to the value it has changes nothing
	if d := s.durable.Load(); d > last {
		s.setDurable(last)
	}
}
