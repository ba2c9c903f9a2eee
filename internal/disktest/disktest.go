// Package disktest makes the file systems the disk-fault tests run on: a
// small tmpfs that fills up, a filler that fills it, and an ext4 volume
// that turns read-only the way a failing disk makes it. They need root and
// skip the test otherwise.
package disktest

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Tmpfs mounts a tmpfs of size (as mount's size= option: "8m") at a new
// directory, unmounted when the test ends.
func Tmpfs(t testing.TB, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (%v: %s)", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// Fill writes a file in dir until its file system is full and returns the
// file's path: removing it frees the space.
func Fill(t testing.TB, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return path
		}
	}
}

// Ext4 is an ext4 file system in a sparse image, mounted with
// errors=remount-ro as distributions mount their root.
type Ext4 struct {
	Dir      string // where it is mounted
	img, dev string
}

// NewExt4 makes and mounts an ext4 volume of size (as truncate's -s).
func NewExt4(t testing.TB, size string) *Ext4 {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting an ext4 image needs root")
	}
	for _, tool := range []string{"mkfs.ext4", "e2fsck", "losetup", "findmnt"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	v := &Ext4{img: filepath.Join(t.TempDir(), "disk.img"), Dir: t.TempDir()}
	run(t, "truncate", "-s", size, v.img)
	run(t, "mkfs.ext4", "-q", "-F", v.img)
	v.mount(t)
	t.Cleanup(func() { exec.Command("umount", "-l", v.Dir).Run() })
	return v
}

func (v *Ext4) mount(t testing.TB) {
	t.Helper()
	run(t, "mount", "-o", "loop,errors=remount-ro", v.img, v.Dir)
	out, err := exec.Command("findmnt", "-no", "SOURCE", v.Dir).Output()
	if err != nil {
		t.Fatalf("findmnt: %v", err)
	}
	v.dev = filepath.Base(strings.TrimSpace(string(out)))
}

// Fail reports an error in the file system, as an I/O error does: ext4
// remounts it read-only under whatever has files open on it.
func (v *Ext4) Fail(t testing.TB) {
	t.Helper()
	if err := os.WriteFile("/sys/fs/ext4/"+v.dev+"/trigger_fs_error", []byte("test: a failing disk\n"), 0o200); err != nil {
		t.Skipf("cannot make ext4 fail: %v", err)
	}
}

// Repair unmounts the volume, checks it and mounts it writable again.
func (v *Ext4) Repair(t testing.TB) {
	t.Helper()
	run(t, "umount", v.Dir)
	exec.Command("e2fsck", "-fy", v.img).Run() // exits 1 when it fixed something
	v.mount(t)
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
}
