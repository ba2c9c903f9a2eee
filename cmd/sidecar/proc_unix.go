//go:build unix

package main

import (
	"errors"
	"os/exec"
	"syscall"
)

// signalChild signals the command's whole process group, so helpers it
// started stop with it; the group is the command's own (Setpgid).
func signalChild(cmd *exec.Cmd, sig syscall.Signal) {
	if err := syscall.Kill(-cmd.Process.Pid, sig); errors.Is(err, syscall.ESRCH) {
		// The group is gone already; the leader may still await reaping.
		_ = cmd.Process.Signal(sig)
	}
}

// childExitCode maps how the command ended to an exit code, the shell's way:
// its own code, or 128+N after signal N.
func childExitCode(cmd *exec.Cmd, err error) int {
	if cmd.ProcessState == nil {
		return exitFailure
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return cmd.ProcessState.ExitCode()
}
