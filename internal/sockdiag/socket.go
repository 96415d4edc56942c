package sockdiag

import "net/netip"

// A Socket is one UDP socket as the kernel lists it.
type Socket struct {
	// Local and Remote are the socket's addresses: 4-byte for an AF_INET
	// socket, 16-byte for an AF_INET6 one (an IPv4-mapped address stays
	// mapped), never with a zone (the kernel names the interface of a
	// link-local address by index only). Remote is the unspecified
	// address with port 0 unless the socket is connected.
	Local, Remote netip.AddrPort
	// V6Only is IPV6_V6ONLY of an AF_INET6 socket. The /proc tables do
	// not show it, so it is false in what they list.
	V6Only bool
	// UID is the owner of the socket, as seen from the user namespace of
	// the process.
	UID uint32
	// Inode is the inode number of the socket, as in /proc/PID/fd links
	// ("socket:[INODE]"). The kernel lists a socket that is being torn
	// down with inode 0.
	Inode uint64
}

// Connected reports whether the socket is connected to a peer, which
// makes it receive that peer's datagrams only.
func (s Socket) Connected() bool {
	return s.Remote.Port() != 0 || !s.Remote.Addr().IsUnspecified()
}
