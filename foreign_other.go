//go:build !linux

package udppool

import (
	"errors"
	"fmt"
	"syscall"
)

var errForeignUnsupported = fmt.Errorf("foreign socket detection is supported on Linux only: %w", errors.ErrUnsupported)

// socketInode is unsupported: only Linux lists sockets by inode.
func socketInode(syscall.RawConn) (uint64, error) {
	return 0, errForeignUnsupported
}

// foreignSockets is unsupported: only Linux lists its sockets (sock_diag,
// /proc/net/udp).
func foreignSockets(Key, map[uint64]bool) ([]ForeignSocket, error) {
	return nil, errForeignUnsupported
}
