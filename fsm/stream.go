package fsm

import "bytes"

// SnapshotBytes returns the registry in the snapshot format together with
// the index it reflects, read under one lock, so a change stream can follow
// on from exactly that index.
func (f *FSM) SnapshotBytes() ([]byte, uint64, error) {
	f.mu.RLock()
	data := f.st.export()
	f.mu.RUnlock()
	var buf bytes.Buffer
	if err := writeSnapshot(&buf, data); err != nil {
		return nil, 0, err
	}
	return buf.Bytes(), data.Index, nil
}
