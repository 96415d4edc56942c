package sockdiag

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// List lists the UDP sockets of the calling thread's network namespace
// that are bound to port, IPv4 and IPv6, or every UDP socket if port is 0.
// It asks sock_diag and, only where the kernel offers no sock_diag for
// UDP, reads /proc/net/udp{,6}; an error from sock_diag once it has
// answered is returned, not papered over by the fallback. Sockets are
// listed in the kernel's order, IPv4 first.
func List(port uint16) ([]Socket, error) {
	return list(port, diagUDP)
}

// list is List with the sock_diag reader given, so that tests can stand
// in a kernel without it.
func list(port uint16, diag func(uint16) ([]Socket, error)) ([]Socket, error) {
	socks, err := diag(port)
	if !errors.Is(err, errNoSockDiag) {
		return socks, err
	}
	all, perr := procUDP()
	if perr != nil {
		return nil, errors.Join(err, perr)
	}
	if port == 0 {
		return all, nil
	}
	socks = all[:0]
	for _, s := range all {
		if s.Local.Port() == port {
			socks = append(socks, s)
		}
	}
	return socks, nil
}

// Inode returns the inode number of the socket behind raw, the number
// under which List lists it. It fails for a descriptor that is not a
// socket.
func Inode(raw syscall.RawConn) (uint64, error) {
	var st unix.Stat_t
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, os.NewSyscallError("fstat", serr)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return 0, fmt.Errorf("descriptor is not a socket (mode %#o)", st.Mode)
	}
	return uint64(st.Ino), nil
}
