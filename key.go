package udppool

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// A Key identifies one pooled socket: the address family and local address
// that the socket is really bound to. Requests that Go would satisfy with the
// same local socket normalize to the same Key, whatever spelling the caller
// used ("udp :443", "udp 0.0.0.0:443" and "udp [::]:443" are one dual-stack
// key where the host can bind dual-stack).
type Key struct {
	// Network is "udp4" for an IPv4 socket, "udp6" for an IPv6-only socket,
	// or "udp" for a dual-stack wildcard socket bound to [::] that serves
	// IPv4 clients as IPv4-mapped IPv6 addresses.
	Network string
	// Addr is the local address and port. IPv4 addresses are unmapped. A
	// zone is kept only where the kernel binds it, on link-local
	// addresses, and always as the interface index ("fe80::1%2"), so
	// that every spelling of one local socket is one key.
	Addr netip.AddrPort
	// Socket is the index of the socket among those that serve the address
	// for one Transport (see WithSockets): 0 for the first, and for every
	// socket of ListenPacket and of a Transport with one socket per
	// address. Sibling sockets of one address are in one reuseport group and
	// never overlap each other.
	Socket int
}

// IsValid reports whether k names a socket.
func (k Key) IsValid() bool { return k.Network != "" && k.Addr.IsValid() }

// String returns the key as "network address", for example "udp [::]:443",
// followed by " #i" for a socket index i other than 0 ("udp [::]:443 #1").
func (k Key) String() string {
	if !k.IsValid() {
		return "invalid key"
	}
	if k.Socket != 0 {
		return k.Network + " " + k.Addr.String() + " #" + strconv.Itoa(k.Socket)
	}
	return k.Network + " " + k.Addr.String()
}

// base returns the key of the first socket of k's address: the one that
// every Transport of the address holds, and that names its reuseport group.
func (k Key) base() Key {
	k.Socket = 0
	return k
}

// dualStack reports whether k is a dual-stack socket.
func (k Key) dualStack() bool { return k.Network == "udp" }

// covers reports whether the socket of k receives datagrams addressed to a.
func (k Key) covers(a netip.Addr) bool {
	switch {
	case k.dualStack():
		return true
	case k.Addr.Addr().IsUnspecified():
		return a.Is4() == k.Addr.Addr().Is4()
	default:
		return a == k.Addr.Addr()
	}
}

// overlaps reports whether two different keys on the same port would both
// match some incoming datagram, which in a reuseport group lets the more
// specific socket take that traffic from the other.
func (k Key) overlaps(o Key) bool {
	if k.base() == o.base() || k.Addr.Port() != o.Addr.Port() {
		return false // the same socket, or sibling sockets of one address
	}
	// Two sockets overlap exactly when one of them covers the other's
	// address: wildcards cover their family, specific addresses only
	// themselves.
	return k.covers(o.Addr.Addr()) || o.covers(k.Addr.Addr())
}

// stack describes the address families this host can bind, in the way the
// pool needs to normalize wildcard requests.
type stack struct {
	// dualStack: an IPv6 socket bound to [::] with IPV6_V6ONLY off also
	// receives IPv4 datagrams.
	dualStack bool
	// ipv6: IPv6 sockets can be bound at all.
	ipv6 bool
}

// resolver abstracts the host lookups of net.Resolver so that tests can
// exercise normalization without DNS.
type resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
	LookupPort(ctx context.Context, network, service string) (int, error)
}

// parseKey normalizes a network and address as given to net.ListenPacket into
// the Key of the socket Go would bind for them. Hostnames resolve as Go
// resolves listen addresses: the first IPv4 address is preferred for "udp".
// It also reports whether the address was literal (no host name or service
// name looked up), so that its key can be cached.
func parseKey(ctx context.Context, r resolver, st stack, network, address string) (k Key, literal bool, err error) {
	switch network {
	case "udp", "udp4", "udp6":
	default:
		return Key{}, false, fmt.Errorf("%w %q", ErrUnknownNetwork, network)
	}
	var host, service string
	if address != "" { // like net.ListenPacket, "" means ":0"
		if host, service, err = net.SplitHostPort(address); err != nil {
			return Key{}, false, fmt.Errorf("%w: %w", ErrInvalidAddress, err)
		}
	}
	port, err := parsePort(ctx, r, service)
	if err != nil {
		return Key{}, false, err
	}
	ip, err := parseHost(ctx, r, network, host)
	if err != nil {
		return Key{}, false, err
	}
	// Zone names are looked up like host names; numeric zones are literal.
	lit, hostErr := netip.ParseAddr(host)
	literal = (host == "" || hostErr == nil && (lit.Zone() == "" || isNumeric(lit.Zone()))) &&
		(service == "" || isNumeric(service))
	return keyFor(st, network, ip, port), literal, nil
}

func parsePort(ctx context.Context, r resolver, service string) (uint16, error) {
	if service == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(service, 10, 64)
	if err == nil || isNumeric(service) {
		if err != nil || n < 0 || n > 65535 {
			return 0, fmt.Errorf("%w: %s", ErrPortRange, service)
		}
		return uint16(n), nil
	}
	p, err := r.LookupPort(ctx, "udp", service)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrInvalidAddress, err)
	}
	return uint16(p), nil
}

// isNumeric reports whether s is a signed decimal number, even one too large
// for an int64, so that "99999999999999999999" is out of range rather than an
// unknown service name.
func isNumeric(s string) bool {
	if s != "" && (s[0] == '+' || s[0] == '-') {
		s = s[1:]
	}
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// parseHost returns the IP address for host, or the zero Addr for a
// wildcard.
func parseHost(ctx context.Context, r resolver, network, host string) (netip.Addr, error) {
	if host == "" {
		return netip.Addr{}, nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		ip, err = lookupHost(ctx, r, network, host)
		if err != nil {
			return netip.Addr{}, err
		}
	}
	if ip.Is4In6() {
		ip = ip.Unmap() // Go treats ::ffff:a.b.c.d as the IPv4 address
	}
	if ip, err = kernelZone(ip); err != nil {
		return netip.Addr{}, err
	}
	switch {
	case network == "udp4" && !ip.Is4():
		return netip.Addr{}, fmt.Errorf("%w: IPv6 address %s on network udp4", ErrInvalidAddress, ip)
	case network == "udp6" && ip.Is4():
		return netip.Addr{}, fmt.Errorf("%w: IPv4 address %s on network udp6", ErrInvalidAddress, ip)
	}
	return ip, nil
}

func lookupHost(ctx context.Context, r resolver, network, host string) (netip.Addr, error) {
	lookup := map[string]string{"udp": "ip", "udp4": "ip4", "udp6": "ip6"}[network]
	addrs, err := r.LookupNetIP(ctx, lookup, host)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%w: %w", ErrInvalidAddress, err)
	}
	for _, a := range addrs {
		if a.Unmap().Is4() {
			return a, nil
		}
	}
	if len(addrs) == 0 {
		return netip.Addr{}, fmt.Errorf("%w: no %s address for host %q", ErrInvalidAddress, lookup, host)
	}
	return addrs[0], nil
}

// keyFor returns the key of the socket that a listen on network and ip (the
// zero Addr for a wildcard) binds. It mirrors the choice the net package
// makes, except that a "udp" wildcard is dual-stack wherever the kernel can
// bind one, even when loopback lacks 127.0.0.1 and Go's own probe would fall
// back to an IPv4-only socket.
func keyFor(st stack, network string, ip netip.Addr, port uint16) Key {
	switch {
	case network == "udp4" || network == "udp" && ip.Is4() && !ip.IsUnspecified():
		if !ip.IsValid() {
			ip = netip.IPv4Unspecified()
		}
		return Key{Network: "udp4", Addr: netip.AddrPortFrom(ip, port)}
	case network == "udp6" || ip.Is6() && !ip.IsUnspecified():
		if !ip.IsValid() {
			ip = netip.IPv6Unspecified()
		}
		return Key{Network: "udp6", Addr: netip.AddrPortFrom(ip, port)}
	case st.dualStack:
		return Key{Network: "udp", Addr: netip.AddrPortFrom(netip.IPv6Unspecified(), port)}
	case ip.Is6():
		// "[::]" without dual-stack support: Go binds an IPv6 socket.
		return Key{Network: "udp6", Addr: netip.AddrPortFrom(ip, port)}
	default:
		return Key{Network: "udp4", Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), port)}
	}
}

// kernelZone returns ip with the zone that the kernel binds. An address
// that needs no scope loses its zone, which the kernel ignores ("[::1%lo]"
// binds ::1, "[::%lo]" the wildcard); a link-local one gets its interface
// index, so that "%eth0" and "%2" of the same link are one socket rather
// than two sockets splitting one reuseport group's datagrams.
func kernelZone(ip netip.Addr) (netip.Addr, error) {
	zone := ip.Zone()
	if zone == "" {
		return ip, nil
	}
	if !ip.IsLinkLocalUnicast() && !ip.IsLinkLocalMulticast() && !ip.IsInterfaceLocalMulticast() {
		return ip.WithZone(""), nil
	}
	if n, err := strconv.ParseUint(zone, 10, 32); err == nil && n > 0 {
		return ip.WithZone(strconv.FormatUint(n, 10)), nil
	}
	ifi, err := net.InterfaceByName(zone)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%w: zone %q of %s: %w", ErrInvalidAddress, zone, ip.WithZone(""), err)
	}
	return ip.WithZone(strconv.Itoa(ifi.Index)), nil
}
