//go:build windows

package udppool

import "golang.org/x/sys/windows"

// soExclusiveAddrUse is SO_EXCLUSIVEADDRUSE from winsock2.h (~SO_REUSEADDR),
// which golang.org/x/sys/windows does not define.
const soExclusiveAddrUse = ^windows.SO_REUSEADDR

// setSharing always binds exclusively, whatever reuse says: on Windows
// another process, even one of another user, may otherwise bind the same
// port with SO_REUSEADDR and take its datagrams. Sharing within this process
// goes through the pool.
func setSharing(fd uintptr, _ bool) error {
	return windows.SetsockoptInt(windows.Handle(fd), windows.SOL_SOCKET, soExclusiveAddrUse, 1)
}

// setDualStack clears IPV6_V6ONLY, which Windows sets by default.
func setDualStack(fd uintptr) error {
	return windows.SetsockoptInt(windows.Handle(fd), windows.IPPROTO_IPV6, windows.IPV6_V6ONLY, 0)
}

// soType is SO_TYPE from winsock2.h, which golang.org/x/sys/windows does
// not define.
const soType = 0x1008

// checkSocket fails if fd is no longer a socket: closed or replaced
// underneath the pool.
func checkSocket(fd uintptr) error {
	_, err := windows.GetsockoptInt(windows.Handle(fd), windows.SOL_SOCKET, soType)
	return err
}
