package localstate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The write-ahead log: what a crash leaves on disk is copied while the
// store is open (bbolt's flock keeps a second Open of the same file out),
// and the copy is opened as the restarted agent would.

// setWAL sets the checkpoint triggers for one test.
func setWAL(t *testing.T, bytes int64, idle time.Duration) {
	oldBytes, oldIdle := walCheckpointBytes, walIdleCheckpoint
	walCheckpointBytes, walIdleCheckpoint = bytes, idle
	t.Cleanup(func() { walCheckpointBytes, walIdleCheckpoint = oldBytes, oldIdle })
}

// crashCopy copies the data dir's local.db and local.wal as they are on
// disk now into a new dir and returns the copy's local.db path.
func crashCopy(t *testing.T, path string) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{FileName, WALName} {
		data, err := os.ReadFile(filepath.Join(filepath.Dir(path), name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, FileName)
}

func openT(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func serviceIDs(t *testing.T, s *Store) []string {
	t.Helper()
	all, err := s.Services()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, svc := range all {
		ids = append(ids, svc.Instance.ID)
	}
	return ids
}

// Every acknowledged write is there after a crash, whether it reached
// local.db by a checkpoint or only the log: with a checkpoint every few
// frames, the log is written over from its start many times, and older
// frames left in it are never replayed.
func TestStore_crashKeepsAcknowledgedWrites(t *testing.T) {
	for _, tc := range []struct {
		name       string
		checkpoint int64
	}{
		{"in the log only", 1 << 30},
		{"checkpointed every few frames", 2 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			setWAL(t, tc.checkpoint, time.Hour)
			path := filepath.Join(t.TempDir(), FileName)
			s := openT(t, path)
			var want []string
			for i := range 40 {
				id := fmt.Sprintf("web-%02d", i)
				if err := s.PutService(svc(id, 80+i)); err != nil {
					t.Fatal(err)
				}
				if i%5 == 3 {
					if _, err := s.DeleteService(id); err != nil {
						t.Fatal(err)
					}
					continue
				}
				want = append(want, id)
			}
			if err := s.PutService(svc("web-00", 9999)); err != nil { // a change
				t.Fatal(err)
			}
			if err := s.PutCandidacy(Candidacy{Election: "db", Candidate: "a"}); err != nil {
				t.Fatal(err)
			}
			db, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if inDB := bytes.Contains(db, []byte(`"id":"web-01"`)); inDB == (tc.checkpoint > 1<<20) {
				t.Fatalf("an early write in local.db: %v; this case wants it there only with checkpoints", inDB)
			}

			c := openT(t, crashCopy(t, path))
			if got := serviceIDs(t, c); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("after the crash: %v\nwant %v", got, want)
			}
			if got, ok, err := c.Service("web-00"); err != nil || !ok || got.Instance.Port != 9999 {
				t.Fatalf("web-00 after the crash: %+v %v %v, want port 9999", got.Instance, ok, err)
			}
			if got := c.Candidacies(); len(got) != 1 {
				t.Fatalf("candidacies after the crash: %v", got)
			}
		})
	}
}

// walFrames returns the offsets of the whole frames at the log's start.
func walFrames(t *testing.T, data []byte) []int {
	t.Helper()
	gen := binary.BigEndian.Uint32(data[4:])
	var offs []int
	for off := 0; ; {
		p, ok := walParse(data[off:], gen)
		if !ok {
			return offs
		}
		offs = append(offs, off)
		off += walHeader + len(p)
	}
}

// threeFrames opens a store that writes web-0, web-1 and web-2 in three
// frames of its log, none checkpointed, and returns its path; the store
// stays open.
func threeFrames(t *testing.T) string {
	t.Helper()
	setWAL(t, 1<<30, time.Hour)
	path := filepath.Join(t.TempDir(), FileName)
	s := openT(t, path)
	for i := range 3 {
		if err := s.PutService(svc(fmt.Sprintf("web-%d", i), 80+i)); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// A frame cut by a crash (it was never acknowledged) is dropped; a damaged
// frame with whole frames after it stops Open with one line naming the log
// and the recovery, never a start without the writes after it.
func TestStore_walTornAndDamagedFrames(t *testing.T) {
	path := threeFrames(t)
	walPath := filepath.Join(filepath.Dir(path), WALName)
	data, err := os.ReadFile(walPath)
	if err != nil {
		t.Fatal(err)
	}
	offs := walFrames(t, data)
	if len(offs) != 3 {
		t.Fatalf("%d frames in the log, want 3", len(offs))
	}

	t.Run("torn last frame", func(t *testing.T) {
		cp := crashCopy(t, path)
		// The last frame's first 40 bytes, then the rest of the file.
		if err := os.Truncate(filepath.Join(filepath.Dir(cp), WALName), int64(offs[2]+40)); err != nil {
			t.Fatal(err)
		}
		c := openT(t, cp)
		if got := serviceIDs(t, c); fmt.Sprint(got) != "[web-0 web-1]" {
			t.Fatalf("after a torn last frame: %v, want the two whole ones", got)
		}
	})
	t.Run("damaged middle frame", func(t *testing.T) {
		cp := crashCopy(t, path)
		cpWAL := filepath.Join(filepath.Dir(cp), WALName)
		damaged := bytes.Clone(data)
		damaged[offs[1]+walHeader+10] ^= 0x40
		if err := os.WriteFile(cpWAL, damaged, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(cp)
		if err == nil {
			s.Close()
		}
		requireOneLine(t, err, ErrDamaged, cpWAL, fmt.Sprintf("frame at offset %d is damaged", offs[1]), "move "+cp+" away")
	})
}

// A log beside a local.db that was moved away (the recovery of a damaged
// one) is not replayed into the new local.db: the agent adopts what the
// registry holds instead of half a record of the old file.
func TestStore_walOfAnotherLocalDBIsNotReplayed(t *testing.T) {
	setWAL(t, 1<<30, time.Hour)
	path := filepath.Join(t.TempDir(), FileName)
	s := openT(t, path)
	if err := s.PutService(svc("web-1", 80)); err != nil {
		t.Fatal(err)
	}
	cp := crashCopy(t, path)
	if err := os.Remove(cp); err != nil {
		t.Fatal(err)
	}
	c := openT(t, cp)
	if got := serviceIDs(t, c); len(got) != 0 || c.Adopted() {
		t.Fatalf("a new local.db beside an old log: %v, adopted %v; want empty and not adopted", got, c.Adopted())
	}
}

// Writes that pause are checkpointed into local.db, so the log a restart
// replays stays short.
func TestStore_idleWritesAreCheckpointed(t *testing.T) {
	setWAL(t, 1<<30, 20*time.Millisecond)
	path := filepath.Join(t.TempDir(), FileName)
	s := openT(t, path)
	if err := s.PutService(svc("web-1", 80)); err != nil {
		t.Fatal(err)
	}
	waitInLocalDB(t, path, "web-1", "an idle write not in local.db after 10s")
	if _, ok, err := s.Service("web-1"); !ok || err != nil {
		t.Fatalf("after the checkpoint: %v %v", ok, err)
	}
}

// Crashes in a row, with checkpoints between them: each restart replays
// what the last one left and carries on in a new generation, and every
// acknowledged write of every run is there at the end (a generation used
// twice would replay frames of an older run, or take them for damage).
func TestStore_crashesInARowKeepEveryWrite(t *testing.T) {
	setWAL(t, 1<<10, time.Hour)
	path := filepath.Join(t.TempDir(), FileName)
	want := map[string]int{}
	for run := range 4 {
		s, err := Open(path)
		if err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
		for i := range 7 + run*3 {
			id := fmt.Sprintf("web-%d", i%9)
			port := run*100 + i
			if err := s.PutService(svc(id, port)); err != nil {
				t.Fatal(err)
			}
			want[id] = port
		}
		cp := crashCopy(t, path)
		s.Close()
		path = cp
	}
	s := openT(t, path)
	all, err := s.Services()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, svc := range all {
		got[svc.Instance.ID] = svc.Instance.Port
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after four crashes: %v\nwant %v", got, want)
	}
}

// The log's generation only moves forward, at a checkpoint and at a start
// that replayed frames: a frame of an earlier generation, left further on
// in the file, can never be current again.
func TestStore_walGenerationOnlyMovesForward(t *testing.T) {
	setWAL(t, 1<<30, time.Hour)
	path := filepath.Join(t.TempDir(), FileName)
	s := openT(t, path)
	first := s.wal.gen
	if err := s.PutService(svc("web-1", 80)); err != nil {
		t.Fatal(err)
	}
	c := openT(t, crashCopy(t, path))
	if c.wal.gen <= first {
		t.Fatalf("a start that replayed frames of generation %d went on with %d", first, c.wal.gen)
	}
	replayed := c.wal.gen
	if err := c.PutService(svc("web-2", 81)); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil || c.wal.gen <= replayed { // Close checkpoints
		t.Fatalf("checkpoint at close: %v, generation %d -> %d", err, replayed, c.wal.gen)
	}
}

// A frame whose checksum holds but whose records do not decode (a writer
// bug, not damage) is an error at every cut, never a panic or a record
// made up.
func TestWALOps_cutPayload(t *testing.T) {
	frame := walFrame(7, []*op{
		{bucket: bucketServices, key: []byte("web-1"), val: []byte("record")},
		{bucket: bucketCandidacies, key: []byte("db\x00a")},
	})
	payload := frame[walHeader:]
	ops, err := walOps(payload)
	if err != nil || len(ops) != 2 || string(ops[0].val) != "record" || ops[1].val != nil {
		t.Fatalf("walOps of a whole payload: %v %v", ops, err)
	}
	for n := 1; n < len(payload); n++ {
		if n == 2+len(bucketServices)+2+len("web-1")+4+len("record") {
			continue // the first record whole, and nothing after it
		}
		if ops, err := walOps(payload[:n]); err == nil {
			t.Fatalf("walOps of the first %d bytes: %d records, no error", n, len(ops))
		}
	}
	bad := bytes.Clone(payload)
	bad[0] = 9 // neither put nor delete
	if _, err := walOps(bad); err == nil {
		t.Fatal("an unknown record kind decoded")
	}
}

// A last frame cut at any length is dropped whole, and the frames before
// it are kept.
func TestStore_walLastFrameCutAnywhere(t *testing.T) {
	path := threeFrames(t)
	cp := crashCopy(t, path)
	cpWAL := filepath.Join(filepath.Dir(cp), WALName)
	data, err := os.ReadFile(cpWAL)
	if err != nil {
		t.Fatal(err)
	}
	db, err := os.ReadFile(cp)
	if err != nil {
		t.Fatal(err)
	}
	offs := walFrames(t, data)
	for cut := offs[2]; cut < len(data); cut++ {
		if err := os.WriteFile(cp, db, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cpWAL, data[:cut], 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Open(cp)
		if err != nil {
			t.Fatalf("last frame cut after %d of its %d bytes: %v", cut-offs[2], len(data)-offs[2], err)
		}
		got := serviceIDs(t, c)
		c.Close()
		if fmt.Sprint(got) != "[web-0 web-1]" {
			t.Fatalf("last frame cut after %d bytes: %v", cut-offs[2], got)
		}
	}
}

// What a write stores is readable at once, from the log, before any
// checkpoint: listed in order, adopted marks, candidacies.
func TestStore_readsBeforeTheCheckpoint(t *testing.T) {
	setWAL(t, 1<<30, time.Hour)
	s := openT(t, filepath.Join(t.TempDir(), FileName))
	for _, id := range []string{"web-b", "web-c", "web-a"} {
		if err := s.PutService(svc(id, 80)); err != nil {
			t.Fatal(err)
		}
	}
	if got := serviceIDs(t, s); fmt.Sprint(got) != "[web-a web-b web-c]" {
		t.Fatalf("Services before a checkpoint: %v, want sorted", got)
	}
	if err := s.MarkAdopted(); err != nil || !s.Adopted() {
		t.Fatalf("MarkAdopted: %v, adopted %v", err, s.Adopted())
	}
	if err := s.PutCandidacy(Candidacy{Election: "db", Candidate: "a"}); err != nil || len(s.Candidacies()) != 1 {
		t.Fatalf("PutCandidacy: %v, %v", err, s.Candidacies())
	}
	if err := s.DeleteCandidacy("db", "a"); err != nil || len(s.Candidacies()) != 0 {
		t.Fatalf("DeleteCandidacy: %v, %v", err, s.Candidacies())
	}
}

// setMaxFrame lowers the frame limit for one test.
func setMaxFrame(t *testing.T, n int) {
	old := walMaxFrame
	walMaxFrame = n
	t.Cleanup(func() { walMaxFrame = old })
}

// A frame whose payload is exactly the limit is whole; one byte more is
// not a frame (a damaged length field).
func TestWALParse_frameLimit(t *testing.T) {
	setMaxFrame(t, 4<<10)
	overhead := (&op{bucket: bucketServices, key: []byte("k")}).walSize()
	for _, tc := range []struct {
		payload int
		whole   bool
	}{{walMaxFrame, true}, {walMaxFrame + 1, false}} {
		frame := walFrame(3, []*op{{bucket: bucketServices, key: []byte("k"), val: bytes.Repeat([]byte("v"), tc.payload-overhead)}})
		if n := len(frame) - walHeader; n != tc.payload {
			t.Fatalf("made a payload of %d bytes, want %d", n, tc.payload)
		}
		if _, ok := walParse(frame, 3); ok != tc.whole {
			t.Fatalf("a frame with a payload of %d bytes (limit %d): whole %v, want %v", tc.payload, walMaxFrame, ok, tc.whole)
		}
	}
}

// Concurrent writes that together are longer than a frame may be are
// split over several frames, so a crash keeps them all; a single record
// longer than that is refused and changes nothing.
func TestStore_writesLongerThanAFrameSurviveACrash(t *testing.T) {
	setWAL(t, 1<<30, time.Hour)
	setMaxFrame(t, 64<<10)
	path := filepath.Join(t.TempDir(), FileName)
	s := openT(t, path)
	big := func(id string, n int) Service {
		v := svc(id, 80)
		v.Instance.Meta = map[string]string{"blob": string(bytes.Repeat([]byte("x"), n))}
		return v
	}
	var want []string
	errs := make(chan error, 64)
	for i := range 64 {
		id := fmt.Sprintf("web-%02d", i)
		want = append(want, id)
		go func() { errs <- s.PutService(big(id, 8<<10)) }()
	}
	for range 64 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// A record of exactly the limit is kept; one byte more is refused.
	sized := func(id string, walSize int) Service {
		t.Helper()
		v := big(id, 0)
		def := v
		def.Instance = Definition(def.Instance)
		val, err := encode(&def)
		if err != nil {
			t.Fatal(err)
		}
		return big(id, walSize-(&op{bucket: bucketServices, key: []byte(id), val: val}).walSize())
	}
	if err := s.PutService(sized("exact", walMaxFrame)); err != nil {
		t.Fatalf("a record of exactly the frame limit: %v", err)
	}
	want = append([]string{"exact"}, want...) // listed in ID order
	if err := s.PutService(sized("huge", walMaxFrame+1)); err == nil || !strings.Contains(err.Error(), "longer than the log's limit") {
		t.Fatalf("a record one byte longer than a frame: %v", err)
	}
	if _, ok, _ := s.Service("huge"); ok {
		t.Fatal("a refused record is stored")
	}
	c := openT(t, crashCopy(t, path))
	if got := serviceIDs(t, c); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after the crash: %v\nwant %v", got, want)
	}
}

// waitInLocalDB polls the file at path (local.db, as on disk) until it
// holds instance id's record, or fails with failMsg after 10 s.
func waitInLocalDB(t *testing.T, path, id, failMsg string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(data, []byte(`"id":"`+id+`"`)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(failMsg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pauseBackgroundCheckpoint makes the next background checkpoint wait,
// once its transaction ended, until the returned release is called; ended
// is closed when it got there. fault, if set, fails its transaction.
func pauseBackgroundCheckpoint(t *testing.T, fault error) (ended <-chan struct{}, release func()) {
	t.Helper()
	endedC, releaseC := make(chan struct{}), make(chan struct{})
	var once sync.Once
	oldFault, oldAfter := backgroundCheckpointFault, afterBackgroundCheckpoint
	backgroundCheckpointFault = func() error { return fault }
	afterBackgroundCheckpoint = func() {
		first := false
		once.Do(func() { first = true })
		if first {
			close(endedC)
			<-releaseC
		}
	}
	var releaseOnce sync.Once
	release = func() { releaseOnce.Do(func() { close(releaseC) }) }
	t.Cleanup(func() {
		release()
		backgroundCheckpointFault, afterBackgroundCheckpoint = oldFault, oldAfter
	})
	return endedC, release
}

// writeUntil writes web-NN registrations until ended is closed, and
// returns how many it wrote.
func writeUntil(t *testing.T, s *Store, ended <-chan struct{}) int {
	t.Helper()
	for i := 0; ; i++ {
		select {
		case <-ended:
			return i
		default:
		}
		if i == 10000 {
			t.Fatal("no background checkpoint began in 10,000 writes")
		}
		if err := s.PutService(svc(fmt.Sprintf("web-%02d", i), 80)); err != nil {
			t.Fatal(err)
		}
	}
}

// A checkpoint writes local.db beside the writer: registrations are
// written and acknowledged while it runs, and a crash at any point of it
// keeps every acknowledged write, the later of two writes of an instance
// and a deletion included.
func TestStore_backgroundCheckpointKeepsEveryWrite(t *testing.T) {
	setWAL(t, 2<<10, time.Hour)
	ended, release := pauseBackgroundCheckpoint(t, nil)
	path := filepath.Join(t.TempDir(), FileName)
	s := openT(t, path)
	n := writeUntil(t, s, ended)

	// The checkpoint's transaction is done and it waits: writes go on.
	wrote := make(chan error, 1)
	go func() {
		err := s.PutService(svc("web-00", 9999)) // a change of one it took in
		if err == nil {
			_, err = s.DeleteService("web-01")
		}
		if err == nil {
			err = s.PutService(svc("late", 81))
		}
		wrote <- err
	}()
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("writes waited for the checkpoint")
	}
	check := func(c *Store, when string) {
		t.Helper()
		if got := len(serviceIDs(t, c)); got != n {
			t.Fatalf("%s: %d services, want %d", when, got, n)
		}
		if got, ok, err := c.Service("web-00"); err != nil || !ok || got.Instance.Port != 9999 {
			t.Fatalf("%s: web-00 %+v %v %v, want its later write (port 9999)", when, got.Instance, ok, err)
		}
		if _, ok, err := c.Service("web-01"); ok || err != nil {
			t.Fatalf("%s: web-01 deleted but there (%v)", when, err)
		}
		if _, ok, err := c.Service("late"); !ok || err != nil {
			t.Fatalf("%s: the write after the checkpoint began is lost (%v)", when, err)
		}
	}
	check(s, "while the checkpoint waits")
	check(openT(t, crashCopy(t, path)), "after a crash in the middle of the checkpoint")

	// Once it ended, the writes made meanwhile are in local.db too.
	release()
	waitInLocalDB(t, path, "late", "a write made during the checkpoint never reached local.db")
	check(openT(t, crashCopy(t, path)), "after a crash once the checkpoint ended")
}

// A background checkpoint that fails changes nothing: the log keeps every
// record, and the checkpoint at Close takes them all in.
func TestStore_failedBackgroundCheckpointKeepsTheLog(t *testing.T) {
	setWAL(t, 2<<10, time.Hour)
	ended, release := pauseBackgroundCheckpoint(t, errors.New("injected"))
	path := filepath.Join(t.TempDir(), FileName)
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	n := writeUntil(t, s, ended)
	release()
	if err := s.Close(); err != nil { // waits for the failed checkpoint
		t.Fatal(err)
	}
	if got := len(serviceIDs(t, openT(t, path))); got != n {
		t.Fatalf("after a failed checkpoint and a clean stop: %d services, want %d", got, n)
	}
}
