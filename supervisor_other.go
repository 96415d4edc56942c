//go:build !linux

package udppool

// superviseIfPID1 does nothing: PID namespaces, whose first process takes
// every other with it when it exits, are Linux's.
func (u *Upgrader) superviseIfPID1() {}
