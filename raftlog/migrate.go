package raftlog

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"

	"github.com/sidecarhq/sidecar/internal/boltopen"
)

// stableKeys are the keys hashicorp/raft keeps in its stable store.
var stableKeys = [][]byte{[]byte("CurrentTerm"), []byte("LastVoteTerm"), []byte("LastVoteCand")}

// MigrateBolt moves a data dir's raft-boltdb file (the log store of
// earlier releases) into a Store at dir, once: when dir does not exist
// yet and boltPath does. The copy is built beside dir and renamed into
// place, so a crash during it leaves the bolt file in charge; the bolt file
// is then renamed to boltPath+".migrated" for the operator to remove.
func MigrateBolt(boltPath, dir string, log *slog.Logger) (err error) {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if _, err := os.Stat(boltPath); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	defer func() {
		// bbolt panics on some damaged files instead of returning an error.
		if p := recover(); p != nil {
			err = fmt.Errorf("read the raft log %s to move it to %s: the file is damaged (%v); "+
				"move this server's data dir aside and start it with an empty one: it rejoins and is caught up from the other servers", boltPath, dir, p)
		}
	}()
	// bbolt faults (SIGBUS, past recovery) on a file cut short: check the
	// file with plain reads first.
	db, err := boltopen.Open(boltPath, boltopen.Options{ReadOnly: true, Check: boltopen.CheckWalk,
		Recovery: "move this server's data dir aside and start it with an empty one: it rejoins and is caught up from the other servers"})
	if err != nil {
		return fmt.Errorf("read the raft log to move it to %s: %w", dir, err)
	}
	db.Close()
	bolt, err := raftboltdb.New(raftboltdb.Options{Path: boltPath, BoltOptions: &bbolt.Options{ReadOnly: true, Timeout: 0}})
	if err != nil {
		return fmt.Errorf("open the raft log %s to move it to %s: %w", boltPath, dir, err)
	}
	defer bolt.Close()

	tmp := dir + ".migrating"
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("remove an unfinished migration: %w", err)
	}
	wal, err := Open(tmp, Options{Logger: log})
	if err != nil {
		return err
	}
	defer wal.Close()
	first, err := bolt.FirstIndex()
	if err != nil {
		return fmt.Errorf("read %s: %w", boltPath, err)
	}
	last, err := bolt.LastIndex()
	if err != nil {
		return fmt.Errorf("read %s: %w", boltPath, err)
	}
	var batch []*raft.Log
	for i := first; i <= last && last != 0; i++ {
		l := new(raft.Log)
		if err := bolt.GetLog(i, l); err != nil {
			return fmt.Errorf("read raft log entry %d from %s: %w", i, boltPath, err)
		}
		batch = append(batch, l)
		if len(batch) == 512 || i == last {
			if err := wal.StoreLogs(batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	for _, k := range stableKeys {
		v, err := bolt.Get(k)
		if err != nil && err.Error() != "not found" {
			return fmt.Errorf("read %s from %s: %w", k, boltPath, err)
		}
		if len(v) > 0 {
			if err := wal.Set(k, v); err != nil {
				return err
			}
		}
	}
	if err := wal.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("move the migrated raft log into place: %w", err)
	}
	if err := syncDir(filepath.Dir(dir)); err != nil {
		return err
	}
	if err := os.Rename(boltPath, boltPath+".migrated"); err != nil {
		return fmt.Errorf("rename %s after moving it: %w", boltPath, err)
	}
	entries := uint64(0)
	if last != 0 {
		entries = last - first + 1
	}
	log.Info("moved the raft log out of raft-boltdb", "from", boltPath, "to", dir, "entries", entries, "kept", boltPath+".migrated")
	return nil
}
