package udppool

import (
	"os"
	"syscall"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// kernelSteering reports whether the kernel can steer a reuseport group's
// datagrams by program, so that processes of two generations can each bind
// the port and receive their own connections' datagrams.
const kernelSteering = true

// attachSteering sets prog as the reuseport program of the group of the
// socket raw. It replaces the group's program for every member, also those
// of other processes; it needs no privilege.
func attachSteering(raw syscall.RawConn, prog []bpf.Instruction) error {
	ins, err := bpf.Assemble(prog)
	if err != nil {
		return err
	}
	filter := make([]unix.SockFilter, len(ins))
	for i, in := range ins {
		filter[i] = unix.SockFilter{Code: in.Op, Jt: in.Jt, Jf: in.Jf, K: in.K}
	}
	fprog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &fprog)
	}); err != nil {
		return err
	}
	return os.NewSyscallError("setsockopt SO_ATTACH_REUSEPORT_CBPF", serr)
}
