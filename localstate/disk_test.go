package localstate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/sidecarhq/sidecar/internal/disktest"
)

// Damaged files, full and read-only disks, on real filesystems the tests
// make: a file in t.TempDir cut short or overwritten, a tmpfs of 1 MiB
// filled up, an ext4 image that turns read-only (root only).

// storeWith opens a store at path holding n services and closes it.
func storeWith(t *testing.T, path string, n int) {
	t.Helper()
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range n {
		if err := s.PutService(svc(fmt.Sprintf("web-%d", i), 80+i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutCandidacy(Candidacy{Election: "db", Candidate: "a"}); err != nil {
		t.Fatal(err)
	}
}

// boltMeta reads what the newer meta page of a bbolt file says: its root
// page, its page count and page size (bbolt's format, version 2).
func boltMeta(t *testing.T, path string) (root, pages, pageSize int64) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ne := binary.NativeEndian
	ps := int64(ne.Uint32(data[16+8:]))
	var txid uint64
	for _, off := range []int64{0, ps} {
		m := data[off+16:]
		if tx := ne.Uint64(m[48:]); tx >= txid {
			txid, root, pages = tx, int64(ne.Uint64(m[16:])), int64(ne.Uint64(m[40:]))
		}
	}
	return root, pages, ps
}

// requireOneLine asserts an error on one line naming the file and what to
// do about it.
func requireOneLine(t *testing.T, err error, kind error, path string, want ...string) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("err = %v, want %v", err, kind)
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") || !strings.Contains(msg, path) {
		t.Fatalf("error %q: want one line naming %s", msg, path)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Fatalf("error %q does not say %q", msg, w)
		}
	}
}

// TestStore_Open_truncated: local.db cut short (a torn copy, a disk that
// filled during a restore) stops Open with one line naming the file and
// the recovery; bbolt v1.3.5 panicked here ("invalid freelist page").
func TestStore_Open_truncated(t *testing.T) {
	src := filepath.Join(t.TempDir(), FileName)
	storeWith(t, src, 50)
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	_, pages, ps := boltMeta(t, src)
	used := pages * ps
	for _, n := range []int64{0, 100, ps, 2*ps + 10, used / 2, used - ps, used - 1} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), FileName)
			if err := os.WriteFile(path, data[:n], 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := Open(path)
			if err == nil {
				s.Close()
			}
			requireOneLine(t, err, ErrDamaged, path, "is damaged", "move "+path+" away")
		})
	}
}

// TestStore_Open_damagedRootPage: the root page overwritten. raft-boltdb
// on bbolt v1.3.5 answered "incompatible value", naming no file.
func TestStore_Open_damagedRootPage(t *testing.T) {
	for _, fill := range []byte{0x00, 0xff, 0x5a} {
		t.Run(fmt.Sprintf("%#x", fill), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), FileName)
			storeWith(t, path, 50)
			root, _, ps := boltMeta(t, path)
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt(bytes.Repeat([]byte{fill}, int(ps)), root*ps)
			f.Close()
			s, err := Open(path)
			if err == nil {
				s.Close()
			}
			requireOneLine(t, err, ErrDamaged, path, "is damaged", "move "+path+" away")
		})
	}
}

// flipInFile flips one byte of the JSON of record id in the file, behind
// bbolt's back (it maps the file, so an open store sees it).
func flipInFile(t *testing.T, path, id string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	marker := []byte(`"id":"` + id + `"`)
	i := bytes.Index(data, marker)
	if i < 0 || bytes.Index(data[i+1:], marker) >= 0 {
		t.Fatalf("record %s not found once in the file", id)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// "web-7" becomes "web-6": still valid JSON, only the checksum tells.
	at := int64(i + len(marker) - 2)
	if _, err := f.WriteAt([]byte{data[at] ^ 0x01}, at); err != nil {
		t.Fatal(err)
	}
}

// TestStore_flippedRecord_whileOpen: a record damaged after Open is found
// by every read (Service, Services and anti-entropy's), never read as
// "not stored" (the agent would deregister it); the store takes no more
// writes and Damaged is closed.
func TestStore_flippedRecord_whileOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	storeWith(t, path, 10)
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	flipInFile(t, path, "web-7")

	if _, ok, err := s.Service("web-3"); err != nil || !ok {
		t.Fatalf("an intact record: %v %v", ok, err)
	}
	_, ok, err := s.Service("web-7")
	requireOneLine(t, err, ErrDamaged, path, `services/"web-7"`, "checksum mismatch", "move "+path+" away")
	if ok {
		t.Fatal("a damaged record reported as stored")
	}
	if _, err := s.Services(); !errors.Is(err, ErrDamaged) {
		t.Fatalf("Services() = %v, want ErrDamaged", err)
	}
	select {
	case <-s.Damaged():
	default:
		t.Fatal("Damaged not closed")
	}
	if err := s.PutService(svc("new", 1)); !errors.Is(err, ErrDamaged) {
		t.Fatalf("write after damage: %v, want ErrDamaged", err)
	}
	s.Close()
	_, err = Open(path)
	requireOneLine(t, err, ErrDamaged, path, `services/"web-7"`, "checksum mismatch")
}

// TestStore_writeError_classified: which failures leave the store taking
// writes (nothing reached the file) and which stop it (EIO, a failed fsync:
// what reached the disk is not known).
func TestStore_writeError_classified(t *testing.T) {
	s := &Store{path: "/var/lib/sidecar/local.db"}
	for _, tc := range []struct {
		name    string
		err     error
		kind    error
		inDoubt bool
	}{
		{"write ENOSPC", &os.PathError{Op: "write", Path: s.path, Err: syscall.ENOSPC}, ErrDiskFull, false},
		{"write EDQUOT", &os.PathError{Op: "write", Path: s.path, Err: syscall.EDQUOT}, ErrDiskFull, false},
		{"grow ENOSPC", errors.New("file resize error: truncate /x: no space left on device"), ErrDiskFull, false},
		{"write EROFS", &os.PathError{Op: "write", Path: s.path, Err: syscall.EROFS}, ErrReadOnly, false},
		{"write EIO", &os.PathError{Op: "write", Path: s.path, Err: syscall.EIO}, ErrDiskFailed, true},
		{"fdatasync EIO", syscall.EIO, ErrDiskFailed, true},
		{"fdatasync ENOSPC", syscall.ENOSPC, ErrDiskFull, true},
		{"grow sync", errors.New("file sync error: input/output error"), ErrDiskFailed, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err, inDoubt := s.writeError(s.path, tc.err)
			if !errors.Is(err, tc.kind) || inDoubt != tc.inDoubt || !errors.Is(err, tc.err) {
				t.Fatalf("writeError(%v) = %v, in doubt %v; want %v, in doubt %v", tc.err, err, inDoubt, tc.kind, tc.inDoubt)
			}
			if !strings.Contains(err.Error(), s.path) || !strings.Contains(err.Error(), "the disk at") {
				t.Fatalf("%q does not name the file and its disk", err)
			}
		})
	}
}

// TestStore_diskFull: on a full disk a write is refused with an error
// naming the disk, changes nothing, and writes resume by themselves once
// space is freed.
func TestStore_diskFull(t *testing.T) {
	dir := disktest.Tmpfs(t, "1m")
	path := filepath.Join(dir, FileName)
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.PutService(svc("before", 1)); err != nil {
		t.Fatal(err)
	}
	filler := disktest.Fill(t, dir)

	// Large enough to need pages the file does not have yet.
	big := svc("big", 2)
	big.Instance.Meta = map[string]string{"blob": strings.Repeat("x", 64<<10)}
	err = s.PutService(big)
	requireOneLine(t, err, ErrDiskFull, path, "(writing "+WALName+")", "the disk at "+dir+" is full", "nothing was changed")
	if _, ok, err := s.Service("big"); ok || err != nil || s.Len() != 1 {
		t.Fatalf("a refused write is visible: %v %v, %d stored", ok, err, s.Len())
	}
	if _, ok, err := s.Service("before"); !ok || err != nil {
		t.Fatalf("reads on a full disk: %v %v", ok, err)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := s.PutService(big); err != nil {
		t.Fatalf("write once space is freed: %v", err)
	}
	s.Close()
	s, err = Open(path)
	if err != nil {
		t.Fatalf("reopen after a full disk: %v", err)
	}
	defer s.Close()
	if got, err := s.Services(); err != nil || len(got) != 2 {
		t.Fatalf("after reopen: %d services, %v", len(got), err)
	}
}

// TestStore_readOnlyAtOpen: a data dir on a read-only disk stops Open with
// one line naming the disk.
func TestStore_readOnlyAtOpen(t *testing.T) {
	dir := disktest.Tmpfs(t, "1m")
	path := filepath.Join(dir, FileName)
	storeWith(t, path, 3)
	if out, err := exec.Command("mount", "-o", "remount,ro", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot remount read-only (%v: %s)", err, out)
	}
	s, err := Open(path)
	if err == nil {
		s.Close()
	}
	requireOneLine(t, err, ErrReadOnly, path, "the disk at "+dir+" is read-only")
}

// TestStore_readOnlyWhileOpen: the disk turns read-only under an open
// store (ext4 with errors=remount-ro meeting an error; a plain remount
// refuses while the file is open for writing): writes are refused with a
// clear error, reads go on, nothing panics.
func TestStore_readOnlyWhileOpen(t *testing.T) {
	vol := disktest.NewExt4(t, "8M")
	dir := vol.Dir

	path := filepath.Join(dir, FileName)
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.PutService(svc("before", 1)); err != nil {
		t.Fatal(err)
	}
	vol.Fail(t)
	err = s.PutService(svc("after", 2))
	requireOneLine(t, err, ErrReadOnly, path, "the disk at "+dir+" is read-only")
	if _, ok, err := s.Service("after"); ok || err != nil {
		t.Fatalf("a refused write is visible: %v %v", ok, err)
	}
	if _, ok, err := s.Service("before"); !ok || err != nil {
		t.Fatalf("reads on a read-only disk: %v %v", ok, err)
	}
	if _, err := s.DeleteService("before"); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("delete on a read-only disk: %v", err)
	}
}

// The disk named in an error is the mount point holding the data dir, not
// the data dir itself: what an operator frees or fixes.
func TestMountPoint(t *testing.T) {
	dir := disktest.Tmpfs(t, "1m")
	sub := filepath.Join(dir, "a", "b")
	if err := os.MkdirAll(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	if got := mountPoint(sub); got != dir {
		t.Fatalf("mountPoint(%s) = %s, want %s", sub, got, dir)
	}
	if got := mountPoint(filepath.Join(sub, "missing")); got != filepath.Join(sub, "missing") {
		t.Fatalf("mountPoint of a path that does not exist = %s, want the path itself", got)
	}
}
