//go:build !unix

package main

import (
	"os/exec"
	"syscall"
)

func childProcAttr() *syscall.SysProcAttr { return nil }

// signalChild cannot deliver SIGTERM here: any signal kills the command.
func signalChild(cmd *exec.Cmd, _ syscall.Signal) { _ = cmd.Process.Kill() }

func childExitCode(cmd *exec.Cmd, _ error) int {
	if cmd.ProcessState == nil {
		return exitFailure
	}
	return cmd.ProcessState.ExitCode()
}
