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
)

// stable keeps Raft's few stable keys (current term, last vote) in one
// small file, replaced whole on each change: written to a temporary file,
// fsynced, renamed over the old one, and the directory fsynced. Changes
// happen once per election, not per write.
type stable struct {
	mu   sync.Mutex
	path string
	kv   map[string][]byte
}

const stableName = "stable"

func (st *stable) open(dir string) error {
	st.path = filepath.Join(dir, stableName)
	st.kv = map[string][]byte{}
	data, err := os.ReadFile(st.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read raft stable store: %w", err)
	}
	if len(data) < 4 || crc32.Checksum(data[4:], castagnoli) != binary.LittleEndian.Uint32(data) {
		return fmt.Errorf("raft stable store %s (current term and vote) is damaged: this server cannot know whom it voted for: "+
			"stop it, move its data dir aside and start it with an empty one, and it rejoins as a non-voter and is caught up from the other servers", st.path)
	}
	if err := json.Unmarshal(data[4:], &st.kv); err != nil {
		return fmt.Errorf("decode raft stable store %s: %w", st.path, err)
	}
	return nil
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
	body, err := json.Marshal(next)
	if err != nil {
		return fmt.Errorf("encode raft stable store: %w", err)
	}
	data := binary.LittleEndian.AppendUint32(nil, crc32.Checksum(body, castagnoli))
	data = append(data, body...)
	if err := writeFileSync(st.path, data); err != nil {
		// Raft cannot go on without its term and vote on disk.
		return s.fatal(fmt.Errorf("save raft stable store %s: %w", st.path, err))
	}
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

// writeFileSync replaces path with data so that a crash leaves either the
// old or the new content.
func writeFileSync(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}
