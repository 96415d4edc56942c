package steer

import (
	"os"
	"syscall"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Supported reports whether the kernel runs reuseport programs, so that
// sockets of one address (of one process or of two generations) each
// receive their own connections' datagrams.
const Supported = true

// Attach sets prog as the reuseport program of the group of the socket raw.
// It replaces the group's program for every member, also those of other
// processes, and outlives raw; it needs no privilege. A socket that attaches
// before its bind cannot join an existing group, so attach after the bind.
func Attach(raw syscall.RawConn, prog []bpf.Instruction) error {
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
