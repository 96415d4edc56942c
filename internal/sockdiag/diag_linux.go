package sockdiag

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// Layout of the sock_diag messages of linux/inet_diag.h, which
// golang.org/x/sys/unix does not define.
const (
	// struct inet_diag_req_v2: family, protocol, ext, pad (1 byte each),
	// states (u32), then a struct inet_diag_sockid.
	sizeofInetDiagReqV2 = 8 + sizeofInetDiagSockID
	// struct inet_diag_sockid: sport, dport (big-endian u16), src[16],
	// dst[16], if (u32), cookie[2] (u32).
	sizeofInetDiagSockID = 48
	// struct inet_diag_msg: family, state, timer, retrans (1 byte each), a
	// struct inet_diag_sockid, then expires, rqueue, wqueue, uid, inode
	// (u32 each), followed by attributes.
	sizeofInetDiagMsg = 4 + sizeofInetDiagSockID + 5*4
	offDiagSockID     = 4
	offDiagUID        = offDiagSockID + sizeofInetDiagSockID + 3*4
	offDiagInode      = offDiagUID + 4

	// inetDiagSKV6Only is INET_DIAG_SKV6ONLY, a u8 attribute holding
	// IPV6_V6ONLY, sent for unconnected and listening AF_INET6 sockets.
	inetDiagSKV6Only = 11
	// nlaTypeMask strips NLA_F_NESTED and NLA_F_NET_BYTEORDER.
	nlaTypeMask = 0x3fff
)

// errNoSockDiag wraps the errors that mean the kernel offers no sock_diag
// for UDP, as opposed to a failure while reading it.
var errNoSockDiag = errors.New("sock_diag for UDP unavailable")

// diagUDP lists the UDP sockets of the calling thread's network namespace
// that are bound to port (every one for port 0), through the kernel's
// sock_diag netlink interface (as ss -u does), IPv4 and IPv6.
//
// A netlink socket answers for the network namespace it was created in, so
// the thread is locked only while it is created.
func diagUDP(port uint16) ([]Socket, error) {
	runtime.LockOSThread()
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	runtime.UnlockOSThread()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNoSockDiag, os.NewSyscallError("socket NETLINK_SOCK_DIAG", err))
	}
	defer unix.Close(fd)
	var all []Socket
	for i, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		found, err := diagDump(fd, uint32(i+1), family, port)
		if err != nil {
			return nil, err
		}
		all = append(all, found...)
	}
	return all, nil
}

// diagRequest returns a dump request for the UDP sockets of family on port
// (every port for 0).
func diagRequest(seq uint32, family uint8, port uint16) []byte {
	req := make([]byte, unix.SizeofNlMsghdr+sizeofInetDiagReqV2)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], seq)
	r := req[unix.SizeofNlMsghdr:]
	r[0] = family
	r[1] = unix.IPPROTO_UDP
	ne.PutUint32(r[4:], ^uint32(0)) // every state: connected sockets are the caller's to skip
	// The kernel skips sockets on other ports itself: a host may have
	// thousands of UDP sockets, and only one port matters.
	binary.BigEndian.PutUint16(r[8:], port) // id.idiag_sport
	return req
}

// diagDump sends one dump request for the UDP sockets of family on port
// and collects the answer, up to the end of the dump.
func diagDump(fd int, seq uint32, family uint8, port uint16) ([]Socket, error) {
	name := familyName(family)
	if err := unix.Sendto(fd, diagRequest(seq, family, port), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("%w: %w", errNoSockDiag, os.NewSyscallError("sendto NETLINK_SOCK_DIAG", err))
	}

	// Larger than the 32 KiB that the kernel fills at most per dump
	// message batch, so nothing is truncated.
	buf := make([]byte, 64<<10)
	var found []Socket
	for {
		n, _, flags, _, err := unix.Recvmsg(fd, buf, nil, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("sock_diag %s dump: %w", name, os.NewSyscallError("recvmsg", err))
		}
		if flags&unix.MSG_TRUNC != 0 {
			return nil, fmt.Errorf("sock_diag %s dump: message truncated", name)
		}
		var done bool
		if found, done, err = collect(found, buf[:n], seq, name); err != nil || done {
			return found, err
		}
	}
}

// familyName names an address family in errors.
func familyName(family uint8) string {
	switch family {
	case unix.AF_INET:
		return "IPv4"
	case unix.AF_INET6:
		return "IPv6"
	}
	return fmt.Sprintf("family %d", family)
}

// collect appends to found the sockets of one batch b of the answer to
// dump request seq (for family name), and reports whether b ends the dump.
// On error it returns nil.
func collect(found []Socket, b []byte, seq uint32, name string) ([]Socket, bool, error) {
	msgs, err := splitNetlink(b)
	if err != nil {
		return nil, false, fmt.Errorf("sock_diag %s dump: %w", name, err)
	}
	ne := binary.NativeEndian
	for _, m := range msgs {
		if m.Header.Seq != seq {
			return nil, false, fmt.Errorf("sock_diag %s dump: answer to request %d, want %d", name, m.Header.Seq, seq)
		}
		switch m.Header.Type {
		case unix.NLMSG_DONE:
			// A dump that failed after it started ends with the
			// negative errno in place of a count.
			if len(m.Data) >= 4 {
				if code := int32(ne.Uint32(m.Data)); code < 0 {
					return nil, false, diagErr(name, syscall.Errno(-code))
				}
			}
			return found, true, nil
		case unix.NLMSG_ERROR:
			if len(m.Data) < 4 {
				return nil, false, fmt.Errorf("sock_diag %s dump: short error message", name)
			}
			if code := int32(ne.Uint32(m.Data)); code < 0 {
				return nil, false, diagErr(name, syscall.Errno(-code))
			}
		case unix.SOCK_DIAG_BY_FAMILY:
			s, err := parseDiagMsg(m.Data)
			if err != nil {
				return nil, false, fmt.Errorf("sock_diag %s dump: %w", name, err)
			}
			found = append(found, s)
		default:
			return nil, false, fmt.Errorf("sock_diag %s dump: unexpected message type %d", name, m.Header.Type)
		}
	}
	return found, false, nil
}

// netlinkMessage is one message of a netlink answer.
type netlinkMessage struct {
	Header unix.NlMsghdr
	Data   []byte
}

// splitNetlink splits a netlink answer into its messages.
func splitNetlink(b []byte) ([]netlinkMessage, error) {
	var msgs []netlinkMessage
	ne := binary.NativeEndian
	for len(b) > 0 {
		if len(b) < unix.NLMSG_HDRLEN {
			return nil, fmt.Errorf("netlink header of %d bytes", len(b))
		}
		h := unix.NlMsghdr{
			Len:   ne.Uint32(b[0:]),
			Type:  ne.Uint16(b[4:]),
			Flags: ne.Uint16(b[6:]),
			Seq:   ne.Uint32(b[8:]),
			Pid:   ne.Uint32(b[12:]),
		}
		// Compared as uint64: on a 32-bit host a length of 2 GiB or more
		// would turn negative as an int and pass.
		if h.Len < unix.NLMSG_HDRLEN || uint64(h.Len) > uint64(len(b)) {
			return nil, fmt.Errorf("netlink message of length %d in %d bytes", h.Len, len(b))
		}
		n := int(h.Len)
		msgs = append(msgs, netlinkMessage{Header: h, Data: b[unix.NLMSG_HDRLEN:n]})
		b = b[min(align4(n), len(b)):]
	}
	return msgs, nil
}

// diagErr wraps an error the kernel answered. ENOENT means no UDP handler
// (a kernel without CONFIG_INET_UDP_DIAG) and EOPNOTSUPP or EINVAL a
// sock_diag too old or too partial for the request: sock_diag is then
// unavailable rather than failing.
func diagErr(name string, errno syscall.Errno) error {
	err := fmt.Errorf("sock_diag %s dump: %w", name, errno)
	switch errno {
	case unix.ENOENT, unix.EOPNOTSUPP, unix.EINVAL:
		return fmt.Errorf("%w: %w", errNoSockDiag, err)
	}
	return err
}

// parseDiagMsg parses one struct inet_diag_msg and its attributes.
func parseDiagMsg(b []byte) (Socket, error) {
	var s Socket
	if len(b) < sizeofInetDiagMsg {
		return s, fmt.Errorf("socket message of %d bytes, want at least %d", len(b), sizeofInetDiagMsg)
	}
	id := b[offDiagSockID : offDiagSockID+sizeofInetDiagSockID]
	sport, dport := binary.BigEndian.Uint16(id[0:]), binary.BigEndian.Uint16(id[2:])
	src, dst := [16]byte(id[4:20]), [16]byte(id[20:36])
	switch family := b[0]; family {
	case unix.AF_INET:
		s.Local = netip.AddrPortFrom(netip.AddrFrom4([4]byte(src[:4])), sport)
		s.Remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte(dst[:4])), dport)
	case unix.AF_INET6:
		s.Local = netip.AddrPortFrom(netip.AddrFrom16(src), sport)
		s.Remote = netip.AddrPortFrom(netip.AddrFrom16(dst), dport)
	default:
		return s, fmt.Errorf("socket of address family %d", family)
	}
	ne := binary.NativeEndian
	s.UID = ne.Uint32(b[offDiagUID:])
	s.Inode = uint64(ne.Uint32(b[offDiagInode:]))

	for attrs := b[sizeofInetDiagMsg:]; len(attrs) > 0; {
		if len(attrs) < unix.SizeofNlAttr {
			return s, fmt.Errorf("attribute header of %d bytes", len(attrs))
		}
		n, typ := int(ne.Uint16(attrs[0:])), ne.Uint16(attrs[2:])&nlaTypeMask
		if n < unix.SizeofNlAttr || n > len(attrs) {
			return s, fmt.Errorf("attribute %d of length %d in %d bytes", typ, n, len(attrs))
		}
		if typ == inetDiagSKV6Only {
			if n != unix.SizeofNlAttr+1 {
				return s, fmt.Errorf("INET_DIAG_SKV6ONLY of length %d", n)
			}
			s.V6Only = attrs[unix.SizeofNlAttr] != 0
		}
		attrs = attrs[min(align4(n), len(attrs)):]
	}
	return s, nil
}

// align4 rounds n up to the 4-byte alignment of netlink messages
// (NLMSG_ALIGNTO) and attributes (NLA_ALIGNTO).
func align4(n int) int { return (n + 3) &^ 3 }
