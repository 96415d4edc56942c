//go:build aix || darwin || dragonfly || freebsd || linux || netbsd || openbsd || zos

package udppool

import "golang.org/x/sys/unix"

// setSharing sets SO_REUSEPORT when reuse is on, so that a new process (a
// restarted or upgraded server) can bind the same address while this one
// still serves it, and the port never goes dark. Within this process the
// pool never binds a key twice: a reuseport group splits datagrams between
// its members by hash, and a member that nobody reads silently eats its
// share.
func setSharing(fd uintptr, reuse bool) error {
	if !reuse {
		return nil
	}
	return unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
}

// setDualStack clears IPV6_V6ONLY so that an IPv6 wildcard socket also
// receives IPv4 datagrams, whatever the system default is.
func setDualStack(fd uintptr) error {
	return unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
}

// checkSocket fails if fd is no longer a socket: closed or replaced
// underneath the pool.
func checkSocket(fd uintptr) error {
	_, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
	return err
}
