//go:build !linux

package udppool

import "os/exec"

// superviseIfPID1 does nothing: PID namespaces, whose first process takes
// every other with it when it exits, are Linux's.
func (u *Upgrader) superviseIfPID1() {}

// startAsSibling leaves cmd a child of this process: only Linux can start
// a process as its sibling.
func startAsSibling(*exec.Cmd, bool) {}
