//go:build unix && !linux

package main

import "syscall"

// childProcAttr puts the command in its own process group. There is no
// Pdeathsig outside Linux: if sidecar is killed the command keeps running,
// though the hold is released when the kernel closes sidecar's socket.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
