//go:build linux

package main

import "syscall"

// childAttr makes the kernel kill a client process whose parent dies, so
// that a benchmark killed mid-run (a test's timeout) leaves no client
// loading the machine.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
