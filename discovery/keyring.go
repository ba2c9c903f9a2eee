package discovery

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/memberlist"
)

// KeyringFileName is the file, in an agent's data dir, that holds the
// gossip keyring, so that keys installed at runtime survive a restart.
const KeyringFileName = "keyring.json"

var (
	// ErrNoEncryption: the keyring was asked for on a node that gossips
	// in clear text (started without a key); there is no keyring to
	// change, and encryption cannot be turned on at runtime.
	ErrNoEncryption = errors.New("discovery: gossip encryption is off (start every agent with --encrypt to use the keyring)")
	// ErrInvalidKey: a key that is not the base64 encoding of 16, 24 or
	// 32 bytes (AES-128, -192, -256). The message never repeats the key.
	ErrInvalidKey = errors.New("discovery: invalid gossip key: want the base64 encoding of 16, 24 or 32 bytes (make one with 'sidecar keygen')")
	// ErrPrimaryKey: removing the key a member encrypts with would cut it
	// off; use another key first.
	ErrPrimaryKey = errors.New("discovery: key is in use as the primary key")
	// ErrKeyNotInstalled: use or remove of a key a member does not hold.
	ErrKeyNotInstalled = errors.New("discovery: key not installed")
	// ErrKeyringFile: the keyring file cannot be read or written.
	ErrKeyringFile = errors.New("discovery: keyring file")
)

// ParseKey decodes a gossip key as `sidecar keygen` prints it (standard
// base64; surrounding white space is ignored) and checks its size. Errors
// wrap ErrInvalidKey and never contain the key, which is a secret even
// when malformed.
func ParseKey(s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || memberlist.ValidateKey(b) != nil {
		return nil, ErrInvalidKey
	}
	return b, nil
}

// EncodeKey is the printed form of a key (standard base64), the inverse of
// ParseKey.
func EncodeKey(key []byte) string { return base64.StdEncoding.EncodeToString(key) }

// validKey reports whether key has an AES key size.
func validKey(key []byte) bool { return memberlist.ValidateKey(key) == nil }

// KeyringState is one member's keyring: the keys it decrypts with, in
// printed form, the primary (the one it encrypts with) first.
type KeyringState struct {
	Keys []string
}

// Primary is the key the member encrypts with ("" for an empty state).
func (s KeyringState) Primary() string {
	if len(s.Keys) == 0 {
		return ""
	}
	return s.Keys[0]
}

// Has reports whether the member holds key (printed form).
func (s KeyringState) Has(key string) bool { return slices.Contains(s.Keys, key) }

// keyringFile is the JSON of KeyringFileName. The primary is named on its
// own, not implied by order, so that a hand edit cannot silently change
// which key this node encrypts with.
type keyringFile struct {
	Primary string   `json:"primary"`
	Keys    []string `json:"keys"`
}

// localKeyring is this node's memberlist keyring and, when the node has a
// data dir, its file.
//
// memberlist.Keyring is safe for memberlist's readers (GetKeys and
// GetPrimaryKey take its lock), but its changes read the key list without
// the lock and RemoveKey shifts the later keys down in the very array
// GetKeys handed out to decryptions in flight. So every change goes
// through mu (one change at a time), and removal only ever removes the
// last key of the list (see remove).
type localKeyring struct {
	mu   sync.Mutex
	ring *memberlist.Keyring
	path string // "": kept in memory only
	log  *slog.Logger
}

// openKeyring returns the keyring New gives memberlist: the one in path
// when that file exists (seed, the --encrypt key, is then ignored: after a
// rotation the flag usually still names the old, removed key), else one
// made of seed alone and written to path. Without a file and a seed,
// gossip is not encrypted and openKeyring returns nil.
func openKeyring(path string, seed []byte, log *slog.Logger) (*localKeyring, error) {
	if path != "" {
		st, err := readKeyringFile(path)
		switch {
		case err == nil:
			ring, err := memberlist.NewKeyring(decodeKeys(st.Keys[1:]), decodeKeys(st.Keys[:1])[0])
			if err != nil {
				return nil, fmt.Errorf("%w %s: %v", ErrKeyringFile, path, err)
			}
			if seed != nil && !st.Has(EncodeKey(seed)) {
				log.Warn("the --encrypt key is not in the keyring file; using the keyring file (it holds the keys installed at runtime)",
					"file", path, "keys", len(st.Keys))
			} else {
				log.Info("gossip keyring loaded", "file", path, "keys", len(st.Keys))
			}
			return &localKeyring{ring: ring, path: path, log: log}, nil
		case !errors.Is(err, fs.ErrNotExist):
			return nil, err
		}
	}
	if seed == nil {
		return nil, nil
	}
	if !validKey(seed) {
		return nil, fmt.Errorf("%w: encrypt key is %d bytes", ErrConfig, len(seed))
	}
	ring, err := memberlist.NewKeyring(nil, slices.Clone(seed))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	k := &localKeyring{ring: ring, path: path, log: log}
	if path != "" {
		if err := writeKeyringFile(path, k.stateLocked()); err != nil {
			return nil, err
		}
		log.Info("gossip keyring created from --encrypt", "file", path)
	}
	return k, nil
}

func decodeKeys(keys []string) [][]byte {
	out := make([][]byte, 0, len(keys))
	for _, k := range keys {
		b, _ := base64.StdEncoding.DecodeString(k) // validated by readKeyringFile
		out = append(out, b)
	}
	return out
}

// readKeyringFile reads and validates path. A damaged file is an error
// naming the file and what to do, never a silent fallback to --encrypt,
// which could cut the node off the cluster.
func readKeyringFile(path string) (KeyringState, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return KeyringState{}, err
		}
		return KeyringState{}, fmt.Errorf("%w: %v", ErrKeyringFile, err)
	}
	bad := func(why string) error {
		return fmt.Errorf("%w %s is damaged (%s): restore it, or delete it to start again from --encrypt", ErrKeyringFile, path, why)
	}
	var f keyringFile
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return KeyringState{}, bad("not the expected JSON")
	}
	if dec.More() {
		return KeyringState{}, bad("data after the JSON object")
	}
	if _, err := ParseKey(f.Primary); err != nil {
		return KeyringState{}, bad("no valid primary key")
	}
	st := KeyringState{Keys: []string{strings.TrimSpace(f.Primary)}}
	for i, k := range f.Keys {
		if _, err := ParseKey(k); err != nil {
			return KeyringState{}, bad(fmt.Sprintf("key %d is not a valid key", i+1))
		}
		if k = strings.TrimSpace(k); !st.Has(k) {
			st.Keys = append(st.Keys, k)
		}
	}
	return st, nil
}

// writeKeyringFile replaces path atomically: the new content is written to
// a temporary file (0600: the keys are secrets) in the same directory,
// synced, renamed over path, and the directory synced, so a crash leaves
// the old file or the new one, never a mix or nothing.
func writeKeyringFile(path string, st KeyringState) error {
	b, err := json.MarshalIndent(keyringFile{Primary: st.Primary(), Keys: st.Keys}, "", "  ")
	if err != nil {
		return fmt.Errorf("%w: encode: %v", ErrKeyringFile, err)
	}
	b = append(b, '\n')
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("%w: %v", ErrKeyringFile, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp") // mode 0600
	if err != nil {
		return fmt.Errorf("%w: %v", ErrKeyringFile, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("%w: %v", ErrKeyringFile, err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("%w: write %s: %v", ErrKeyringFile, tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("%w: sync %s: %v", ErrKeyringFile, tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("%w: %v", ErrKeyringFile, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("%w: %v", ErrKeyringFile, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrKeyringFile, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("%w: sync %s: %v", ErrKeyringFile, dir, err)
	}
	return nil
}

// state returns the keyring, primary first.
func (k *localKeyring) state() KeyringState {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.stateLocked()
}

func (k *localKeyring) stateLocked() KeyringState {
	var st KeyringState
	for _, key := range k.ring.GetKeys() {
		st.Keys = append(st.Keys, EncodeKey(key))
	}
	return st
}

// persistLocked writes st to the file (if any) before memberlist's keyring
// changes: a failed write changes nothing, and a crash between the two
// leaves the file ahead, which the restart then applies.
func (k *localKeyring) persistLocked(st KeyringState) error {
	if k.path == "" {
		return nil
	}
	return writeKeyringFile(k.path, st)
}

// install adds key (decrypting with it from now on); installing a key
// already held changes nothing.
func (k *localKeyring) install(key []byte) error {
	if !validKey(key) {
		return ErrInvalidKey
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	st := k.stateLocked()
	enc := EncodeKey(key)
	if st.Has(enc) {
		return nil
	}
	st.Keys = append(st.Keys, enc)
	if err := k.persistLocked(st); err != nil {
		return err
	}
	// AddKey appends past the end of the current list, which no reader
	// looks at, then installs a fresh list.
	if err := k.ring.AddKey(slices.Clone(key)); err != nil {
		return fmt.Errorf("discovery: install key: %w", err)
	}
	k.log.Info("gossip key installed", "keys", len(st.Keys))
	return nil
}

// use makes key, which must be installed, the primary: this node encrypts
// with it from now on.
func (k *localKeyring) use(key []byte) error {
	if !validKey(key) {
		return ErrInvalidKey
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	st := k.stateLocked()
	enc := EncodeKey(key)
	i := slices.Index(st.Keys, enc)
	switch {
	case i < 0:
		return ErrKeyNotInstalled
	case i == 0:
		return nil
	}
	st.Keys = append([]string{enc}, slices.Delete(st.Keys, i, i+1)...)
	if err := k.persistLocked(st); err != nil {
		return err
	}
	if err := k.ring.UseKey(key); err != nil {
		return fmt.Errorf("discovery: use key: %w", err)
	}
	k.log.Info("gossip primary key changed", "keys", len(st.Keys))
	return nil
}

// remove drops key, which must not be the primary; removing a key not
// held changes nothing.
func (k *localKeyring) remove(key []byte) error {
	if !validKey(key) {
		return ErrInvalidKey
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	keys := slices.Clone(k.ring.GetKeys())
	i := slices.IndexFunc(keys, func(b []byte) bool { return bytes.Equal(b, key) })
	switch {
	case i < 0:
		return nil
	case i == 0:
		return ErrPrimaryKey
	}
	st := k.stateLocked()
	st.Keys = slices.Delete(st.Keys, i, i+1)
	if err := k.persistLocked(st); err != nil {
		return err
	}
	// memberlist's RemoveKey moves the keys after the removed one down in
	// place, in the array concurrent decryptions are iterating over (a
	// data race, and a decryption could skip a key). Removing the last
	// key moves nothing. So the keys after this one are taken off from the
	// end, this one goes, and they are added back (AddKey appends past
	// the end). For the microseconds this takes those later keys do not
	// decrypt; they are secondary keys, which members encrypt with only in
	// the middle of a `use`.
	tail := keys[i+1:]
	for j := len(tail) - 1; j >= 0; j-- {
		if err := k.ring.RemoveKey(tail[j]); err != nil {
			return fmt.Errorf("discovery: remove key: %w", err)
		}
	}
	if err := k.ring.RemoveKey(keys[i]); err != nil {
		return fmt.Errorf("discovery: remove key: %w", err)
	}
	for _, t := range tail {
		if err := k.ring.AddKey(t); err != nil {
			return fmt.Errorf("discovery: remove key: %w", err)
		}
	}
	k.log.Info("gossip key removed", "keys", len(st.Keys))
	return nil
}
