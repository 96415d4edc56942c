package udppooltest

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/udppool/udppool/internal/netns"
)

// A HostKind selects which IP families a simulated host has, because code
// that chooses between IPv4 and IPv6 must be tested on hosts lacking one.
type HostKind int

const (
	// IPv4Only hosts have no IPv6 at all, not even ::1 or a link-local
	// address, like a kernel or container with IPv6 disabled.
	IPv4Only HostKind = iota + 1
	// IPv6Only hosts have no IPv4 address at all, not even 127.0.0.1, like
	// a real IPv6-only machine.
	IPv6Only
	// DualStack hosts have both families, like most machines.
	DualStack
)

// HostKinds returns every HostKind, for tests that loop over them.
func HostKinds() []HostKind { return []HostKind{IPv4Only, IPv6Only, DualStack} }

// String returns the constant's name, fit for a subtest name.
func (k HostKind) String() string {
	if nk, ok := k.netns(); ok {
		return nk.String()
	}
	return fmt.Sprintf("HostKind(%d)", int(k))
}

// HasIPv4 reports whether hosts of kind k have IPv4 addresses.
func (k HostKind) HasIPv4() bool { return k == IPv4Only || k == DualStack }

// HasIPv6 reports whether hosts of kind k have IPv6 addresses.
func (k HostKind) HasIPv6() bool { return k == IPv6Only || k == DualStack }

func (k HostKind) netns() (netns.Kind, bool) {
	switch k {
	case IPv4Only:
		return netns.IPv4Only, true
	case IPv6Only:
		return netns.IPv6Only, true
	case DualStack:
		return netns.DualStack, true
	}
	return 0, false
}

// A SimHost is a pair of simulated machines, a server and a client, each in
// a Linux network namespace of its own and joined by a virtual Ethernet
// link (a veth pair, named veth0 at both ends). Nothing of it appears in
// the machine's own network configuration: no interface, address, route or
// sysctl of the host is touched, and no namespace is named in
// /var/run/netns. The namespaces, and the link with them, vanish at
// cleanup once the sockets created inside have been closed.
//
// Both machines have loopback and veth0 up, with only the addresses below
// and the routes the kernel derives from them (the link's prefix and
// loopback; no default route, so nothing beyond the link is reachable):
//
//	Kind       loopback              veth0: server (client)
//	IPv4Only   127.0.0.1/8           192.0.2.1/24 (192.0.2.2/24)
//	IPv6Only   ::1/128               2001:db8::1/64 (2001:db8::2/64), plus fe80::/64 link-local
//	DualStack  127.0.0.1/8, ::1/128  all of the above
//
// On IPv4Only machines IPv6 is disabled by sysctl (net.ipv6.conf.all and
// .default disable_ipv6) before the link exists, so there is no IPv6
// address anywhere, ::1 and link-local included; IPv6 sockets can still be
// created and bound to [::], and a dual-stack one still carries IPv4.
// On IPv6Only machines 127.0.0.1 is removed from loopback: IPv4 sockets can
// still be created, but nothing IPv4 can be bound except 0.0.0.0, and
// sending IPv4 fails with "network is unreachable". The IPv6 addresses are
// usable at once (no duplicate address detection). The addresses come from
// the documentation ranges (RFC 5737, RFC 3849), which route nowhere real.
//
// A socket belongs to the namespace it was created in, so create sockets
// inside InServer or InClient; they can be used from anywhere afterwards.
type SimHost struct {
	// Kind is the kind asked of Host.
	Kind HostKind
	// ServerV4 and ClientV4 are the IPv4 addresses on veth0 of the server
	// and the client: 192.0.2.1 and 192.0.2.2, or the zero netip.Addr
	// when Kind has no IPv4.
	ServerV4, ClientV4 netip.Addr
	// ServerV6 and ClientV6 are the IPv6 addresses on veth0: 2001:db8::1
	// and 2001:db8::2, or the zero netip.Addr when Kind has no IPv6.
	ServerV6, ClientV6 netip.Addr

	hosts *netns.Hosts
}

// Host builds a simulated server and client machine of the given kind,
// removed at cleanup; see SimHost for what they look like.
//
// It needs Linux and root or CAP_SYS_ADMIN, to create network namespaces;
// everything is set up through netlink, with no external command. Where
// namespaces cannot be created the test is skipped with the reason; other
// failures fail the test.
func Host(t testing.TB, kind HostKind) *SimHost {
	t.Helper()
	nk, ok := kind.netns()
	if !ok {
		t.Fatalf("udppooltest: Host of unknown %v", kind)
	}
	if err := netns.Available(); err != nil {
		t.Skipf("udppooltest: a simulated %v host needs network namespaces: %v", kind, err)
	}
	h, err := netns.NewHosts(nk)
	if errors.Is(err, netns.ErrUnsupported) {
		t.Skipf("udppooltest: simulated %v host: %v", kind, err)
	}
	if err != nil {
		t.Fatalf("udppooltest: building a simulated %v host: %v", kind, err)
	}
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf("udppooltest: removing the simulated %v host: %v", kind, err)
		}
	})
	return &SimHost{
		Kind:     kind,
		ServerV4: h.ServerV4, ClientV4: h.ClientV4,
		ServerV6: h.ServerV6, ClientV6: h.ClientV6,
		hosts: h,
	}
}

// InServer runs fn inside the server machine and returns its error. fn
// runs on an OS thread of its own that has joined the server's namespace,
// so the sockets fn creates itself, synchronously, belong to the server
// machine; they may be used from any goroutine afterwards. Goroutines
// started by fn run outside, in the host's namespace: create sockets in fn
// itself. Whatever else looks at the network (net.Interfaces, child
// processes) must run in fn too.
//
// fn must not call t.Fatal, t.FailNow, t.Skip or the helpers of this
// package that take a testing.TB: report failures through the returned
// error instead.
func (h *SimHost) InServer(fn func() error) error { return h.hosts.Server.Do(fn) }

// InClient is like InServer, in the client machine.
func (h *SimHost) InClient(fn func() error) error { return h.hosts.Client.Do(fn) }

// addrs returns the server's and the client's veth addresses for network
// ("udp4", "udp6", or "udp": IPv4 if the kind has it, else IPv6).
func (h *SimHost) addrs(network string) (server, client netip.Addr, err error) {
	switch {
	case network == "udp4" && h.Kind.HasIPv4(), network == "udp" && h.Kind.HasIPv4():
		return h.ServerV4, h.ClientV4, nil
	case network == "udp6" && h.Kind.HasIPv6(), network == "udp" && h.Kind.HasIPv6():
		return h.ServerV6, h.ClientV6, nil
	case network == "udp4", network == "udp6":
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("a simulated %v host has no %s address", h.Kind, network)
	}
	return netip.Addr{}, netip.Addr{}, fmt.Errorf("unknown network %q (want \"udp\", \"udp4\" or \"udp6\")", network)
}
