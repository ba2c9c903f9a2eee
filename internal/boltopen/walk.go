package boltopen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// walkFile reads every page the tree of a bbolt file reaches (branch and
// leaf pages, their overflow, nested and inline buckets) with plain reads,
// checking what bbolt would follow without a check: that each page names
// itself, has a known type and lies below the high water mark, that every
// element, key and value lies inside its page, and that no page is reached
// twice. It reports the first fault as a reason. Once it passes, bbolt's
// own walks (cursors, Tx.Check) stay inside the file.
func walkFile(f *os.File) (reason string, err error) {
	reason, err = checkMeta(f)
	if reason != "" || err != nil {
		return reason, err
	}
	m0, err := readMeta(f, 0)
	if err != nil {
		return "", err
	}
	off1 := int64(os.Getpagesize())
	if m0.valid() {
		off1 = int64(m0.pageSize)
	}
	m1, err := readMeta(f, off1)
	if err != nil {
		return "", err
	}
	m := m0
	if !m0.valid() || (m1.valid() && m1.txid > m0.txid) {
		m = m1
	}
	w := &walker{f: f, ps: int64(m.pageSize), hwm: m.pgid, seen: make([]bool, m.pgid)}
	err = w.tree(m.root, 0)
	var bad *badPage
	if errors.As(err, &bad) {
		return bad.Error(), nil
	}
	return "", err
}

type walker struct {
	f    *os.File
	ps   int64
	hwm  uint64
	seen []bool // by page id
}

type badPage struct{ msg string }

func (e *badPage) Error() string { return e.msg }

func badf(format string, args ...any) error { return &badPage{fmt.Sprintf(format, args...)} }

const (
	branchPageFlag = 0x01
	leafPageFlag   = 0x02
	bucketLeafFlag = 0x01
	elementSize    = 16 // branch and leaf elements alike
	bucketHeader   = 16 // a bucket's value: root page id, sequence
	maxDepth       = 64
)

var ne = binary.NativeEndian

// page reads page id with its overflow.
func (w *walker) page(id uint64) ([]byte, error) {
	if id < 2 || id >= w.hwm {
		return nil, badf("page %d: outside the file's %d pages", id, w.hwm)
	}
	read := func(b []byte, off int64) error {
		_, err := w.f.ReadAt(b, off)
		if errors.Is(err, io.EOF) {
			return badf("page %d: past the end of the file", id)
		}
		return err
	}
	buf := make([]byte, w.ps)
	if err := read(buf, int64(id)*w.ps); err != nil {
		return nil, err
	}
	if got := ne.Uint64(buf); got != id {
		return nil, badf("page %d: its header says page %d", id, got)
	}
	overflow := uint64(ne.Uint32(buf[12:]))
	if id+overflow >= w.hwm {
		return nil, badf("page %d: %d overflow pages run past the file's %d pages", id, overflow, w.hwm)
	}
	for i := id; i <= id+overflow; i++ {
		if w.seen[i] {
			return nil, badf("page %d: reached twice", i)
		}
		w.seen[i] = true
	}
	if overflow > 0 {
		buf = append(buf, make([]byte, int64(overflow)*w.ps)...)
		if err := read(buf[w.ps:], int64(id+1)*w.ps); err != nil {
			return nil, err
		}
	}
	return buf, nil
}

// tree checks the b-tree rooted at page id.
func (w *walker) tree(id uint64, depth int) error {
	if depth > maxDepth {
		return badf("page %d: tree deeper than %d", id, maxDepth)
	}
	p, err := w.page(id)
	if err != nil {
		return err
	}
	return w.elements(p, id, depth)
}

// elements checks the elements of page p (id 0: an inline bucket's page).
func (w *walker) elements(p []byte, id uint64, depth int) error {
	flags, count := ne.Uint16(p[8:]), int(ne.Uint16(p[10:]))
	switch {
	case flags != branchPageFlag && flags != leafPageFlag:
		return badf("page %d: not a branch or leaf page (flags %#x)", id, flags)
	case flags == branchPageFlag && count == 0:
		// bbolt's cursor reads a first element of every branch page.
		return badf("page %d: branch page without elements", id)
	case pageHeaderSize+count*elementSize > len(p):
		return badf("page %d: %d elements do not fit in it", id, count)
	}
	for i := range count {
		off := pageHeaderSize + i*elementSize
		e := p[off : off+elementSize]
		switch flags {
		case branchPageFlag:
			pos, ksize := int(ne.Uint32(e)), int(ne.Uint32(e[4:]))
			if ksize == 0 || off+pos+ksize > len(p) || off+pos+ksize < off {
				return badf("page %d: branch element %d points outside the page", id, i)
			}
			if err := w.tree(ne.Uint64(e[8:]), depth+1); err != nil {
				return err
			}
		case leafPageFlag:
			eflags := ne.Uint32(e)
			pos, ksize, vsize := int(ne.Uint32(e[4:])), int(ne.Uint32(e[8:])), int(ne.Uint32(e[12:]))
			start, end := off+pos, off+pos+ksize+vsize
			if ksize == 0 || end > len(p) || end < start || start < off {
				return badf("page %d: leaf element %d points outside the page", id, i)
			}
			if eflags&bucketLeafFlag == 0 {
				continue
			}
			v := p[start+ksize : end]
			if len(v) < bucketHeader {
				return badf("page %d: bucket element %d is %d bytes", id, i, len(v))
			}
			if root := ne.Uint64(v); root != 0 {
				if err := w.tree(root, depth+1); err != nil {
					return err
				}
				continue
			}
			inline := v[bucketHeader:]
			if len(inline) < pageHeaderSize || ne.Uint16(inline[8:]) != leafPageFlag {
				return badf("page %d: inline bucket of element %d is not a leaf page", id, i)
			}
			if err := w.elements(inline, id, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}
