package udppool

import (
	"syscall"

	"golang.org/x/net/bpf"

	"github.com/udppool/udppool/internal/steer"
)

// kernelSteering reports whether the kernel can steer a reuseport group's
// datagrams by program, so that processes of two generations can each bind
// the port and receive their own connections' datagrams.
const kernelSteering = steer.Supported

// attachSteering sets prog as the reuseport program of the group of the
// socket raw (see steer.Attach).
func attachSteering(raw syscall.RawConn, prog []bpf.Instruction) error {
	return steer.Attach(raw, prog)
}
