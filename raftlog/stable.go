package raftlog

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// stable keeps Raft's few stable keys (current term, last vote) in a file
// of two fixed slots, written in turn and in place: a slot is
//
//	u32 CRC-32C of the rest | u64 sequence | u32 length | JSON
//
// and the valid slot with the higher sequence is the current one. A crash
// while one slot is written leaves the other; writing in place needs no new
// disk blocks, so an election still works on a full disk. Changes happen
// once per election, not per write.
type stable struct {
	mu   sync.Mutex
	path string
	f    *os.File
	seq  uint64
	kv   map[string][]byte
}

const (
	stableName = "stable"
	slotSize   = 4096
)

func (st *stable) open(dir string) error {
	st.path = filepath.Join(dir, stableName)
	st.kv = map[string][]byte{}
	f, err := os.OpenFile(st.path, os.O_RDWR, 0o600)
	if errors.Is(err, os.ErrNotExist) {
		return st.create()
	}
	if err != nil {
		return fmt.Errorf("open raft stable store: %w", err)
	}
	st.f = f
	buf := make([]byte, 2*slotSize)
	if _, err := f.ReadAt(buf, 0); err != nil {
		f.Close()
		return fmt.Errorf("raft stable store %s (current term and vote) is cut short (%v): "+
			"stop this server, move its data dir aside and start it with an empty one: it rejoins as a non-voter and is caught up from the other servers", st.path, err)
	}
	found := false
	for i := 0; i < 2; i++ {
		seq, kv, ok := decodeSlot(buf[i*slotSize : (i+1)*slotSize])
		if ok && (!found || seq > st.seq) {
			st.seq, st.kv, found = seq, kv, true
		}
	}
	if !found {
		f.Close()
		return fmt.Errorf("raft stable store %s (current term and vote) is damaged: this server cannot know whom it voted for: "+
			"stop it, move its data dir aside and start it with an empty one: it rejoins as a non-voter and is caught up from the other servers", st.path)
	}
	return nil
}

// create makes the file with both slots, the first one valid and empty.
func (st *stable) create() error {
	tmp := st.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create raft stable store: %w", err)
	}
	slot, err := encodeSlot(1, st.kv)
	if err == nil {
		buf := make([]byte, 2*slotSize)
		copy(buf, slot)
		_, err = f.WriteAt(buf, 0)
	}
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = os.Rename(tmp, st.path)
	}
	if err == nil {
		err = syncDir(filepath.Dir(st.path))
	}
	if err != nil {
		f.Close()
		return fmt.Errorf("create raft stable store %s: %w", st.path, err)
	}
	st.f, st.seq = f, 1
	return nil
}

func encodeSlot(seq uint64, kv map[string][]byte) ([]byte, error) {
	body, err := json.Marshal(kv)
	if err != nil {
		return nil, err
	}
	if 16+len(body) > slotSize {
		return nil, fmt.Errorf("stable keys take %d bytes, more than a slot holds", len(body))
	}
	b := make([]byte, 4, slotSize)
	b = binary.LittleEndian.AppendUint64(b, seq)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(body)))
	b = append(b, body...)
	binary.LittleEndian.PutUint32(b, crc32.Checksum(b[4:], castagnoli))
	return b[:slotSize], nil
}

func decodeSlot(b []byte) (uint64, map[string][]byte, bool) {
	n := int(binary.LittleEndian.Uint32(b[12:]))
	if n > slotSize-16 || crc32.Checksum(b[4:16+n], castagnoli) != binary.LittleEndian.Uint32(b) {
		return 0, nil, false
	}
	kv := map[string][]byte{}
	if err := json.Unmarshal(b[16:16+n], &kv); err != nil {
		return 0, nil, false
	}
	return binary.LittleEndian.Uint64(b[4:]), kv, true
}

// Set implements raft.StableStore.
func (s *Store) Set(key, val []byte) error {
	st := &s.stable
	st.mu.Lock()
	defer st.mu.Unlock()
	next := make(map[string][]byte, len(st.kv)+1)
	for k, v := range st.kv {
		next[k] = v
	}
	next[string(key)] = append([]byte(nil), val...)
	slot, err := encodeSlot(st.seq+1, next)
	if err != nil {
		return fmt.Errorf("encode raft stable store: %w", err)
	}
	// Slot (seq+1)%2 is the older one: the current one stays intact until
	// the new one is on disk.
	if _, err := st.f.WriteAt(slot, int64((st.seq+1)%2)*slotSize); err != nil {
		return s.fatal(fmt.Errorf("save raft stable store %s: %w", st.path, err))
	}
	if err := syscall.Fdatasync(int(st.f.Fd())); err != nil {
		// Raft cannot go on without its term and vote on disk.
		return s.fatal(fmt.Errorf("fdatasync raft stable store %s: %w", st.path, err))
	}
	st.seq++
	st.kv = next
	return nil
}

// Get implements raft.StableStore: nil for a key never set.
func (s *Store) Get(key []byte) ([]byte, error) {
	st := &s.stable
	st.mu.Lock()
	defer st.mu.Unlock()
	return append([]byte(nil), st.kv[string(key)]...), nil
}

// SetUint64 implements raft.StableStore.
func (s *Store) SetUint64(key []byte, val uint64) error {
	return s.Set(key, binary.BigEndian.AppendUint64(nil, val))
}

// GetUint64 implements raft.StableStore: 0 for a key never set.
func (s *Store) GetUint64(key []byte) (uint64, error) {
	v, _ := s.Get(key)
	if len(v) == 0 {
		return 0, nil
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("raft stable store %s: %q is not a number", s.stable.path, key)
	}
	return binary.BigEndian.Uint64(v), nil
}

func (st *stable) close() error {
	if st.f == nil {
		return nil
	}
	err := st.f.Close()
	st.f = nil
	return err
}
