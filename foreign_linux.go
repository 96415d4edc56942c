//go:build linux

package udppool

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// socketInode returns the inode number of the socket behind raw, the number
// under which the kernel lists it (sock_diag, /proc/net/udp).
func socketInode(raw syscall.RawConn) (uint64, error) {
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

// foreignSockets lists the UDP sockets of the calling thread's network
// namespace that are bound to the port of k with addresses overlapping those
// of k, except the sockets whose inode is in ours and sockets with inode 0.
// Only sockets that receive some datagram that the socket of k would
// receive are listed: on the same port, a foreign socket either joins the
// reuseport group of k (same address) and takes a hashed share of its
// datagrams, or is more or less specific than k and takes, or leaves to k,
// every datagram of the addresses both cover.
//
// The sockets come from sock_diag, which tells whether an IPv6 socket
// bound to [::] is IPv6-only; where the kernel has no sock_diag for UDP,
// from /proc/net/udp{,6}, which do not, so that such a socket counts as
// dual-stack there. An IPv6 socket bound to an IPv4-mapped address
// (::ffff:a.b.c.d) receives the IPv4 datagrams of a.b.c.d and counts as
// that IPv4 address. The zone (interface) of a link-local address is not
// compared, so a foreign fe80::1 on another interface is reported too.
//
// Connected sockets (non-zero remote address) are skipped: a connected UDP
// socket receives only datagrams from its one peer and the kernel prefers it
// only for that peer's datagrams, so it does not take the traffic that
// clients send to the listening socket (on current kernels: before a 2019
// fix, a connected member of a reuseport group could still be hashed other
// datagrams). Such sockets are typical of clients that bind a server's port
// to reach one peer, and reporting them would be noise.
func foreignSockets(k Key, ours map[uint64]bool) ([]ForeignSocket, error) {
	if !k.IsValid() {
		return nil, errors.New("foreign socket detection: invalid key")
	}
	if k.Addr.Port() == 0 {
		return nil, nil // only bound sockets are listed, and none has port 0
	}
	socks, err := listUDP(k.Addr.Port(), diagUDP)
	if err != nil {
		return nil, fmt.Errorf("foreign socket detection: %w", err)
	}
	return filterForeign(k, ours, socks), nil
}

// listUDP lists the UDP sockets on port (and, from /proc, others too)
// through diag, or from /proc where diag finds no sock_diag for UDP.
func listUDP(port uint16, diag func(uint16) ([]udpSocket, error)) ([]udpSocket, error) {
	socks, err := diag(port)
	if !errors.Is(err, errNoSockDiag) {
		return socks, err
	}
	socks, perr := procUDP()
	if perr != nil {
		return nil, errors.Join(err, perr)
	}
	return socks, nil
}

// filterForeign returns the sockets that foreignSockets reports for k, in
// the order given.
func filterForeign(k Key, ours map[uint64]bool, socks []udpSocket) []ForeignSocket {
	var found []ForeignSocket
	for _, s := range socks {
		if s.inode == 0 || ours[s.inode] || s.local.Port() != k.Addr.Port() || s.connected() {
			continue
		}
		if !collides(k, s.key()) {
			continue
		}
		network := s.key().Network
		if s.local.Addr().Is6() && network == "udp4" {
			network = "udp6" // an IPv4-mapped address; Local shows it
		}
		found = append(found, ForeignSocket{Network: network, Local: s.local, Inode: s.inode, UID: s.uid})
	}
	return found
}

// udpSocket is one UDP socket as the kernel lists it. Addresses of AF_INET
// sockets are 4-byte, those of AF_INET6 sockets 16-byte.
type udpSocket struct {
	local, remote netip.AddrPort
	// v6only is IPV6_V6ONLY of an AF_INET6 socket, where known.
	v6only bool
	uid    uint32
	inode  uint64
}

// connected reports whether the socket is connected to a peer.
func (s udpSocket) connected() bool {
	return s.remote.Port() != 0 || !s.remote.Addr().IsUnspecified()
}

// key returns the key that describes the addresses the socket receives:
// an IPv6 wildcard is dual-stack unless known to be IPv6-only, and an
// IPv4-mapped IPv6 address counts as its IPv4 address.
func (s udpSocket) key() Key {
	ip, port := s.local.Addr(), s.local.Port()
	switch {
	case ip.Is4():
		return Key{Network: "udp4", Addr: s.local}
	case ip.Is4In6():
		return Key{Network: "udp4", Addr: netip.AddrPortFrom(ip.Unmap(), port)}
	case ip.IsUnspecified() && !s.v6only:
		return Key{Network: "udp", Addr: s.local}
	default:
		return Key{Network: "udp6", Addr: s.local}
	}
}

// collides reports whether the socket of f receives some datagram that the
// socket of k receives on k's port: the same key (a reuseport peer) or an
// overlapping one. Zones are not compared (see foreignSockets).
func collides(k, f Key) bool {
	k.Addr = netip.AddrPortFrom(k.Addr.Addr().WithZone(""), k.Addr.Port())
	return k == f || k.overlaps(f)
}
