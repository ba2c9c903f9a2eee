package localstate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// The local state's write-ahead log: a batch of writes is one frame
// appended to local.wal and one fdatasync, acknowledged then; the records
// reach local.db later, many frames in one bbolt transaction (a
// checkpoint). A bbolt commit per batch cost two fdatasyncs and a page write
// per record, and was 40% of a registration's cost on the Raft leader
// (in-process: 3,500 writes/s with it, 5,600 without).
//
// Frames carry the generation of the log; local.db records the generation
// that is current, and a checkpoint moves it on in the same transaction that
// takes in the frames, so a frame is applied once: before the checkpoint
// it is replayed, after it it is of an older generation and ignored. The
// log is then written from its start again, over the older frames.

// WALName is the write-ahead log's file in the data dir.
const WALName = "local.wal"

const (
	walMagic  = 0x53434c57 // "SCLW"
	walHeader = 16         // magic, generation, payload length, CRC-32C
)

// walMaxFrame bounds a frame's payload, so that a damaged length field is
// not taken for a frame reaching far past the file. The writer never makes
// a longer one: replay would take it for a torn tail and drop acknowledged
// writes. A variable for the tests.
var walMaxFrame = 256 << 20

// walCheckpointBytes: past it the writer checkpoints (a replay at start
// reads at most about this much). A variable for the tests.
var walCheckpointBytes int64 = 4 << 20

const (
	walPut    = 1
	walDelete = 2
)

var keyWALGen = []byte("wal-generation")

// wal is the open log; only the store's writer goroutine uses it after
// Open.
type wal struct {
	f   *os.File
	gen uint32
	off int64 // where the next frame goes
}

// openWAL opens (creating) the log next to the local state file; a new
// file's directory entry is made durable.
func openWAL(path string) (*wal, error) {
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if errors.Is(statErr, os.ErrNotExist) {
		if err := syncDir(filepath.Dir(path)); err != nil {
			f.Close()
			return nil, err
		}
	}
	return &wal{f: f}, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	// equivalent mutant: a directory's fsync is seen only after the machine
	// crashes, which no test does.
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// walSize is the length of o's record in a frame: kind, bucket length,
// bucket, key length, key, value length, value.
func (o *op) walSize() int { return 1 + 1 + len(o.bucket) + 2 + len(o.key) + 4 + len(o.val) }

// frame encodes a batch as one frame of generation gen.
func walFrame(gen uint32, batch []*op) []byte {
	n := walHeader
	for _, o := range batch {
		// equivalent mutant: a capacity only saves a copy
		n += o.walSize()
	}
	buf := make([]byte, walHeader, n)
	for _, o := range batch {
		kind := byte(walPut)
		if o.val == nil {
			kind = walDelete
		}
		buf = append(buf, kind, byte(len(o.bucket)))
		buf = append(buf, o.bucket...)
		buf = binary.BigEndian.AppendUint16(buf, uint16(len(o.key)))
		buf = append(buf, o.key...)
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(o.val)))
		buf = append(buf, o.val...)
	}
	binary.BigEndian.PutUint32(buf[0:], walMagic)
	binary.BigEndian.PutUint32(buf[4:], gen)
	binary.BigEndian.PutUint32(buf[8:], uint32(len(buf)-walHeader))
	binary.BigEndian.PutUint32(buf[12:], walSum(buf[4:12], buf[walHeader:]))
	return buf
}

// walSum is a frame's checksum: over its generation and length, then its
// payload.
func walSum(genLen, payload []byte) uint32 {
	return crc32.Update(crc32.Checksum(genLen, castagnoli), castagnoli, payload)
}

// append writes a frame and waits for it to be on disk. A write error
// (nothing acknowledged; the next frame goes over what it left) is
// returned as the write's; an fdatasync error as a bare errno, which the
// store takes as leaving the disk in doubt.
func (w *wal) append(frame []byte) error {
	if _, err := w.f.WriteAt(frame, w.off); err != nil {
		return err
	}
	if err := fdatasync(w.f); err != nil {
		return err
	}
	w.off += int64(len(frame))
	return nil
}

func fdatasync(f *os.File) error {
	for {
		err := syscall.Fdatasync(int(f.Fd()))
		if err != syscall.EINTR {
			return err
		}
	}
}

// replay reads the frames of generation gen from the start of the log.
// The first frame that is not whole ends them: a frame cut by a crash was
// never acknowledged. A whole frame of that generation further on means one
// before it was damaged, not cut: that is an error, never a skipped write.
func (w *wal) replay(gen uint32) ([]*op, error) {
	data, err := io.ReadAll(io.NewSectionReader(w.f, 0, 1<<62))
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	data = data[:len(data):len(data)] // a frame never reaches into the buffer's spare capacity
	var ops []*op
	off := 0
	for {
		payload, ok := walParse(data[off:], gen)
		if !ok {
			break
		}
		batch, err := walOps(payload)
		if err != nil {
			return nil, fmt.Errorf("frame at offset %d: %w", off, err)
		}
		ops = append(ops, batch...)
		off += walHeader + len(payload)
	}
	// equivalent mutant: a whole frame is longer than its header (a batch holds a record)
	for at := off + 1; at+walHeader <= len(data); at++ {
		if binary.BigEndian.Uint32(data[at:]) != walMagic {
			continue
		}
		if _, ok := walParse(data[at:], gen); ok {
			return nil, fmt.Errorf("the frame at offset %d is damaged (a whole frame follows at offset %d)", off, at)
		}
	}
	return ops, nil
}

// walParse returns the payload of a whole frame of generation gen at the
// start of data.
func walParse(data []byte, gen uint32) ([]byte, bool) {
	// equivalent mutant: a whole frame is longer than its header (a batch holds a record)
	if len(data) < walHeader || binary.BigEndian.Uint32(data) != walMagic || binary.BigEndian.Uint32(data[4:]) != gen {
		return nil, false
	}
	n := binary.BigEndian.Uint32(data[8:])
	if int(n) > walMaxFrame || int(n) > len(data)-walHeader {
		return nil, false
	}
	if walSum(data[4:12], data[walHeader:walHeader+int(n)]) != binary.BigEndian.Uint32(data[12:]) {
		return nil, false
	}
	return data[walHeader : walHeader+int(n)], true
}

// walOps decodes a frame's payload, whose checksum held.
func walOps(p []byte) ([]*op, error) {
	var ops []*op
	bad := errors.New("a record does not decode")
	for len(p) > 0 {
		// equivalent mutant: a cut the next check refuses as well
		if len(p) < 2 {
			return nil, bad
		}
		kind, bl := p[0], int(p[1])
		p = p[2:]
		// equivalent mutant: a cut the next check refuses as well
		if len(p) < bl+2 {
			return nil, bad
		}
		o := &op{bucket: bytes.Clone(p[:bl])}
		p = p[bl:]
		kl := int(binary.BigEndian.Uint16(p))
		p = p[2:]
		if len(p) < kl+4 {
			return nil, bad
		}
		o.key = bytes.Clone(p[:kl])
		p = p[kl:]
		vl := int(binary.BigEndian.Uint32(p))
		p = p[4:]
		if len(p) < vl {
			return nil, bad
		}
		switch kind {
		case walPut:
			o.val = bytes.Clone(p[:vl])
		case walDelete:
		default:
			return nil, bad
		}
		p = p[vl:]
		ops = append(ops, o)
	}
	return ops, nil
}
