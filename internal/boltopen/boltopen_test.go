package boltopen

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

const recovery = "move it away and restart"

// makeFile writes a bbolt file of n records in two buckets (one nested),
// values of valueSize bytes, and returns its path.
func makeFile(t testing.TB, n, valueSize int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "test.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	for start := 0; start < n; start += 10000 {
		err := db.Update(func(tx *bolt.Tx) error {
			a, err := tx.CreateBucketIfNotExists([]byte("a"))
			if err != nil {
				return err
			}
			nested, err := a.CreateBucketIfNotExists([]byte("nested"))
			if err != nil {
				return err
			}
			for i := start; i < min(n, start+10000); i++ {
				v := make([]byte, valueSize)
				for j := range v {
					v[j] = byte(rng.UintN(256))
				}
				b := a
				if i%3 == 0 {
					b = nested
				}
				if err := b.Put(fmt.Appendf(nil, "key-%08d", i), v); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// currentMeta is the meta page bbolt would use.
func currentMeta(t testing.TB, path string) *meta {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m0, _ := readMeta(f, 0)
	m1, _ := readMeta(f, int64(m0.pageSize))
	if m1.valid() && m1.txid > m0.txid {
		return m1
	}
	return m0
}

func writeAt(t testing.TB, path string, b []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// requireDamaged asserts a clear refusal: ErrDamaged, one line naming the
// file and the recovery.
func requireDamaged(t *testing.T, path string, err error) {
	t.Helper()
	if !errors.Is(err, ErrDamaged) {
		t.Fatalf("Open = %v, want ErrDamaged", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, path) || !strings.Contains(msg, recovery) || strings.Contains(msg, "\n") {
		t.Fatalf("error %q: want one line naming %s and the recovery", msg, path)
	}
}

func TestOpen_sound(t *testing.T) {
	path := makeFile(t, 2000, 100)
	for _, c := range []Check{CheckFull, CheckWalk, CheckMeta} {
		for _, ro := range []bool{false, true} {
			db, err := Open(path, Options{Check: c, ReadOnly: ro, Recovery: recovery})
			if err != nil {
				t.Fatalf("Open(check %d, read-only %v): %v", c, ro, err)
			}
			err = db.View(func(tx *bolt.Tx) error {
				if v := tx.Bucket([]byte("a")).Get([]byte("key-00000001")); len(v) != 100 {
					return fmt.Errorf("value of key-00000001: %d bytes", len(v))
				}
				return nil
			})
			db.Close()
			if err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestOpen_creates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new.db")
	db, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := Open(filepath.Join(t.TempDir(), "missing.db"), Options{ReadOnly: true}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("read-only Open of a missing file = %v, want ErrNotExist", err)
	}
}

// TestOpen_truncated: a file cut short anywhere (a torn copy, a restore
// onto a full disk) is refused with a message, not bbolt's panic ("invalid
// freelist page") or a fault past the end of its mapping.
func TestOpen_truncated(t *testing.T) {
	src := makeFile(t, 3000, 200)
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	m := currentMeta(t, src)
	used := int64(m.pgid) * int64(m.pageSize)
	for _, n := range []int64{0, 1, 100, 4096, 8192, 3 * 4096, used / 2, used - 4096, used - 1} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "cut.db")
			if err := os.WriteFile(path, data[:n], 0o600); err != nil {
				t.Fatal(err)
			}
			for _, ro := range []bool{false, true} {
				db, err := Open(path, Options{Recovery: recovery, ReadOnly: ro})
				if err == nil {
					db.Close()
				}
				requireDamaged(t, path, err)
			}
		})
	}
}

// TestOpen_damagedRootPage: the root bucket's page overwritten, with zeros
// or garbage, is found.
func TestOpen_damagedRootPage(t *testing.T) {
	for _, fill := range []string{"zeros", "garbage", "ones"} {
		t.Run(fill, func(t *testing.T) {
			path := makeFile(t, 3000, 200)
			m := currentMeta(t, path)
			page := make([]byte, m.pageSize)
			switch fill {
			case "garbage":
				rng := rand.New(rand.NewPCG(3, 4))
				for i := range page {
					page[i] = byte(rng.UintN(256))
				}
			case "ones":
				copy(page, bytes.Repeat([]byte{0xff}, len(page)))
			}
			writeAt(t, path, page, int64(m.root)*int64(m.pageSize))
			db, err := Open(path, Options{Recovery: recovery})
			if err == nil {
				db.Close()
			}
			requireDamaged(t, path, err)
		})
	}
}

func TestOpen_damagedMetaPages(t *testing.T) {
	path := makeFile(t, 100, 10)
	m := currentMeta(t, path)
	// One meta page damaged: bbolt uses the other (the transaction before).
	writeAt(t, path, []byte{0xde, 0xad}, pageHeaderSize+20)
	db, err := Open(path, Options{Recovery: recovery})
	if err != nil {
		t.Fatalf("one meta page damaged: %v", err)
	}
	db.Close()
	writeAt(t, path, []byte{0xde, 0xad}, int64(m.pageSize)+pageHeaderSize+20)
	_, err = Open(path, Options{Recovery: recovery})
	requireDamaged(t, path, err)
	if !strings.Contains(err.Error(), "meta pages are invalid") {
		t.Errorf("error %q does not say what is wrong", err)
	}
}

// TestOpen_flippedBytes flips bytes all over a small file: Open returns
// (sound or damaged) and never panics or faults. The values of a file do
// not carry checksums in bbolt: a flip inside one is the caller's to find
// (localstate checks a CRC-32C of each record).
func TestOpen_flippedBytes(t *testing.T) {
	src := makeFile(t, 300, 50)
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	m := currentMeta(t, src)
	used := int(m.pgid) * int(m.pageSize)
	// BOLTOPEN_FLIPS=20000 BOLTOPEN_SEED=n run longer, elsewhere.
	tries, seed := 300, uint64(5)
	if s := os.Getenv("BOLTOPEN_FLIPS"); s != "" {
		fmt.Sscan(s, &tries)
	}
	if s := os.Getenv("BOLTOPEN_SEED"); s != "" {
		fmt.Sscan(s, &seed)
	}
	rng := rand.New(rand.NewPCG(seed, 6))
	dir := t.TempDir()
	refused := 0
	for i := range tries {
		b := bytes.Clone(data)
		// Page headers and element headers are where bbolt is fragile:
		// half the flips land in the first 64 bytes of a page.
		off := rng.IntN(used)
		if i%2 == 0 {
			off = off/int(m.pageSize)*int(m.pageSize) + rng.IntN(64)
		}
		b[off] ^= byte(1 << rng.IntN(8))
		path := filepath.Join(dir, fmt.Sprintf("flip-%d.db", i))
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		db, err := Open(path, Options{Recovery: recovery, Timeout: time.Second})
		switch {
		case err == nil:
			db.Close()
		case errors.Is(err, ErrDamaged):
			refused++
		default:
			t.Fatalf("flip at %d: %v", off, err)
		}
	}
	t.Logf("%d of %d single-bit flips refused at open", refused, tries)
}

// BenchmarkOpen measures what each check costs on a file of 100,000
// records of 300 bytes (a local state's records are about that size).
func BenchmarkOpen(b *testing.B) {
	path := makeFile(b, 100000, 300)
	fi, _ := os.Stat(path)
	b.Logf("file: %d MiB", fi.Size()>>20)
	for _, c := range []struct {
		name  string
		check Check
	}{{"meta", CheckMeta}, {"walk", CheckWalk}, {"full", CheckFull}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				db, err := Open(path, Options{Check: c.check})
				if err != nil {
					b.Fatal(err)
				}
				db.Close()
			}
		})
	}
}
