package tlsutil

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// File names SPEC gives the CA's files; an agent's are NAME.pem, NAME-key.pem.
const (
	CACertFile = "sidecar-ca.pem"
	CAKeyFile  = "sidecar-ca-key.pem"
)

// CertFiles are the paths of an agent's certificate and key in dir.
func CertFiles(dir, node string) (cert, key string) {
	return filepath.Join(dir, node+".pem"), filepath.Join(dir, node+"-key.pem")
}

// ErrExists is returned when a file to write is already there: making a new
// CA or certificate over an existing one would silently cut off every agent
// that uses it.
var ErrExists = errors.New("already exists")

// fileContent is one file to write and its mode.
type fileContent struct {
	path string
	data []byte
	mode fs.FileMode
}

// WriteCA writes ca to dir as sidecar-ca.pem (0644) and sidecar-ca-key.pem
// (0600), creating dir if needed. It refuses to overwrite either file.
func WriteCA(dir string, ca *CA) (certPath, keyPath string, err error) {
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		return "", "", err
	}
	certPath, keyPath = filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	err = writeNew(dir, []fileContent{{certPath, ca.CertPEM(), 0o644}, {keyPath, keyPEM, 0o600}})
	return certPath, keyPath, err
}

// WriteCert writes an agent's certificate and key to dir as NAME.pem (0644)
// and NAME-key.pem (0600), creating dir if needed. It refuses to overwrite
// either file.
func WriteCert(dir, node string, certPEM, keyPEM []byte) (certPath, keyPath string, err error) {
	if err := ValidNodeName(node); err != nil {
		return "", "", err
	}
	certPath, keyPath = CertFiles(dir, node)
	err = writeNew(dir, []fileContent{{certPath, certPEM, 0o644}, {keyPath, keyPEM, 0o600}})
	return certPath, keyPath, err
}

// writeNew writes every file or none: it checks that none exists first, then
// creates each exclusively (O_EXCL also catches a file that appeared since),
// and removes the ones it made when a later one fails, so a failed run never
// leaves a certificate without its key.
func writeNew(dir string, files []fileContent) error {
	for _, f := range files {
		if _, err := os.Lstat(f.path); err == nil {
			return fmt.Errorf("%s %w; remove it first or use another --dir", f.path, ErrExists)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create directory: %w", err)
	}
	var made []string
	for _, f := range files {
		if err := writeExclusive(f); err != nil {
			for _, p := range made {
				os.Remove(p)
			}
			return err
		}
		made = append(made, f.path)
	}
	return nil
}

func writeExclusive(f fileContent) error {
	// The mode is set at creation, so a key is never readable by others, not
	// even for the moment between create and chmod.
	fh, err := os.OpenFile(f.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.mode)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s %w; remove it first or use another --dir", f.path, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("create %s: %w", f.path, err)
	}
	// Set the mode exactly: SPEC names 0600 for keys and the umask must not
	// decide whether agents of another user can read a certificate.
	if err := fh.Chmod(f.mode); err != nil {
		fh.Close()
		os.Remove(f.path)
		return fmt.Errorf("chmod %s: %w", f.path, err)
	}
	_, werr := fh.Write(f.data)
	// equivalent mutant: a failed fsync or close is seen only on a failing
	// disk, which these tests do not make (the write is checked above).
	if werr == nil {
		werr = fh.Sync()
	}
	// equivalent mutant: as above, a failed close needs a failing disk.
	if cerr := fh.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		os.Remove(f.path)
		return fmt.Errorf("write %s: %w", f.path, werr)
	}
	return nil
}
