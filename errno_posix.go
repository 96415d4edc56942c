//go:build !plan9

package udppool

import (
	"errors"
	"syscall"
)

// errAddrInUse is the error of a bind to a port in use.
var errAddrInUse error = syscall.EADDRINUSE

// errBadDescriptor is the error of an operation on a closed descriptor.
var errBadDescriptor error = syscall.EBADF

// bindBlocked reports whether a bind failed for a reason that a descriptor
// inherited from the predecessor gets around: a privileged port, or a port
// held without SO_REUSEPORT.
func bindBlocked(err error) bool {
	return errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EADDRINUSE)
}
