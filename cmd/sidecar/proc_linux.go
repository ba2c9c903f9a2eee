package main

import "syscall"

// childProcAttr puts the command in its own process group, so a terminal's
// Ctrl-C reaches sidecar alone (which then stops the command before
// releasing), and has the kernel kill it if sidecar dies: a command must
// never outlive the hold it runs under.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
