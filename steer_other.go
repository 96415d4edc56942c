//go:build !linux

package udppool

import (
	"errors"
	"syscall"

	"golang.org/x/net/bpf"
)

// kernelSteering is false: without a reuseport program the kernel would
// spread (or, on the BSDs, hand to one socket) the datagrams of a port
// bound by two processes, so generations share one inherited socket and
// forward each other's datagrams in user space (forward.go).
const kernelSteering = false

func attachSteering(syscall.RawConn, []bpf.Instruction) error { return errors.ErrUnsupported }
