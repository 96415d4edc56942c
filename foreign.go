package udppool

import (
	"net/netip"
	"strconv"
)

// A ForeignSocket is a UDP socket that this pool does not own but that is
// bound to the same port as a pooled socket with addresses that overlap it.
// With SO_REUSEPORT such a socket (of another process of the same user, or
// of this process outside the pool) joins the pooled socket's reuseport
// group and receives a share of its datagrams, or, when it is more specific
// (udp4 0.0.0.0:443 beside a dual-stack [::]:443), every datagram of one
// address family.
//
// Foreign sockets are found in the kernel's socket lists, which only Linux
// offers: through sock_diag netlink (what ss -u shows), or, where the kernel
// has no sock_diag for UDP, in /proc/net/udp and /proc/net/udp6.
type ForeignSocket struct {
	// Network is "udp4" for an IPv4 socket, "udp" for a dual-stack IPv6
	// socket bound to [::] (it receives IPv4 datagrams too), and "udp6"
	// for any other IPv6 socket: an IPv6-only one bound to [::], one bound
	// to a specific IPv6 address, or one bound to an IPv4-mapped address
	// (see Local). Without sock_diag the kernel does not tell whether a
	// socket on [::] is IPv6-only, so every such socket is reported as
	// "udp" there.
	Network string
	// Local is the socket's local address and port as the kernel lists it.
	// An IPv6 socket bound to an IPv4-mapped address keeps the mapped form
	// (it receives the IPv4 datagrams of that address). Local never has a
	// zone: the kernel names the interface of a link-local address by
	// index only, and it is not compared.
	Local netip.AddrPort
	// Inode is the inode number of the socket, as in /proc/PID/fd links
	// ("socket:[INODE]"), which identifies the process that holds it.
	Inode uint64
	// UID is the owner of the socket, as seen from this process's user
	// namespace.
	UID uint32
}

// String describes the socket, for example
// "udp4 0.0.0.0:443 (inode 12345, uid 0)".
func (f ForeignSocket) String() string {
	return f.Network + " " + f.Local.String() +
		" (inode " + strconv.FormatUint(f.Inode, 10) +
		", uid " + strconv.FormatUint(uint64(f.UID), 10) + ")"
}
