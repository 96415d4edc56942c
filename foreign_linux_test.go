package udppool

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"syscall"
	"testing"

	"github.com/udppool/udppool/internal/netns"
	"github.com/udppool/udppool/internal/rawsock"
	"github.com/udppool/udppool/internal/sockdiag"
	"golang.org/x/sys/unix"
)

// sampleSockets are sockets as the kernel lists them (see the sample
// tables of internal/sockdiag): IPv4, then IPv6, which /proc does not
// tell IPv6-only.
var sampleSockets = []sockdiag.Socket{
	{Local: ap("0.0.0.0:443"), Remote: ap("0.0.0.0:0"), UID: 0, Inode: 12345},
	{Local: ap("127.0.0.1:443"), Remote: ap("0.0.0.0:0"), UID: 1000, Inode: 12346},
	{Local: ap("127.0.0.2:443"), Remote: ap("0.0.0.0:0"), UID: 1000, Inode: 12347},
	{Local: ap("127.0.0.1:443"), Remote: ap("127.0.0.1:50000"), UID: 1000, Inode: 12348},
	{Local: ap("0.0.0.0:444"), Remote: ap("0.0.0.0:0"), UID: 0, Inode: 12349},
	{Local: ap("0.0.0.0:443"), Remote: ap("0.0.0.0:0"), UID: 0, Inode: 0},
	{Local: ap("[::]:443"), Remote: ap("[::]:0"), UID: 0, Inode: 22221},
	{Local: ap("[::1]:443"), Remote: ap("[::]:0"), UID: 0, Inode: 22222},
	{Local: ap("[::ffff:127.0.0.1]:443"), Remote: ap("[::]:0"), UID: 33, Inode: 22223},
	{Local: ap("[fe80::1]:443"), Remote: ap("[::]:0"), UID: 0, Inode: 22224},
	{Local: ap("[2001:db8::1]:443"), Remote: ap("[::]:0"), UID: 4294967295, Inode: 22225},
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// TestForeignFilter checks which sockets of the sample tables, and of
// sockets known to be IPv6-only (as sock_diag tells), count as foreign for
// a key.
func TestForeignFilter(t *testing.T) {
	socks := append(slices.Clone(sampleSockets),
		sockdiag.Socket{Local: ap("[::]:443"), Remote: ap("[::]:0"), V6Only: true, Inode: 33331},
		sockdiag.Socket{Local: ap("[::1]:443"), Remote: ap("[::]:0"), V6Only: true, Inode: 33332},
	)
	k := func(network, addr string) Key { return Key{Network: network, Addr: ap(addr)} }
	tests := []struct {
		key  Key
		ours map[uint64]bool
		want []uint64
	}{
		// Dual-stack: everything on the port but the connected socket
		// (12348), the other port (12349) and inode 0.
		{k("udp", "[::]:443"), nil, []uint64{12345, 12346, 12347, 22221, 22222, 22223, 22224, 22225, 33331, 33332}},
		{k("udp", "[::]:443"), map[uint64]bool{12345: true, 22221: true}, []uint64{12346, 12347, 22222, 22223, 22224, 22225, 33331, 33332}},
		// IPv4 keys: IPv4 sockets that cover or are covered, [::] unless
		// known to be IPv6-only, and the IPv4-mapped socket of its address.
		{k("udp4", "0.0.0.0:443"), nil, []uint64{12345, 12346, 12347, 22221, 22223}},
		{k("udp4", "127.0.0.1:443"), nil, []uint64{12345, 12346, 22221, 22223}},
		{k("udp4", "127.0.0.2:443"), nil, []uint64{12345, 12347, 22221}},
		{k("udp4", "0.0.0.0:444"), nil, []uint64{12349}},
		{k("udp4", "0.0.0.0:445"), nil, nil},
		// IPv6-only keys: no IPv4 socket, not the IPv4-mapped one.
		{k("udp6", "[::]:443"), nil, []uint64{22221, 22222, 22224, 22225, 33331, 33332}},
		{k("udp6", "[::1]:443"), nil, []uint64{22221, 22222, 33331, 33332}},
		// The zone is not compared: a zoned key matches the bare address.
		{k("udp6", "[fe80::1%eth0]:443"), nil, []uint64{22221, 22224, 33331}},
	}
	for _, tt := range tests {
		var got []uint64
		for _, f := range filterForeign(tt.key, tt.ours, socks) {
			got = append(got, f.Inode)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("foreign sockets of %v (ours %v): inodes %v, want %v", tt.key, tt.ours, got, tt.want)
		}
	}

	got := filterForeign(k("udp", "[::]:443"), nil, socks[len(socks)-7:])
	want := []ForeignSocket{
		{Network: "udp", Local: ap("[::]:443"), Inode: 22221, UID: 0},
		{Network: "udp6", Local: ap("[::1]:443"), Inode: 22222, UID: 0},
		{Network: "udp6", Local: ap("[::ffff:127.0.0.1]:443"), Inode: 22223, UID: 33},
		{Network: "udp6", Local: ap("[fe80::1]:443"), Inode: 22224, UID: 0},
		{Network: "udp6", Local: ap("[2001:db8::1]:443"), Inode: 22225, UID: 4294967295},
		{Network: "udp6", Local: ap("[::]:443"), Inode: 33331, UID: 0},
		{Network: "udp6", Local: ap("[::1]:443"), Inode: 33332, UID: 0},
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if s := (ForeignSocket{Network: "udp4", Local: ap("0.0.0.0:443"), Inode: 12345}).String(); s != "udp4 0.0.0.0:443 (inode 12345, uid 0)" {
		t.Errorf("String() = %q", s)
	}
	if s := want[2].String(); s != "udp6 [::ffff:127.0.0.1]:443 (inode 22223, uid 33)" {
		t.Errorf("String() = %q", s)
	}
}

func TestForeignInvalidKey(t *testing.T) {
	if fs, err := foreignSockets(Key{}, nil); err == nil {
		t.Errorf("invalid key: %v, no error", fs)
	}
	if fs, err := foreignSockets(Key{Network: "udp4", Addr: ap("0.0.0.0:0")}, nil); err != nil || fs != nil {
		t.Errorf("port 0: %v, %v; want nothing", fs, err)
	}
}

type syscaller interface {
	SyscallConn() (syscall.RawConn, error)
}

func inodeOf(t *testing.T, c syscaller) uint64 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	ino, err := socketInode(rc)
	if err != nil {
		t.Fatalf("socketInode: %v", err)
	}
	return ino
}

// TestForeignSocketInode checks socketInode against the descriptor's link
// in /proc/self/fd, for a pooled socket, and that it refuses a non-socket.
func TestForeignSocketInode(t *testing.T) {
	needIPv4(t)
	p := newPool(t)
	c := listen(t, p, "udp4", "127.0.0.1:0")
	defer c.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var link string
	var lerr error
	if err := rc.Control(func(fd uintptr) { link, lerr = os.Readlink("/proc/self/fd/" + strconv.Itoa(int(fd))) }); err != nil {
		t.Fatal(err)
	}
	if lerr != nil {
		t.Fatal(lerr)
	}
	if ino := inodeOf(t, c); link != fmt.Sprintf("socket:[%d]", ino) {
		t.Errorf("socketInode = %d, descriptor links to %s", ino, link)
	}

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if ino, err := tryInodeOf(r); err == nil {
		t.Errorf("socketInode of a pipe = %d, no error", ino)
	}
}

func tryInodeOf(c syscaller) (uint64, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	return socketInode(rc)
}

// listenFixed acquires a fixed port through p, so that the pooled socket
// has SO_REUSEPORT (port 0 sockets do not): it takes a port from a port 0
// socket, releases it, and binds it again.
func listenFixed(t *testing.T, p *Pool, network, host string) *Conn {
	t.Helper()
	eph := listen(t, p, network, net.JoinHostPort(host, "0"))
	port := strconv.Itoa(int(eph.Key().Addr.Port()))
	eph.Close()
	c := listen(t, p, network, net.JoinHostPort(host, port))
	t.Cleanup(func() { c.Close() })
	return c
}

func setReusePort(_, _ string, rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	return serr
}

// foreignListen binds an unpooled socket, with SO_REUSEPORT if reuse, as
// another process would, closed at the end of the test. Network "udp" with
// address "[::]:P" is dual-stack, "udp6" with "[::]:P" IPv6-only.
func foreignListen(t *testing.T, reuse bool, network string, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	var lc net.ListenConfig
	if reuse {
		lc.Control = setReusePort
	}
	pc, err := lc.ListenPacket(context.Background(), network, addr.String())
	if err != nil {
		t.Fatalf("foreign socket %s %v: %v", network, addr, err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.(*net.UDPConn)
}

// foreignOf is what foreignSockets should report for c, found without
// the code under test: the network from the socket's family, address and
// IPV6_V6ONLY.
func foreignOf(t *testing.T, c syscaller) ForeignSocket {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var sa unix.Sockaddr
	var v6only int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		if sa, serr = unix.Getsockname(int(fd)); serr == nil {
			if _, ok := sa.(*unix.SockaddrInet6); ok {
				v6only, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	f := ForeignSocket{Inode: inodeOf(t, c), UID: uint32(os.Getuid())}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		f.Network, f.Local = "udp4", netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		f.Network, f.Local = "udp6", netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
		if f.Local.Addr().IsUnspecified() && v6only == 0 {
			f.Network = "udp"
		}
	default:
		t.Fatalf("socket address %T", sa)
	}
	return f
}

// checkForeign checks that foreignSockets reports exactly want for k,
// in any order.
func checkForeign(t *testing.T, k Key, ours map[uint64]bool, want ...ForeignSocket) {
	t.Helper()
	got, err := foreignSockets(k, ours)
	if err != nil {
		t.Fatalf("foreignSockets(%v): %v", k, err)
	}
	byInode := func(a, b ForeignSocket) int { return cmp.Compare(a.Inode, b.Inode) }
	slices.SortFunc(got, byInode)
	want = slices.Clone(want)
	slices.SortFunc(want, byInode)
	if !slices.Equal(got, want) {
		t.Errorf("foreign sockets of %v:\n got %v\nwant %v", k, got, want)
	}
}

// TestForeignSocketsDualStack binds, beside a pooled dual-stack socket,
// the foreign sockets that join or split its reuseport group: the same
// [::]:P, udp4 0.0.0.0:P (which takes every IPv4 datagram), udp4
// 127.0.0.1:P and udp6 [::1]:P; and sockets that must not be reported: the
// pool's own, sockets on other ports, and a connected socket on the port.
func TestForeignSocketsDualStack(t *testing.T) {
	needIPv4(t)
	needIPv6(t)
	p := newPool(t)
	c := listenFixed(t, p, "udp", "")
	k := c.Key()
	if !k.dualStack() {
		t.Skipf("host binds %v, not a dual-stack socket", k)
	}
	P := k.Addr.Port()
	own := inodeOf(t, c)
	ours := map[uint64]bool{own: true}

	checkForeign(t, k, ours)
	// Without ours, the pool's socket itself is listed, under its inode.
	checkForeign(t, k, nil, ForeignSocket{Network: "udp", Local: netip.AddrPortFrom(netip.IPv6Unspecified(), P), Inode: own, UID: uint32(os.Getuid())})

	// Other ports are not reported.
	foreignListen(t, false, "udp", ap("[::]:0"))
	foreignListen(t, false, "udp4", ap("0.0.0.0:0"))
	foreignListen(t, false, "udp4", ap("127.0.0.1:0"))
	checkForeign(t, k, ours)

	var want []ForeignSocket
	for _, f := range []struct {
		network string
		addr    netip.AddrPort
	}{
		{"udp", netip.AddrPortFrom(netip.IPv6Unspecified(), P)},
		{"udp4", netip.AddrPortFrom(netip.IPv4Unspecified(), P)},
		{"udp4", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), P)},
		{"udp6", netip.AddrPortFrom(netip.IPv6Loopback(), P)},
	} {
		fc := foreignListen(t, true, f.network, f.addr)
		fs := foreignOf(t, fc)
		if fs.Network != f.network || fs.Local != f.addr {
			t.Fatalf("foreign socket %s %v is %v", f.network, f.addr, fs)
		}
		want = append(want, fs)
		checkForeign(t, k, ours, want...)
	}

	// A connected socket on the port takes only its peer's datagrams.
	d := net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), P)), Control: setReusePort}
	peer := foreignListen(t, false, "udp4", ap("127.0.0.1:0"))
	conn, err := d.Dial("udp4", peer.LocalAddr().String())
	if err != nil {
		t.Fatalf("connected socket on port %d: %v", P, err)
	}
	defer conn.Close()
	checkForeign(t, k, ours, want...)
}

// TestForeignSocketsSpecific checks a pooled udp4 127.0.0.1:P: the foreign
// 127.0.0.1:P, 0.0.0.0:P, dual-stack [::]:P and [::ffff:127.0.0.1]:P are
// reported; 127.0.0.2:P, [::1]:P and an IPv6-only [::]:P are not.
func TestForeignSocketsSpecific(t *testing.T) {
	needIPv4(t)
	p := newPool(t)
	c := listenFixed(t, p, "udp4", "127.0.0.1")
	k := c.Key()
	if k != (Key{Network: "udp4", Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), k.Addr.Port())}) {
		t.Fatalf("key %v", k)
	}
	P := k.Addr.Port()
	ours := map[uint64]bool{inodeOf(t, c): true}
	at := func(ip string) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr(ip), P) }

	foreignListen(t, true, "udp4", at("127.0.0.2"))
	checkForeign(t, k, ours)
	want := []ForeignSocket{foreignOf(t, foreignListen(t, true, "udp4", at("127.0.0.1")))}
	checkForeign(t, k, ours, want...)
	want = append(want, foreignOf(t, foreignListen(t, true, "udp4", at("0.0.0.0"))))
	checkForeign(t, k, ours, want...)

	needIPv6(t)
	foreignListen(t, true, "udp6", at("::1"))
	checkForeign(t, k, ours, want...)
	v6only := foreignOf(t, rawsock.Bind(t, at("::"), true))
	if v6only.Network != "udp6" {
		t.Fatalf("IPv6-only socket is %v", v6only)
	}
	checkForeign(t, k, ours, want...)
	dual := foreignOf(t, rawsock.Bind(t, at("::"), false))
	if dual.Network != "udp" {
		t.Fatalf("dual-stack socket is %v", dual)
	}
	want = append(want, dual)
	checkForeign(t, k, ours, want...)

	// An IPv6 socket bound to the IPv4-mapped address receives that
	// address's IPv4 datagrams. The net package refuses to bind one.
	mapped := foreignOf(t, rawsock.Bind(t, at("::ffff:127.0.0.1"), false))
	if mapped.Network != "udp6" || mapped.Local != at("::ffff:127.0.0.1") {
		t.Fatalf("IPv4-mapped socket is %v", mapped)
	}
	want = append(want, mapped)
	checkForeign(t, k, ours, want...)
}

// TestForeignSocketsNamespace checks that foreignSockets reads the socket
// tables of the calling thread's network namespace, not the process's
// (internal/sockdiag checks its readers there too).
func TestForeignSocketsNamespace(t *testing.T) {
	needIPv4(t)
	p := newPool(t)
	c := listenFixed(t, p, "udp4", "127.0.0.1")
	k := c.Key()
	own := inodeOf(t, c)
	ns, err := netns.New()
	if errors.Is(err, netns.ErrUnsupported) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })

	var inner *net.UDPConn
	var got []ForeignSocket
	err = ns.Do(func() error {
		// The namespace has its own ports: no reuse needed.
		pc, err := net.ListenPacket("udp4", k.Addr.String())
		if err != nil {
			return err
		}
		inner = pc.(*net.UDPConn)
		got, err = foreignSockets(k, nil)
		return err
	})
	if inner != nil {
		t.Cleanup(func() { inner.Close() })
	}
	if err != nil {
		t.Fatal(err)
	}
	if want := []ForeignSocket{foreignOf(t, inner)}; !slices.Equal(got, want) {
		t.Errorf("in the namespace: foreign sockets %v, want %v", got, want)
	}
	// Outside, only the pool's socket is on the port.
	checkForeign(t, k, nil, ForeignSocket{Network: "udp4", Local: k.Addr, Inode: own, UID: uint32(os.Getuid())})
}
