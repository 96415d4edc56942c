package sockdiag

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

	"go.uber.org/goleak"
	"golang.org/x/net/nettest"
	"golang.org/x/sys/unix"

	"github.com/udppool/udppool/internal/netns"
	"github.com/udppool/udppool/internal/rawsock"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func needIPv4(t *testing.T) {
	t.Helper()
	if !nettest.SupportsIPv4() {
		t.Skip("host has no IPv4 loopback")
	}
}

func needIPv6(t *testing.T) {
	t.Helper()
	if !nettest.SupportsIPv6() {
		t.Skip("host has no IPv6 loopback")
	}
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

// listen binds a UDP socket, with SO_REUSEPORT if reuse, closed at the
// end of the test. Network "udp6" sets IPV6_V6ONLY.
func listen(t *testing.T, reuse bool, network string, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	var lc net.ListenConfig
	if reuse {
		lc.Control = setReusePort
	}
	pc, err := lc.ListenPacket(context.Background(), network, addr.String())
	if err != nil {
		t.Fatalf("%s %v: %v", network, addr, err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.(*net.UDPConn)
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
	ino, err := Inode(rc)
	if err != nil {
		t.Fatalf("Inode: %v", err)
	}
	return ino
}

func portOf(c *net.UDPConn) uint16 { return c.LocalAddr().(*net.UDPAddr).AddrPort().Port() }

// TestInode checks Inode against the descriptor's link in /proc/self/fd,
// and that it refuses a pipe and a closed socket.
func TestInode(t *testing.T) {
	needIPv4(t)
	c := listen(t, false, "udp4", ap("127.0.0.1:0"))
	ino := inodeOf(t, c)
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var link string
	rc.Control(func(fd uintptr) { link, err = os.Readlink("/proc/self/fd/" + strconv.Itoa(int(fd))) })
	if err != nil {
		t.Fatal(err)
	}
	if want := "socket:[" + strconv.FormatUint(ino, 10) + "]"; link != want {
		t.Errorf("Inode = %d, descriptor links to %s", ino, link)
	}

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	defer r.Close()
	prc, err := r.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if ino, err := Inode(prc); err == nil {
		t.Errorf("Inode of a pipe = %d, no error", ino)
	}
	c.Close()
	if ino, err := Inode(rc); err == nil {
		t.Errorf("Inode of a closed socket = %d, no error", ino)
	}
}

// TestList checks that List lists the sockets on one port, IPv4 and IPv6,
// connected ones too, that port 0 lists every port, and that a closed
// socket is gone.
func TestList(t *testing.T) {
	needIPv4(t)
	a := listen(t, true, "udp4", ap("127.0.0.1:0"))
	P := portOf(a)
	at := func(ip string) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr(ip), P) }
	b := listen(t, true, "udp4", at("0.0.0.0"))
	other := listen(t, false, "udp4", ap("127.0.0.1:0"))
	d := net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(at("127.0.0.1")), Control: setReusePort}
	conn, err := d.Dial("udp4", other.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	want := []Socket{
		{Local: at("127.0.0.1"), Remote: ap("0.0.0.0:0"), UID: uint32(os.Getuid()), Inode: inodeOf(t, a)},
		{Local: at("0.0.0.0"), Remote: ap("0.0.0.0:0"), UID: uint32(os.Getuid()), Inode: inodeOf(t, b)},
		{Local: at("127.0.0.1"), Remote: other.LocalAddr().(*net.UDPAddr).AddrPort(), UID: uint32(os.Getuid()), Inode: inodeOf(t, conn.(*net.UDPConn))},
	}
	if nettest.SupportsIPv6() {
		c := listen(t, true, "udp6", at("::1"))
		want = append(want, Socket{Local: at("::1"), Remote: ap("[::]:0"), V6Only: true, UID: uint32(os.Getuid()), Inode: inodeOf(t, c)})
	}
	ours := map[uint64]bool{}
	for _, s := range want {
		ours[s.Inode] = true
	}
	byInode := func(a, b Socket) int { return cmp.Compare(a.Inode, b.Inode) }
	slices.SortFunc(want, byInode)

	got, err := List(P)
	if err != nil {
		t.Fatalf("List(%d): %v", P, err)
	}
	// Another process of this user may share the port (SO_REUSEPORT):
	// only ours are compared.
	if slices.ContainsFunc(got, func(s Socket) bool { return s.Local.Port() != P }) {
		t.Errorf("List(%d) lists other ports: %+v", P, got)
	}
	got = slices.DeleteFunc(got, func(s Socket) bool { return !ours[s.Inode] })
	slices.SortFunc(got, byInode)
	if !slices.Equal(got, want) {
		t.Errorf("List(%d):\n got %+v\nwant %+v", P, got, want)
	}
	for _, s := range got {
		if s.Connected() != (s.Inode == inodeOf(t, conn.(*net.UDPConn))) {
			t.Errorf("%+v: Connected() = %v", s, s.Connected())
		}
	}

	all, err := List(0)
	if err != nil {
		t.Fatalf("List(0): %v", err)
	}
	for _, c := range []*net.UDPConn{a, other} {
		if !slices.ContainsFunc(all, func(s Socket) bool { return s.Inode == inodeOf(t, c) }) {
			t.Errorf("List(0) lacks %v", c.LocalAddr())
		}
	}

	ino := inodeOf(t, b)
	b.Close()
	got, err = List(P)
	if err != nil || slices.ContainsFunc(got, func(s Socket) bool { return s.Inode == ino }) {
		t.Errorf("after Close: List(%d) = %+v, %v; want no inode %d", P, got, err, ino)
	}
}

// TestDiagAgreesWithProc binds sockets of every kind on one port and
// checks that sock_diag and the /proc fallback list the same sockets, and
// that only sock_diag tells an IPv6-only [::] from a dual-stack one.
func TestDiagAgreesWithProc(t *testing.T) {
	needIPv4(t)
	needIPv6(t)
	first := listen(t, true, "udp4", ap("127.0.0.1:0"))
	P := portOf(first)
	at := func(ip string) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr(ip), P) }
	v6only := rawsock.Bind(t, at("::"), true)
	dual := rawsock.Bind(t, at("::"), false)
	mapped := rawsock.Bind(t, at("::ffff:127.0.0.1"), false)
	loop6 := listen(t, true, "udp6", at("::1")) // package net sets IPV6_V6ONLY
	any4 := listen(t, true, "udp4", at("0.0.0.0"))
	peer := listen(t, false, "udp4", ap("127.0.0.1:0"))
	d := net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(at("127.0.0.1")), Control: setReusePort}
	conn, err := d.Dial("udp4", peer.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Only these are compared: another process of this user may share the
	// port (SO_REUSEPORT), and its sockets may come and go between reads.
	ours := map[uint64]bool{}
	for _, c := range []syscaller{first, v6only, dual, mapped, loop6, any4, conn.(*net.UDPConn)} {
		ours[inodeOf(t, c)] = true
	}
	mine := func(socks []Socket) []Socket {
		socks = slices.DeleteFunc(socks, func(s Socket) bool { return !ours[s.Inode] })
		slices.SortFunc(socks, func(a, b Socket) int { return cmp.Compare(a.Inode, b.Inode) })
		return socks
	}

	diag, err := diagUDP(P)
	if err != nil {
		t.Fatalf("sock_diag: %v", err)
	}
	if slices.ContainsFunc(diag, func(s Socket) bool { return s.Local.Port() != P }) {
		t.Errorf("sock_diag lists sockets on other ports than %d: %+v", P, diag)
	}
	all, err := procUDP()
	if err != nil {
		t.Fatalf("/proc: %v", err)
	}
	diag, proc := mine(diag), mine(all)
	if len(diag) != len(ours) {
		t.Errorf("sock_diag lists %d of the %d sockets on port %d: %+v", len(diag), len(ours), P, diag)
	}
	got := slices.Clone(diag)
	only := []uint64{inodeOf(t, v6only), inodeOf(t, loop6)}
	for i := range got {
		if got[i].V6Only != slices.Contains(only, got[i].Inode) {
			t.Errorf("sock_diag: %+v has V6Only %v", got[i], got[i].V6Only)
		}
		got[i].V6Only = false // /proc cannot tell
	}
	if !slices.Equal(got, proc) {
		t.Errorf("sock_diag and /proc disagree:\n%+v\n%+v", diag, proc)
	}
}

// TestFallback checks that /proc is read where sock_diag is unavailable,
// and only there, and that the fallback keeps to the port too.
func TestFallback(t *testing.T) {
	needIPv4(t)
	c := listen(t, false, "udp4", ap("127.0.0.1:0"))
	other := listen(t, false, "udp4", ap("127.0.0.1:0"))
	P := portOf(c)
	unavailable := func(uint16) ([]Socket, error) {
		return nil, fmt.Errorf("%w: %w", errNoSockDiag, unix.EPROTONOSUPPORT)
	}
	socks, err := list(P, unavailable)
	if err != nil || !slices.ContainsFunc(socks, func(s Socket) bool { return s.Inode == inodeOf(t, c) }) ||
		slices.ContainsFunc(socks, func(s Socket) bool { return s.Local.Port() != P }) {
		t.Errorf("without sock_diag: %+v, %v; want those of /proc on port %d, with %v", socks, err, P, c.LocalAddr())
	}
	socks, err = list(0, unavailable)
	if err != nil || !slices.ContainsFunc(socks, func(s Socket) bool { return s.Inode == inodeOf(t, other) }) {
		t.Errorf("without sock_diag, every port: %d sockets, %v; want %v among them", len(socks), err, other.LocalAddr())
	}
	failing := func(uint16) ([]Socket, error) { return nil, unix.ENOBUFS }
	if socks, err := list(P, failing); !errors.Is(err, unix.ENOBUFS) {
		t.Errorf("failing sock_diag: %d sockets, %v; want its error", len(socks), err)
	}
}

// TestNamespace checks that List and the /proc fallback read the socket
// tables of the calling thread's network namespace, not the process's.
func TestNamespace(t *testing.T) {
	needIPv4(t)
	outer := listen(t, false, "udp4", ap("127.0.0.1:0"))
	P := portOf(outer)
	ns, err := netns.New()
	if errors.Is(err, netns.ErrUnsupported) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })

	var inner *net.UDPConn
	var listed, proc []Socket
	err = ns.Do(func() error {
		// The namespace has its own ports: the same one is free there.
		pc, err := net.ListenPacket("udp4", outer.LocalAddr().String())
		if err != nil {
			return err
		}
		inner = pc.(*net.UDPConn)
		if listed, err = List(P); err != nil {
			return err
		}
		proc, err = procUDP()
		return err
	})
	if inner != nil {
		t.Cleanup(func() { inner.Close() })
	}
	if err != nil {
		t.Fatal(err)
	}
	in, out := inodeOf(t, inner), inodeOf(t, outer)
	if len(listed) != 1 || listed[0].Inode != in {
		t.Errorf("in the namespace: List(%d) = %+v, want only the socket %d", P, listed, in)
	}
	if len(proc) != 1 || proc[0].Inode != in {
		t.Errorf("in the namespace: /proc lists %+v, want only the socket %d", proc, in)
	}
	listed, err = List(P)
	if err != nil || !slices.ContainsFunc(listed, func(s Socket) bool { return s.Inode == out }) ||
		slices.ContainsFunc(listed, func(s Socket) bool { return s.Inode == in }) {
		t.Errorf("outside: List(%d) = %+v, %v; want %d and not %d", P, listed, err, out, in)
	}
}
