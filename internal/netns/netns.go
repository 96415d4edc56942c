// Package netns gives tests throw-away Linux network namespaces, so that
// code needing a particular network (IPv4 only, IPv6 only, two hosts on
// a link) can be exercised without touching the host's own network
// configuration. Everything a test creates lives inside namespaces that
// vanish once closed; nothing is named in /var/run/netns and no interface
// ever appears in the host namespace.
//
// Only Linux is supported, and creating namespaces needs root (or
// CAP_SYS_ADMIN). Elsewhere every function returns an error wrapping
// ErrUnsupported, so a test can start with:
//
//	if err := netns.Available(); err != nil {
//		t.Skip(err)
//	}
//
// Namespaces, links and addresses are set up through netlink
// (github.com/vishvananda/netlink) and sysctls through /proc/sys: no
// external command is run.
package netns

import (
	"errors"
	"fmt"
	"net/netip"
)

// ErrUnsupported is wrapped by every error that means "this machine or
// process cannot provide namespaces", as opposed to a failure of the code
// under test, so that callers can skip instead of failing.
var ErrUnsupported = errors.New("netns: network namespaces unsupported")

// ErrClosed is returned by methods of an NS after Close, so a test that
// races its own cleanup gets a clear error rather than entering a
// namespace whose descriptor may have been reused.
var ErrClosed = errors.New("netns: namespace closed")

// Iface is the name of the veth interface of each of the two Hosts. Both
// ends share the name because each lives in its own namespace; tests can
// use it to change the link through NS.Netlink (Linux only).
const Iface = "veth0"

// Kind selects which IP families the simulated Hosts have, because code
// that picks between IPv4 and IPv6 must be tested on hosts that lack one.
type Kind int

const (
	// IPv4Only hosts have IPv6 disabled by sysctl, so not even ::1 exists:
	// like a kernel or container without IPv6.
	IPv4Only Kind = iota + 1
	// IPv6Only hosts have no IPv4 address at all, not even 127.0.0.1, so
	// no specific IPv4 or IPv4-mapped address can be bound, as on a real
	// IPv6-only host.
	IPv6Only
	// DualStack hosts have both families, like most machines.
	DualStack
)

// Kinds lists every Kind, so tests can loop over them.
var Kinds = []Kind{IPv4Only, IPv6Only, DualStack}

// String returns the constant's name, which is used as subtest name.
func (k Kind) String() string {
	switch k {
	case IPv4Only:
		return "IPv4Only"
	case IPv6Only:
		return "IPv6Only"
	case DualStack:
		return "DualStack"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// HasIPv4 reports whether hosts of this kind have IPv4 addresses, so that
// tests can decide which round trips to expect to work.
func (k Kind) HasIPv4() bool { return k == IPv4Only || k == DualStack }

// HasIPv6 reports whether hosts of this kind have IPv6 addresses.
func (k Kind) HasIPv6() bool { return k == IPv6Only || k == DualStack }

// Addresses of the simulated hosts. They come from the documentation
// ranges (RFC 5737 TEST-NET-1 and RFC 3849), which never route anywhere
// real, so a mistake cannot send traffic off the machine.
var (
	serverV4 = netip.MustParsePrefix("192.0.2.1/24")
	clientV4 = netip.MustParsePrefix("192.0.2.2/24")
	serverV6 = netip.MustParsePrefix("2001:db8::1/64")
	clientV6 = netip.MustParsePrefix("2001:db8::2/64")
)

// Hosts are two simulated machines, Server and Client, each in its own
// network namespace and joined by a veth pair named Iface at both ends.
//
// Every host has loopback up and Iface up, with only these addresses and
// the routes the kernel derives from them: the link's own prefix and
// loopback, no default route, so anything off the link is unreachable.
//
//	Kind       lo                  Iface on Server (Client)
//	IPv4Only   127.0.0.1/8         192.0.2.1/24 (.2)
//	IPv6Only   ::1/128             2001:db8::1/64 (::2), an fe80::/64 link-local
//	DualStack  127.0.0.1/8 ::1/128 all of the above
//
// IPv4Only sets net.ipv6.conf.{all,default}.disable_ipv6=1 before the
// veth exists, so there is no IPv6 address anywhere, ::1 and link-local
// included; AF_INET6 sockets can still be created and bound to [::], and
// a dual-stack one still carries IPv4. IPv6Only deletes 127.0.0.1/8 from
// lo: AF_INET sockets can still be created, but nothing IPv4 can be bound
// except 0.0.0.0, and sending IPv4 fails with "network is unreachable".
// The IPv6 global addresses are added with nodad, so they are usable at
// once. No other sysctl is changed.
type Hosts struct {
	// Kind is the kind asked of NewHosts.
	Kind Kind
	// Server and Client are the two namespaces; sockets must be created
	// inside their Do to belong to them.
	Server, Client *NS
	// ServerV4 and ClientV4 are the IPv4 addresses on Iface; they are the
	// zero netip.Addr (IsValid false) when the Kind has no IPv4.
	ServerV4, ClientV4 netip.Addr
	// ServerV6 and ClientV6 are the IPv6 addresses on Iface; they are the
	// zero netip.Addr when the Kind has no IPv6.
	ServerV6, ClientV6 netip.Addr
}

// Close closes both namespaces. The kernel destroys each one, and with it
// the veth pair, once no thread or socket refers to it any more, so
// sockets created inside must be closed too. Close is idempotent.
func (h *Hosts) Close() error {
	var errs []error
	for _, n := range []*NS{h.Server, h.Client} {
		if n != nil {
			errs = append(errs, n.Close())
		}
	}
	return errors.Join(errs...)
}
