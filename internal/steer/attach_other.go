//go:build !linux

package steer

import (
	"errors"
	"syscall"

	"golang.org/x/net/bpf"
)

// Supported is false: without a reuseport program the kernel spreads (or,
// on the BSDs, hands to one socket) the datagrams of an address bound by
// several sockets.
const Supported = false

// Attach returns errors.ErrUnsupported.
func Attach(syscall.RawConn, []bpf.Instruction) error { return errors.ErrUnsupported }
