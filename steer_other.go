//go:build !linux

package udppool

import (
	"syscall"

	"golang.org/x/net/bpf"

	"github.com/udppool/udppool/internal/steer"
)

// kernelSteering is false: without a reuseport program the kernel would
// spread (or, on the BSDs, hand to one socket) the datagrams of a port
// bound by two processes, so generations share one inherited socket and
// forward each other's datagrams in user space (forward.go).
const kernelSteering = steer.Supported

func attachSteering(raw syscall.RawConn, prog []bpf.Instruction) error {
	return steer.Attach(raw, prog)
}
