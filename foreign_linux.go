//go:build linux

package udppool

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/udppool/udppool/internal/sockdiag"
)

// socketInode returns the inode number of the socket behind raw, the number
// under which the kernel lists it (sock_diag, /proc/net/udp).
func socketInode(raw syscall.RawConn) (uint64, error) { return sockdiag.Inode(raw) }

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
	socks, err := sockdiag.List(k.Addr.Port())
	if err != nil {
		return nil, fmt.Errorf("foreign socket detection: %w", err)
	}
	return filterForeign(k, ours, socks), nil
}

// filterForeign returns the sockets that foreignSockets reports for k, in
// the order given.
func filterForeign(k Key, ours map[uint64]bool, socks []sockdiag.Socket) []ForeignSocket {
	var found []ForeignSocket
	for _, s := range socks {
		if s.Inode == 0 || ours[s.Inode] || s.Local.Port() != k.Addr.Port() || s.Connected() {
			continue
		}
		sk := socketKey(s)
		if !collides(k, sk) {
			continue
		}
		network := sk.Network
		if s.Local.Addr().Is6() && network == "udp4" {
			network = "udp6" // an IPv4-mapped address; Local shows it
		}
		found = append(found, ForeignSocket{Network: network, Local: s.Local, Inode: s.Inode, UID: s.UID})
	}
	return found
}

// socketKey returns the key that describes the addresses s receives: an
// IPv6 wildcard is dual-stack unless known to be IPv6-only, and an
// IPv4-mapped IPv6 address counts as its IPv4 address.
func socketKey(s sockdiag.Socket) Key {
	ip, port := s.Local.Addr(), s.Local.Port()
	switch {
	case ip.Is4():
		return Key{Network: "udp4", Addr: s.Local}
	case ip.Is4In6():
		return Key{Network: "udp4", Addr: netip.AddrPortFrom(ip.Unmap(), port)}
	case ip.IsUnspecified() && !s.V6Only:
		return Key{Network: "udp", Addr: s.Local}
	default:
		return Key{Network: "udp6", Addr: s.Local}
	}
}

// collides reports whether the socket of f receives some datagram that the
// socket of k receives on k's port: the same key (a reuseport peer) or an
// overlapping one. Zones are not compared (see foreignSockets).
func collides(k, f Key) bool {
	k.Addr = netip.AddrPortFrom(k.Addr.Addr().WithZone(""), k.Addr.Port())
	return k == f || k.overlaps(f)
}
