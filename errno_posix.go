//go:build !plan9

package udppool

import "syscall"

// errAddrInUse is the error of a bind to a port in use.
var errAddrInUse error = syscall.EADDRINUSE
