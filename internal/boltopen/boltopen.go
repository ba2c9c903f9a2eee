// Package boltopen opens bbolt files that may be damaged (cut short by a
// full disk or a torn copy, overwritten, bit-flipped) so that the damage is
// an error naming the file and what the operator does about it, never a
// panic or a fault of the process.
//
// bbolt trusts its file: it maps it and follows page ids without bounds
// checks, so a file cut short makes it read past the end of the mapping
// (SIGBUS, which the Go runtime turns into a fatal error no recover sees),
// and a damaged page makes it panic ("invalid freelist page", "invalid
// page type"). Open therefore
//
//  1. reads the two meta pages itself and checks their checksums and that
//     the file holds every page the newer valid one counts;
//  2. opens the file with bbolt with faults turned into panics
//     (debug.SetPanicOnFault) and recovers any panic;
//  3. walks every bucket, key and value the same way, so that every page
//     the tree reaches is read once on this goroutine;
//  4. runs bbolt's own consistency check (Tx.Check: pages reachable,
//     freed, referenced once, keys in order), which runs on a goroutine of
//     its own and is therefore only run on a tree step 3 read safely.
package boltopen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"runtime/debug"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrDamaged is wrapped by every error Open returns for a file that is not
// a sound bbolt file.
var ErrDamaged = errors.New("damaged bolt file")

// DamagedError says which file is damaged, how, and what to do.
type DamagedError struct {
	Path   string
	Reason string
	// Recovery is what the operator does, from Options.Recovery.
	Recovery string
}

func (e *DamagedError) Error() string {
	msg := fmt.Sprintf("%s is damaged (%s)", e.Path, e.Reason)
	if e.Recovery != "" {
		msg += ": " + e.Recovery
	}
	return msg
}

func (e *DamagedError) Is(target error) bool { return target == ErrDamaged }

// Check is how much of the file Open reads before it returns.
type Check int

const (
	// CheckFull walks the whole tree and runs bbolt's consistency check:
	// about 125 ms for a file of 100,000 records of 300 bytes (75 MiB;
	// BenchmarkOpen, 2 busy cores), so about 1 ms per 1,000 records.
	CheckFull Check = iota
	// CheckWalk walks the whole tree (every page read once) without
	// bbolt's check of the freelist, page references and key order: about
	// 80 ms for the same file.
	CheckWalk
	// CheckMeta checks only the meta pages and the file's length (0.1 ms
	// whatever the size): what catches a file cut short. Damage deeper in
	// the file may then still panic bbolt later, outside Open.
	CheckMeta
)

// Options configure Open.
type Options struct {
	// ReadOnly opens the file read-only (shared lock); it must exist.
	ReadOnly bool
	// Timeout is how long to wait for another process's lock on the file;
	// default 5s.
	Timeout time.Duration
	// Mode is the permission of a file Open creates; default 0600.
	Mode os.FileMode
	// Check is how much is checked; default CheckFull.
	Check Check
	// Recovery is what the operator does about a damaged file, appended to
	// the error ("move it away and restart: ...").
	Recovery string
}

// Open opens (or, unless read-only, creates) the bbolt file at path. A file
// that exists but is empty, cut short, or damaged where the check reaches
// returns an error wrapping ErrDamaged (a *DamagedError); nothing of bbolt
// panics out of Open.
func Open(path string, opts Options) (db *bolt.DB, err error) {
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.Mode == 0 {
		opts.Mode = 0o600
	}
	damaged := func(format string, args ...any) error {
		return &DamagedError{Path: path, Reason: fmt.Sprintf(format, args...), Recovery: opts.Recovery}
	}
	f, err := os.Open(path)
	switch {
	case errors.Is(err, os.ErrNotExist) && !opts.ReadOnly:
		// bbolt creates and initialises it.
	case err != nil:
		return nil, err
	default:
		reason, err := checkMeta(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		if reason != "" {
			return nil, damaged("%s", reason)
		}
	}

	err = guard(func() error {
		var err error
		db, err = bolt.Open(path, opts.Mode, &bolt.Options{
			Timeout: opts.Timeout, ReadOnly: opts.ReadOnly,
			// Read the freelist here, where a fault is caught, rather than
			// first in Check's goroutine.
			PreLoadFreelist: true,
		})
		return err
	})
	var pe *panicError
	if errors.As(err, &pe) {
		return nil, damaged("bbolt could not open it: %v", pe.v)
	}
	if err != nil {
		return nil, err
	}
	if opts.Check == CheckMeta {
		return db, nil
	}
	if err := check(db, path, opts.Check == CheckFull); err != nil {
		db.Close()
		var de *DamagedError
		if errors.As(err, &de) {
			de.Recovery = opts.Recovery
		}
		return nil, err
	}
	return db, nil
}

// panicError is a panic (or a memory fault) recovered from bbolt.
type panicError struct{ v any }

func (e *panicError) Error() string { return fmt.Sprint(e.v) }

// guard runs f with memory faults turned into panics, and any panic into
// an error. bbolt reads its file through a mapping: a page past the end of
// the file is a SIGBUS, fatal unless SetPanicOnFault is on for the
// goroutine that reads.
func guard(f func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if v := recover(); v != nil {
			err = &panicError{v}
		}
	}()
	return f()
}

// checkMeta reads the meta pages as bbolt would and reports, as a reason,
// what makes the file unusable: both meta pages invalid, or pages missing
// past the end of the file. It reads with plain reads, no mapping.
func checkMeta(f *os.File) (reason string, err error) {
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	size := fi.Size()
	if size == 0 {
		return "the file is empty", nil
	}
	// Meta page 0 says the page size; meta page 1 is read at it, or at the
	// default page size when page 0 is bad (as bbolt does).
	m0, err0 := readMeta(f, 0)
	if err0 != nil {
		return "", err0
	}
	off1 := int64(os.Getpagesize())
	if m0.valid() {
		off1 = int64(m0.pageSize)
	}
	m1, err1 := readMeta(f, off1)
	if err1 != nil {
		return "", err1
	}
	var m *meta
	switch {
	case m0.valid() && m1.valid():
		m = m0
		if m1.txid > m0.txid {
			m = m1
		}
	case m0.valid():
		m = m0
	case m1.valid():
		m = m1
	case !m0.short && m0.magic != magic && (m1.short || m1.magic != magic):
		return "not a bolt file: no meta page has bbolt's magic number", nil
	case size < 2*off1:
		return fmt.Sprintf("cut short: %d bytes, less than its two meta pages", size), nil
	default:
		return fmt.Sprintf("both meta pages are invalid (%s; %s)", m0.why(), m1.why()), nil
	}
	ps := int64(m.pageSize)
	switch {
	case m.pgid < 3 || m.pgid > uint64(size) || int64(m.pgid) > (1<<62)/ps:
		return fmt.Sprintf("meta page at transaction %d counts %d pages", m.txid, m.pgid), nil
	case int64(m.pgid)*ps > size:
		return fmt.Sprintf("cut short: %d bytes, but its pages reach %d", size, int64(m.pgid)*ps), nil
	case m.root < 2 || m.root >= m.pgid:
		return fmt.Sprintf("root page %d outside the file's %d pages", m.root, m.pgid), nil
	case m.freelist != noFreelist && (m.freelist < 2 || m.freelist >= m.pgid):
		return fmt.Sprintf("freelist page %d outside the file's %d pages", m.freelist, m.pgid), nil
	}
	// bbolt asserts (panics) that a page it reads names itself and has a
	// known type; its consistency check reads these three on a goroutine
	// where no recover reaches.
	heads := []struct {
		id    uint64
		flags uint16
		what  string
	}{{0, metaPageFlag, "meta page 0"}, {1, metaPageFlag, "meta page 1"}}
	if m.freelist != noFreelist {
		heads = append(heads, struct {
			id    uint64
			flags uint16
			what  string
		}{m.freelist, freelistPageFlag, "freelist page"})
	}
	for _, h := range heads {
		id, flags, overflow, err := readHeader(f, int64(h.id)*ps)
		if err != nil {
			return "", err
		}
		if id != h.id || flags != h.flags {
			return fmt.Sprintf("%s %d: its header says page %d, flags %#x", h.what, h.id, id, flags), nil
		}
		if h.id+uint64(overflow) >= m.pgid {
			return fmt.Sprintf("%s %d: %d overflow pages run past the file's %d pages", h.what, h.id, overflow, m.pgid), nil
		}
	}
	return "", nil
}

func readHeader(f *os.File, off int64) (id uint64, flags uint16, overflow uint32, err error) {
	var b [pageHeaderSize]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		return 0, 0, 0, err
	}
	ne := binary.NativeEndian
	return ne.Uint64(b[0:]), ne.Uint16(b[8:]), ne.Uint32(b[12:]), nil
}

// Layout of a bbolt meta page (format version 2, bbolt's
// internal/common.Meta after a 16-byte page header), in the machine's byte
// order as bbolt writes it.
const (
	pageHeaderSize = 16
	metaSize       = 64 // through the checksum
	metaSumOffset  = 56
	magic          = 0xED0CDAED
	version        = 2
	noFreelist     = ^uint64(0)

	metaPageFlag     = 0x04
	freelistPageFlag = 0x10
)

type meta struct {
	magic, version, pageSize uint32
	root, freelist, pgid     uint64
	txid, checksum, sum      uint64
	short                    bool
}

func readMeta(f *os.File, off int64) (*meta, error) {
	buf := make([]byte, pageHeaderSize+metaSize)
	n, err := f.ReadAt(buf, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if n < len(buf) {
		return &meta{short: true}, nil
	}
	b := buf[pageHeaderSize:]
	le := binary.NativeEndian
	h := fnv.New64a()
	h.Write(b[:metaSumOffset])
	return &meta{
		magic: le.Uint32(b[0:]), version: le.Uint32(b[4:]), pageSize: le.Uint32(b[8:]),
		root: le.Uint64(b[16:]), freelist: le.Uint64(b[32:]), pgid: le.Uint64(b[40:]),
		txid: le.Uint64(b[48:]), checksum: le.Uint64(b[56:]), sum: h.Sum64(),
	}, nil
}

func (m *meta) valid() bool {
	return !m.short && m.magic == magic && m.version == version && m.checksum == m.sum &&
		m.pageSize >= 512 && m.pageSize <= 1<<20 && m.pageSize&(m.pageSize-1) == 0
}

func (m *meta) why() string {
	switch {
	case m.short:
		return "missing"
	case m.magic != magic:
		return "not a bolt meta page"
	case m.version != version:
		return fmt.Sprintf("version %d", m.version)
	case m.checksum != m.sum:
		return "checksum mismatch"
	}
	return fmt.Sprintf("page size %d", m.pageSize)
}

// check walks the tree in the file with plain, bounds-checked reads, then,
// with full, runs bbolt's consistency check on the tree found sound.
func check(db *bolt.DB, path string, full bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	reason, err := walkFile(f)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if reason != "" {
		return &DamagedError{Path: path, Reason: reason}
	}
	if !full {
		return nil
	}
	return db.View(func(tx *bolt.Tx) error {
		var errs []string
		n := 0
		// Keys and values are not printed: lengths only, read from no page.
		for err := range tx.Check(bolt.WithKVStringer(lengthStringer{})) {
			// Drain the channel: Check's goroutine ends only then.
			if n++; n <= 3 {
				errs = append(errs, err.Error())
			}
		}
		if n == 0 {
			return nil
		}
		msg := strings.Join(errs, "; ")
		if n > 3 {
			msg += fmt.Sprintf("; and %d more", n-3)
		}
		return &DamagedError{Path: path, Reason: "consistency check: " + msg}
	})
}

type lengthStringer struct{}

func (lengthStringer) KeyToString(k []byte) string   { return fmt.Sprintf("<%d bytes>", len(k)) }
func (lengthStringer) ValueToString(v []byte) string { return fmt.Sprintf("<%d bytes>", len(v)) }
