// Package localstate is what an agent owns: the service instances, checks
// and candidacies registered through it, kept in its data dir so that a
// restart brings them back, and the anti-entropy that keeps the registry's
// view of the node equal to them.
package localstate

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"hash/maphash"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sidecarhq/sidecar/fsm"
	"github.com/sidecarhq/sidecar/internal/boltopen"
)

// Where a service came from: the config file's are declarative (re-read at
// start and on reload), the API's stay until deregistered.
const (
	SourceAPI    = "api"
	SourceConfig = "config"
)

// FileName is the local state's file in the data dir.
const FileName = "local.db"

// Service is an instance registered through this agent, as the registry
// should hold it: its definition only (no status, output or indexes).
type Service struct {
	Instance fsm.Instance `json:"instance"`
	Source   string       `json:"source"`
}

// Candidacy is a campaign on the node session made through this agent's
// API: the agent campaigns again after a restart.
type Candidacy struct {
	Election  string `json:"election"`
	Candidate string `json:"candidate"`
	Value     string `json:"value,omitempty"`
	Service   string `json:"service,omitempty"`
}

// ErrClosed: the store was closed.
var ErrClosed = errors.New("localstate: closed")

// Errors of the file and its disk, wrapped by the errors the store returns
// (their messages name the file and what to do). The HTTP API answers a
// full disk with 507 and the others with 503.
var (
	// ErrDamaged: the file, or a record in it, is damaged. Found at Open,
	// it stops the agent's start; found later, the store takes no more
	// writes and Damaged is closed.
	ErrDamaged = errors.New("localstate: damaged")
	// ErrDiskFull: a write found no space (ENOSPC, EDQUOT); it changed
	// nothing and the next write tries again.
	ErrDiskFull = errors.New("localstate: disk full")
	// ErrReadOnly: the file's disk is read-only (EROFS); the write changed
	// nothing and the next write tries again.
	ErrReadOnly = errors.New("localstate: disk read-only")
	// ErrDiskFailed: a write or its fsync failed otherwise (EIO, ...): what
	// reached the disk is not known, so the store takes no more writes
	// until the agent restarts and reads the file again.
	ErrDiskFailed = errors.New("localstate: disk failed")
)

// storeError is an error of the store's file: one line naming it, the
// cause and what to do.
type storeError struct {
	kind error // one of the Err* above
	msg  string
	err  error // the cause, if any
}

func (e *storeError) Error() string        { return e.msg }
func (e *storeError) Is(target error) bool { return target == e.kind }
func (e *storeError) Unwrap() error        { return e.err }

// recovery is what the operator does about a damaged local state file.
func recovery(path string) string {
	return fmt.Sprintf("stop the agent, move %s away (and %s with it; keep both for inspection) and start the agent again: "+
		"it then adopts this node's instances from the registry (API candidacies are not kept and must be made again)",
		path, filepath.Join(filepath.Dir(path), WALName))
}

var (
	bucketServices    = []byte("services")
	bucketCandidacies = []byte("candidacies")
	// bucketMeta holds keyAdopted once the agent took in the instances the
	// registry held for its node (see Adopted).
	bucketMeta = []byte("meta")
	keyAdopted = []byte("adopted")
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
)

// Store holds the local state in memory, mirrored to a bbolt file unless it
// is in memory only (--dev). A write returns once it is on disk (in the
// write-ahead log, fdatasync'd): the agent answers a registration only
// after that, so a crash right after the answer loses nothing. Concurrent
// writes share one frame of the log.
type Store struct {
	path    string
	db      *bolt.DB // nil: in memory
	wal     *wal
	adopted atomic.Bool

	// failed, once set, is returned by every write: damage found in the
	// file (then damaged is closed), or a write whose outcome on disk is
	// unknown.
	failMu     sync.Mutex
	failed     error
	damaged    chan struct{}
	damageOnce sync.Once

	mu sync.RWMutex
	// sums holds, for every stored service, a hash of its definition: what
	// anti-entropy compares the registry with. The definitions themselves
	// are read from the file when needed (bbolt maps it, so that is cheap),
	// which keeps the agent's memory per instance to a map entry; in memory
	// only (defs non-nil) they are kept here.
	sums        map[string]uint64
	defs        map[string]*Service
	candidacies map[candidacyKey]Candidacy
	// pending holds the records in the log that local.db does not hold yet
	// (nil: deleted); reads look here first. Written by the writer only.
	pending map[recordKey][]byte
	// dirty: the records written since a background checkpoint took its
	// copy of pending (nil when none runs). Writer only.
	dirty map[recordKey]struct{}

	ops       chan *op
	closeOnce sync.Once
	closing   chan struct{}
	writerEnd chan struct{}

	idsMu sync.Mutex
	ids   map[string]*idLock
}

// idLock is the lock of one instance id, there while someone holds or
// waits for it.
type idLock struct {
	sync.Mutex
	refs int // holders and waiters, counted under Store.idsMu
}

type candidacyKey struct{ election, candidate string }

type recordKey struct{ bucket, key string }

// op is one write waiting for the group commit.
type op struct {
	bucket []byte
	key    []byte
	val    []byte // nil: delete
	done   chan error
}

// Open opens the local state at path, creating it; an empty path keeps it
// in memory. A record that fails its checksum or does not decode ends Open
// with an error naming the file and the key: the agent must not start
// believing it owns less than it does.
func Open(path string) (*Store, error) {
	s := &Store{
		path:        path,
		sums:        map[string]uint64{},
		candidacies: map[candidacyKey]Candidacy{},
		closing:     make(chan struct{}),
		writerEnd:   make(chan struct{}),
		damaged:     make(chan struct{}),
		ids:         map[string]*idLock{},
		pending:     map[recordKey][]byte{},
	}
	if path == "" {
		s.defs = map[string]*Service{}
		close(s.writerEnd)
		return s, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, s.openError("create its directory", err)
	}
	// equivalent mutant: how long to wait for another process's lock, a timing constant
	db, err := boltopen.Open(path, boltopen.Options{Timeout: 5 * time.Second, Recovery: recovery(path)})
	switch {
	case errors.Is(err, boltopen.ErrDamaged):
		return nil, &storeError{kind: ErrDamaged, msg: "local state " + err.Error(), err: err}
	case errors.Is(err, bolt.ErrTimeout):
		return nil, fmt.Errorf("local state %s: locked by another process for 5s (another agent on this data dir?): %w", path, err)
	case err != nil:
		return nil, s.openError("open", err)
	}
	s.db = db
	if s.wal, err = openWAL(filepath.Join(filepath.Dir(path), WALName)); err != nil {
		db.Close()
		return nil, s.openError("open "+WALName, err)
	}
	if err := s.load(); err != nil {
		db.Close()
		s.wal.f.Close()
		return nil, err
	}
	s.ops = make(chan *op, 1024)
	go s.writer()
	return s, nil
}

func (s *Store) load() error {
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketServices, bucketCandidacies, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); errors.Is(err, bolt.ErrIncompatibleValue) {
				return s.damage(fmt.Sprintf("%s is not a bucket", b), err)
			} else if err != nil {
				return s.openError("create bucket "+string(b), err)
			}
		}
		if err := s.replayWAL(tx); err != nil {
			return err
		}
		// A file of an earlier release, without the mark, that holds
		// records finished its first start: it counts as adopted.
		s.adopted.Store(tx.Bucket(bucketMeta).Get(keyAdopted) != nil ||
			tx.Bucket(bucketServices).Stats().KeyN > 0 || tx.Bucket(bucketCandidacies).Stats().KeyN > 0)
		err := tx.Bucket(bucketServices).ForEach(func(k, v []byte) error {
			var svc Service
			if err := s.decode(bucketServices, k, v, &svc); err != nil {
				return err
			}
			s.sums[svc.Instance.ID] = DefinitionSum(&svc.Instance)
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketCandidacies).ForEach(func(k, v []byte) error {
			var c Candidacy
			if err := s.decode(bucketCandidacies, k, v, &c); err != nil {
				return err
			}
			s.candidacies[candidacyKey{c.Election, c.Candidate}] = c
			return nil
		})
	})
}

// replayWAL takes the log's frames of the current generation into local.db
// and moves the generation on, in the transaction of load. A file without
// a generation (new, or of an earlier release) gets a random one, so that
// a log left beside a local.db moved away is not replayed into a new one.
func (s *Store) replayWAL(tx *bolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	raw := meta.Get(keyWALGen)
	var gen uint32
	switch {
	case raw == nil:
		gen = rand.Uint32()
	case len(raw) == 4:
		gen = binary.BigEndian.Uint32(raw)
	default:
		return s.damage(fmt.Sprintf("record %s/%q: %d bytes, want 4", bucketMeta, keyWALGen, len(raw)), nil)
	}
	ops, err := s.wal.replay(gen)
	if err != nil {
		return &storeError{kind: ErrDamaged, err: err, msg: fmt.Sprintf("local state %s is damaged (%v): %s",
			s.wal.f.Name(), err, recovery(s.path))}
	}
	for _, o := range ops {
		b := tx.Bucket(o.bucket)
		if b == nil {
			return &storeError{kind: ErrDamaged, msg: fmt.Sprintf("local state %s is damaged (a record of bucket %q, which local.db lacks): %s",
				s.wal.f.Name(), o.bucket, recovery(s.path))}
		}
		if err := putRecord(b, o.key, o.val); err != nil {
			return s.openError("replay "+WALName, err)
		}
	}
	// equivalent mutant: an extra step of the generation (>=) is harmless;
	// none after a replay is not (TestStore_walGenerationOnlyMovesForward).
	if raw == nil || len(ops) > 0 {
		gen++
		if err := meta.Put(keyWALGen, binary.BigEndian.AppendUint32(nil, gen)); err != nil {
			return s.openError("replay "+WALName, err)
		}
	}
	s.wal.gen = gen
	return nil
}

// putRecord writes a record into local.db, or deletes it (val nil).
func putRecord(b *bolt.Bucket, key, val []byte) error {
	if val == nil {
		return b.Delete(key)
	}
	return b.Put(key, val)
}

// encode is a record as stored: a CRC-32C of the JSON, then the JSON. bbolt
// checks its pages' structure, not the values in them.
func encode(v any) ([]byte, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 4, 4+len(data))
	binary.BigEndian.PutUint32(out, crc32.Checksum(data, castagnoli))
	return append(out, data...), nil
}

// decode checks a record's checksum and decodes it. Every read of a
// record goes through it; a record that fails is damage (see damage).
func (s *Store) decode(bucket, key, raw []byte, v any) error {
	bad := func(why string) error {
		return s.damage(fmt.Sprintf("record %s/%q: %s", bucket, key, why), nil)
	}
	// equivalent mutant: a record of 4 bytes fails its checksum or its JSON decode just the same
	if len(raw) < 4 {
		return bad("too short")
	}
	if crc32.Checksum(raw[4:], castagnoli) != binary.BigEndian.Uint32(raw) {
		return bad("checksum mismatch")
	}
	dec := json.NewDecoder(bytes.NewReader(raw[4:]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return bad(err.Error())
	}
	return nil
}

// damage is the error for damage found in the file; found after Open, it
// also stops the store's writes and closes Damaged.
func (s *Store) damage(what string, cause error) error {
	err := &storeError{kind: ErrDamaged, err: cause,
		msg: fmt.Sprintf("local state %s is damaged (%s): %s", s.path, what, recovery(s.path))}
	if s.db != nil && s.ops != nil {
		s.fail(err)
		s.damageOnce.Do(func() { close(s.damaged) })
	}
	return err
}

// fail makes every later write return err (the first failure stays).
func (s *Store) fail(err error) {
	s.failMu.Lock()
	if s.failed == nil {
		s.failed = err
	}
	s.failMu.Unlock()
}

// Err returns the failure that stopped the store's writes, or nil.
func (s *Store) Err() error {
	s.failMu.Lock()
	defer s.failMu.Unlock()
	return s.failed
}

// Damaged is closed when a read finds a damaged record after Open: the
// agent must stop rather than act on a local state it cannot read.
func (s *Store) Damaged() <-chan struct{} { return s.damaged }

// writeError turns a failed write of the file into a one-line error
// naming the file, the disk it is on, the cause and what follows. A write
// that failed before it reached the file (no space, a read-only disk: the
// write(2) or the file's growth failed) changed nothing, and the store
// goes on; any other failure (EIO, a failed fsync) may have left pages
// written or not, so the store takes no more writes (inDoubt, see fail).
func (s *Store) writeError(file string, err error) (_ *storeError, inDoubt bool) {
	disk := mountPoint(filepath.Dir(file))
	name := s.path
	if file != s.path {
		name = fmt.Sprintf("%s (writing %s)", s.path, filepath.Base(file))
	}
	var pe *os.PathError
	// bbolt reports a failed growth of the file as text ("file resize
	// error: truncate ...: no space left on device"), without the errno.
	before := errors.As(err, &pe) || strings.HasPrefix(err.Error(), "file resize error:")
	kind, what := ErrDiskFailed, "failed"
	switch errnoOf(err) {
	case syscall.ENOSPC, syscall.EDQUOT:
		kind, what = ErrDiskFull, "is full"
	case syscall.EROFS:
		kind, what = ErrReadOnly, "is read-only"
	}
	if before && kind != ErrDiskFailed {
		return &storeError{kind: kind, err: err, msg: fmt.Sprintf(
			"local state %s: the disk at %s %s (%v); nothing was changed, and writes resume by themselves once it is writable again",
			name, disk, what, err)}, false
	}
	return &storeError{kind: kind, err: err, msg: fmt.Sprintf(
		"local state %s: the disk at %s %s (%v) and what reached it is not known; the agent takes no more writes: check the disk and restart the agent",
		name, disk, what, err)}, true
}

// errnoOf finds the errno of an error, in its chain or its text.
func errnoOf(err error) syscall.Errno {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	for _, e := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT, syscall.EROFS, syscall.EIO} {
		if strings.Contains(err.Error(), e.Error()) {
			return e
		}
	}
	return 0
}

// openError is a failure to open the file: the agent does not start.
func (s *Store) openError(op string, err error) error {
	disk := mountPoint(filepath.Dir(s.path))
	switch errnoOf(err) {
	case syscall.ENOSPC, syscall.EDQUOT:
		return &storeError{kind: ErrDiskFull, err: err, msg: fmt.Sprintf("local state %s: %s: the disk at %s is full (%v): free space there", s.path, op, disk, err)}
	case syscall.EROFS:
		return &storeError{kind: ErrReadOnly, err: err, msg: fmt.Sprintf("local state %s: %s: the disk at %s is read-only (%v): make it writable", s.path, op, disk, err)}
	}
	return fmt.Errorf("local state %s: %s: %w", s.path, op, err)
}

// mountPoint is the mount point of the filesystem holding dir, or dir when
// it cannot tell: the "disk" an operator frees or fixes.
func mountPoint(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return dir
	}
	var st syscall.Stat_t
	if syscall.Stat(abs, &st) != nil {
		return abs
	}
	for abs != "/" {
		parent := filepath.Dir(abs)
		var pst syscall.Stat_t
		if syscall.Stat(parent, &pst) != nil || pst.Dev != st.Dev {
			return abs
		}
		abs = parent
	}
	return abs
}

// writer commits queued writes, as many as are waiting in one frame of the
// log: one fdatasync serves every registration that arrived while the
// previous one ran. It checkpoints the log into local.db once the log
// passes walCheckpointBytes, once writes pause for walIdleCheckpoint, and
// at Close.
func (s *Store) writer() {
	defer close(s.writerEnd)
	idle := time.NewTimer(time.Hour)
	idle.Stop()
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	// busy: the last frame carried more than one write. An fdatasync costs
	// about 100 µs of CPU here whatever it writes, so under concurrent
	// registrations the writer waits walLinger for company before it
	// writes (4,500 -> 5,000-5,900 writes/s through the leader, in-process);
	// a lone writer never waits.
	busy := false
	// carry: a write taken that would have made the frame longer than
	// walMaxFrame; it starts the next one.
	var carry *op
	// bg: the result of the background checkpoint running, nil if none.
	var bg <-chan error
	for {
		var batch []*op
		size := 0
		add := func(o *op) {
			// equivalent mutant: persist refuses a record over the limit, so a first record always fits; splitting frames sooner or more often costs fsyncs, not writes
			if len(batch) > 0 && size+o.walSize() > walMaxFrame {
				carry = o
				return
			}
			batch = append(batch, o)
			size += o.walSize()
		}
		if o := carry; o != nil {
			carry = nil
			add(o)
		} else {
			select {
			case o := <-s.ops:
				add(o)
			case err := <-bg:
				bg = nil
				s.backgroundCheckpointEnded(err)
				idle.Reset(walIdleCheckpoint) // what a failure left is written later
				continue
			case <-idle.C:
				if bg != nil {
					idle.Reset(walIdleCheckpoint)
					continue
				}
				// equivalent mutant: retrying a failed idle checkpoint only keeps the
				// log short; its records stay on disk in it.
				if s.checkpoint() != nil {
					idle.Reset(walIdleCheckpoint)
				}
				continue
			case <-s.closing:
				if bg != nil {
					s.backgroundCheckpointEnded(<-bg)
				}
				s.checkpoint()
				return
			}
		}
		if busy {
			linger.Reset(walLinger)
		gather:
			// equivalent mutant: the cap bounds a frame's size; a smaller batch
			// is as correct.
			for len(batch) < 4096 && carry == nil {
				select {
				case o := <-s.ops:
					add(o)
				case <-linger.C:
					break gather
				}
			}
			linger.Stop()
		}
	more:
		// equivalent mutant: the cap bounds a frame's size; a smaller batch is
		// as correct.
		for len(batch) < 4096 && carry == nil {
			select {
			case o := <-s.ops:
				add(o)
			default:
				break more
			}
		}
		// equivalent mutant: whether a writer waits for company changes timing, not what is written
		busy = len(batch) > 1
		err := s.Err()
		if err == nil {
			err = s.commit(batch)
		}
		for _, o := range batch {
			o.done <- err
		}
		// equivalent mutant: the exact size of the log at a checkpoint is a tuning constant
		if err == nil && bg == nil && s.wal.off >= walCheckpointBytes {
			bg = s.startCheckpoint()
		}
		idle.Reset(walIdleCheckpoint)
	}
}

// walLinger is how long a busy writer waits for more writes to share a
// frame's fdatasync.
const walLinger = 250 * time.Microsecond

// walIdleCheckpoint: writes that paused this long are checkpointed. A
// variable for the tests.
var walIdleCheckpoint = time.Second

// commit writes a batch as one frame of the log and makes it visible to
// reads. A failure is turned into a store error; one that leaves the file
// in doubt stops later writes.
func (s *Store) commit(batch []*op) error {
	if err := s.wal.append(walFrame(s.wal.gen, batch)); err != nil {
		serr, inDoubt := s.writeError(s.wal.f.Name(), err)
		if inDoubt {
			s.fail(serr)
		}
		return serr
	}
	s.mu.Lock()
	for _, o := range batch {
		k := recordKey{string(o.bucket), string(o.key)}
		s.pending[k] = o.val
		if s.dirty != nil {
			s.dirty[k] = struct{}{}
		}
	}
	s.mu.Unlock()
	return nil
}

// checkpoint writes the log's records into local.db and moves the log's
// generation on in the same transaction; the log then starts over. A
// failure leaves the records in the log (on disk, acknowledged) and is
// tried again later, unless it leaves local.db in doubt: then the store
// takes no more writes. Writer only, with no background checkpoint running.
func (s *Store) checkpoint() error {
	if s.Err() != nil || len(s.pending) == 0 {
		return nil
	}
	return s.finishCheckpoint(sortedKeys(s.pending))
}

// finishCheckpoint writes the pending records of keys (all of them, or
// those written since a background checkpoint wrote the rest) and moves the
// log's generation on; the log then starts over.
func (s *Store) finishCheckpoint(keys []recordKey) error {
	next := s.wal.gen + 1
	err := s.db.Update(func(tx *bolt.Tx) error {
		if err := putRecords(tx, keys, s.pending); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(keyWALGen, binary.BigEndian.AppendUint32(nil, next))
	})
	if err != nil {
		if serr, inDoubt := s.writeError(s.path, err); inDoubt {
			s.fail(serr)
		}
		return err
	}
	s.wal.gen, s.wal.off = next, 0
	s.mu.Lock()
	clear(s.pending)
	s.mu.Unlock()
	return nil
}

// startCheckpoint writes a copy of the pending records into local.db in
// the background while the writer goes on appending frames; the generation
// stays, so a crash replays the whole log over them, which ends at the
// same records. Its result arrives on the returned channel;
// finishCheckpoint then writes only what was written since: a short pause
// of the writer instead of one as long as the whole checkpoint (20,000 new
// records: 74 ms on this project's machine, every write waiting).
func (s *Store) startCheckpoint() <-chan error {
	recs := maps.Clone(s.pending)
	s.dirty = map[recordKey]struct{}{}
	done := make(chan error, 1)
	go func() {
		err := s.db.Update(func(tx *bolt.Tx) error {
			if err := backgroundCheckpointFault(); err != nil {
				return err
			}
			return putRecords(tx, sortedKeys(recs), recs) // sorted here, off the writer
		})
		afterBackgroundCheckpoint()
		done <- err
	}()
	return done
}

// backgroundCheckpointEnded takes a background checkpoint's result: on
// success the rest is written at once; on failure nothing changed and a
// later checkpoint writes everything.
func (s *Store) backgroundCheckpointEnded(err error) {
	dirty := s.dirty
	s.dirty = nil
	if err != nil {
		if serr, inDoubt := s.writeError(s.path, err); inDoubt {
			s.fail(serr)
		}
		return
	}
	if s.Err() != nil {
		return
	}
	s.finishCheckpoint(sortedKeys(dirty))
}

// Test seams: backgroundCheckpointFault fails a background checkpoint's
// transaction (rolled back); afterBackgroundCheckpoint runs once it ended.
var (
	backgroundCheckpointFault = func() error { return nil }
	afterBackgroundCheckpoint = func() {}
)

// sortedKeys returns m's keys in the order bbolt stores them. In that
// order each insert lands at the end of its node: bbolt splits nodes only
// at commit, so one taking keys in random order shifts all of its keys on
// every insert (20,000 new records: 278 ms, against 74 ms sorted).
func sortedKeys[V any](m map[recordKey]V) []recordKey {
	return slices.SortedFunc(maps.Keys(m), func(a, b recordKey) int {
		return cmp.Or(strings.Compare(a.bucket, b.bucket), strings.Compare(a.key, b.key))
	})
}

// putRecords writes recs[k] for each of keys (nil: deletes it).
func putRecords(tx *bolt.Tx, keys []recordKey, recs map[recordKey][]byte) error {
	for _, k := range keys {
		if err := putRecord(tx.Bucket([]byte(k.bucket)), []byte(k.key), recs[k]); err != nil {
			return err
		}
	}
	return nil
}

// persist writes one record (val nil: deletes it) and waits until it is on
// disk.
func (s *Store) persist(bucket, key, val []byte) error {
	if s.db == nil {
		return nil
	}
	o := &op{bucket: bucket, key: key, val: val, done: make(chan error, 1)}
	if o.walSize() > walMaxFrame {
		return fmt.Errorf("local state: record %q of %d bytes is longer than the log's limit of %d", key, o.walSize(), walMaxFrame)
	}
	select {
	case s.ops <- o:
	case <-s.closing:
		return ErrClosed
	}
	select {
	case err := <-o.done:
		return err
	case <-s.writerEnd:
		// Closed while queued: the write may or may not have been taken.
		select {
		case err := <-o.done:
			return err
		default:
			return ErrClosed
		}
	}
}

// Adopted reports whether the agent has taken in, once, the instances the
// registry held for its node when this local state was new (MarkAdopted).
// Until then a start must adopt them: a first start on a new data dir that
// died before it got that far left a file that exists but owns nothing, and
// anti-entropy would otherwise remove what the node's apps registered.
func (s *Store) Adopted() bool { return s.adopted.Load() }

// MarkAdopted records, on disk, that the adoption is done.
func (s *Store) MarkAdopted() error {
	if err := s.persist(bucketMeta, keyAdopted, []byte{1}); err != nil {
		return err
	}
	s.adopted.Store(true)
	return nil
}

// LockID serialises the writes of one instance id (a registration and the
// anti-entropy's correction of it) without serialising different ids: a
// lock per id, not a stripe of a fixed set (64 writers on 64 stripes met
// one another on most writes, each waiting out a whole Raft round trip).
func (s *Store) LockID(id string) (unlock func()) {
	s.idsMu.Lock()
	l := s.ids[id]
	if l == nil {
		l = &idLock{}
		s.ids[id] = l
	}
	l.refs++
	s.idsMu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		s.idsMu.Lock()
		if l.refs--; l.refs == 0 {
			delete(s.ids, id)
		}
		s.idsMu.Unlock()
	}
}

// PutService stores a service, replacing one with the same instance id.
func (s *Store) PutService(svc Service) error {
	svc.Instance = Definition(svc.Instance)
	val, err := encode(&svc)
	if err != nil {
		return fmt.Errorf("local state: encode %q: %w", svc.Instance.ID, err)
	}
	if err := s.persist(bucketServices, []byte(svc.Instance.ID), val); err != nil {
		return err
	}
	s.mu.Lock()
	s.sums[svc.Instance.ID] = DefinitionSum(&svc.Instance)
	if s.defs != nil {
		s.defs[svc.Instance.ID] = &svc
	}
	s.mu.Unlock()
	return nil
}

// DeleteService forgets a service; it reports whether one was stored.
func (s *Store) DeleteService(id string) (bool, error) {
	s.mu.RLock()
	_, ok := s.sums[id]
	s.mu.RUnlock()
	if !ok {
		return false, nil
	}
	if err := s.persist(bucketServices, []byte(id), nil); err != nil {
		return true, err
	}
	s.mu.Lock()
	delete(s.sums, id)
	delete(s.defs, id)
	s.mu.Unlock()
	return true, nil
}

// Service returns a stored service. A record that fails its checksum is an
// error wrapping ErrDamaged, never a service missing: the agent would
// deregister what it owns.
func (s *Store) Service(id string) (Service, bool, error) {
	s.mu.RLock()
	_, ok := s.sums[id]
	var mem *Service
	if s.defs != nil {
		mem = s.defs[id]
	}
	s.mu.RUnlock()
	switch {
	case !ok:
		return Service{}, false, nil
	case s.db == nil:
		return Service{Instance: Definition(mem.Instance), Source: mem.Source}, true, nil
	}
	s.mu.RLock()
	raw, inLog := s.pending[recordKey{string(bucketServices), id}]
	s.mu.RUnlock()
	var svc Service
	if inLog {
		if raw == nil {
			return Service{}, false, nil // deleted meanwhile
		}
		if err := s.decode(bucketServices, []byte(id), raw, &svc); err != nil {
			return Service{}, false, err
		}
		return svc, true, nil
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketServices).Get([]byte(id))
		if raw == nil {
			return errNotStored
		}
		return s.decode(bucketServices, []byte(id), raw, &svc)
	})
	switch {
	case errors.Is(err, errNotStored):
		return Service{}, false, nil // deleted meanwhile
	case err != nil:
		return Service{}, false, err
	}
	return svc, true, nil
}

var errNotStored = errors.New("not stored")

// Services returns every stored service, sorted by instance id; a damaged
// record is an error (see Service).
func (s *Store) Services() ([]Service, error) {
	var out []Service
	if s.db == nil {
		s.mu.RLock()
		for _, svc := range s.defs {
			out = append(out, Service{Instance: Definition(svc.Instance), Source: svc.Source})
		}
		s.mu.RUnlock()
		sort.Slice(out, func(i, j int) bool { return out[i].Instance.ID < out[j].Instance.ID })
		return out, nil
	}
	// The log's records first, local.db's after: a checkpoint in between
	// has then put them in local.db before this reads it.
	inLog := map[string][]byte{}
	s.mu.RLock()
	for k, v := range s.pending {
		if k.bucket == string(bucketServices) {
			inLog[k.key] = v
		}
	}
	s.mu.RUnlock()
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketServices).ForEach(func(k, v []byte) error {
			if _, ok := inLog[string(k)]; ok {
				return nil
			}
			var svc Service
			if err := s.decode(bucketServices, k, v, &svc); err != nil {
				return err
			}
			out = append(out, svc)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	for k, v := range inLog {
		if v == nil {
			continue
		}
		var svc Service
		if err := s.decode(bucketServices, []byte(k), v, &svc); err != nil {
			return nil, err
		}
		out = append(out, svc)
	}
	// equivalent mutant: bolt hands its keys over sorted, so sorting with no log records only costs work
	if len(inLog) > 0 {
		// equivalent mutant: IDs are keys, never equal, so < and <= order them alike
		sort.Slice(out, func(i, j int) bool { return out[i].Instance.ID < out[j].Instance.ID })
	}
	return out, nil
}

// LogRecords is how many records are in the write-ahead log and not yet
// in local.db (the checkpoint's lag).
func (s *Store) LogRecords() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.pending)
}

// sum returns the definition sum of a stored service.
func (s *Store) sum(id string) (uint64, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.sums[id]
	return v, ok
}

// Len is how many services are stored.
func (s *Store) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.sums)
}

func candidacyRecordKey(election, candidate string) []byte {
	// Names and candidates never hold a NUL byte (fsm.ValidName/ValidID).
	return []byte(election + "\x00" + candidate)
}

// PutCandidacy stores a candidacy.
func (s *Store) PutCandidacy(c Candidacy) error {
	val, err := encode(&c)
	if err != nil {
		return fmt.Errorf("local state: encode candidacy: %w", err)
	}
	if err := s.persist(bucketCandidacies, candidacyRecordKey(c.Election, c.Candidate), val); err != nil {
		return err
	}
	s.mu.Lock()
	s.candidacies[candidacyKey{c.Election, c.Candidate}] = c
	s.mu.Unlock()
	return nil
}

// DeleteCandidacy forgets a candidacy.
func (s *Store) DeleteCandidacy(election, candidate string) error {
	s.mu.RLock()
	_, ok := s.candidacies[candidacyKey{election, candidate}]
	s.mu.RUnlock()
	if !ok {
		return nil
	}
	if err := s.persist(bucketCandidacies, candidacyRecordKey(election, candidate), nil); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.candidacies, candidacyKey{election, candidate})
	s.mu.Unlock()
	return nil
}

// Candidacies returns the stored candidacies, sorted by election and
// candidate.
func (s *Store) Candidacies() []Candidacy {
	s.mu.RLock()
	out := make([]Candidacy, 0, len(s.candidacies))
	for _, c := range s.candidacies {
		out = append(out, c)
	}
	s.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Election != out[j].Election {
			return out[i].Election < out[j].Election
		}
		return out[i].Candidate < out[j].Candidate
	})
	return out
}

// Close waits for queued writes and closes the file.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.closing)
		<-s.writerEnd
		if s.db != nil {
			err = errors.Join(s.db.Close(), s.wal.f.Close())
		}
	})
	return err
}

// Definition is an instance's definition: what its owner registered,
// without the status, output and indexes the registry adds. Slices and maps
// are copied.
func Definition(in fsm.Instance) fsm.Instance {
	in.CreateIndex, in.ModifyIndex = 0, 0
	in.Tags = slices.Clone(in.Tags)
	if len(in.Tags) == 0 {
		in.Tags = nil
	}
	if len(in.Meta) == 0 {
		in.Meta = nil
	} else {
		m := make(map[string]string, len(in.Meta))
		for k, v := range in.Meta {
			m[k] = v
		}
		in.Meta = m
	}
	if len(in.Checks) == 0 {
		in.Checks = nil
	} else {
		checks := make([]fsm.Check, len(in.Checks))
		for i, c := range in.Checks {
			c.Status, c.Output, c.ModifyIndex = "", "", 0
			c.Exec = slices.Clone(c.Exec)
			checks[i] = c
		}
		in.Checks = checks
	}
	return in
}

// sumSeed makes the definition sums of one process comparable; they are
// never stored.
var sumSeed = maphash.MakeSeed()

// DefinitionSum hashes what SameDefinition compares: equal definitions
// have equal sums, and different ones differ but with negligible chance.
// Meta is hashed without regard to its order.
func DefinitionSum(in *fsm.Instance) uint64 {
	var h maphash.Hash
	h.SetSeed(sumSeed)
	str := func(v string) {
		h.WriteString(v)
		h.WriteByte(0)
	}
	num := func(v int64) {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], uint64(v))
		h.Write(b[:])
	}
	str(in.ID)
	str(in.Name)
	str(in.Node)
	str(in.Address)
	num(int64(in.Port))
	num(int64(in.EffectiveWeight()))
	str(in.Lease)
	num(int64(len(in.Tags)))
	for _, t := range in.Tags {
		str(t)
	}
	var meta uint64
	for k, v := range in.Meta {
		meta += maphash.String(sumSeed, k+"\x00"+v)
	}
	num(int64(len(in.Meta)))
	num(int64(meta))
	num(int64(len(in.Checks)))
	for i := range in.Checks {
		c := &in.Checks[i]
		str(c.ID)
		str(c.Name)
		str(c.Type)
		str(c.HTTP)
		str(c.TCP)
		num(int64(len(c.Exec)))
		for _, a := range c.Exec {
			str(a)
		}
		num(c.TTL)
		num(c.Interval)
		num(c.Timeout)
		num(int64(c.SuccessBeforePassing))
		num(int64(c.FailuresBeforeCritical))
		num(c.DeregisterCriticalAfter)
	}
	return h.Sum64()
}

// SameDefinition reports whether the registry's instance reg is what the
// local definition def asks for: everything but status, output and indexes.
func SameDefinition(reg, def *fsm.Instance) bool {
	if reg.ID != def.ID || reg.Name != def.Name || reg.Node != def.Node || reg.Address != def.Address ||
		reg.Port != def.Port || reg.EffectiveWeight() != def.EffectiveWeight() || reg.Lease != def.Lease || !slices.Equal(reg.Tags, def.Tags) ||
		len(reg.Meta) != len(def.Meta) || len(reg.Checks) != len(def.Checks) {
		return false
	}
	for k, v := range def.Meta {
		if w, ok := reg.Meta[k]; !ok || w != v {
			return false
		}
	}
	for i := range def.Checks {
		a, b := &reg.Checks[i], &def.Checks[i]
		if a.ID != b.ID || a.Name != b.Name || a.Type != b.Type || a.HTTP != b.HTTP || a.TCP != b.TCP ||
			!slices.Equal(a.Exec, b.Exec) || a.TTL != b.TTL || a.Interval != b.Interval || a.Timeout != b.Timeout ||
			a.SuccessBeforePassing != b.SuccessBeforePassing || a.FailuresBeforeCritical != b.FailuresBeforeCritical ||
			a.DeregisterCriticalAfter != b.DeregisterCriticalAfter {
			return false
		}
	}
	return true
}
