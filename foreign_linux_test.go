package udppool

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/udppool/udppool/internal/netns"
	"golang.org/x/sys/unix"
)

// Sample socket tables as a little-endian host prints them.
const (
	sampleUDP = `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  109: 00000000:01BB 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 12345 2 0000000000000000 0
  110: 0100007F:01BB 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 12346 2 0000000000000000 0
  111: 0200007F:01BB 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 12347 2 0000000000000000 0

  112: 0100007F:01BB 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 12348 2 0000000000000000 0
  113: 00000000:01BC 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 12349 2 0000000000000000 0
  114: 00000000:01BB 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 0 2 0000000000000000 0
`
	sampleUDP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  200: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 22221 2 0000000000000000 0
  201: 00000000000000000000000001000000:01BB 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 22222 2 0000000000000000 0
  202: 0000000000000000FFFF00000100007F:01BB 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000    33        0 22223 2 0000000000000000 0
  203: 000080FE000000000000000001000000:01BB 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 22224 2 0000000000000000 0
  204: B80D0120000000000000000001000000:01BB 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000 4294967295        0 22225 2 0000000000000000 0
`
)

func parseSample(t *testing.T, text string, v6 bool) []udpSocket {
	t.Helper()
	es, err := parseProcUDP(strings.NewReader(text), v6, binary.LittleEndian)
	if err != nil {
		t.Fatalf("parsing sample (v6 %v): %v", v6, err)
	}
	return es
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func TestForeignParse(t *testing.T) {
	any4 := ap("0.0.0.0:0")
	any6 := ap("[::]:0")
	want4 := []udpSocket{
		{local: ap("0.0.0.0:443"), remote: any4, uid: 0, inode: 12345},
		{local: ap("127.0.0.1:443"), remote: any4, uid: 1000, inode: 12346},
		{local: ap("127.0.0.2:443"), remote: any4, uid: 1000, inode: 12347},
		{local: ap("127.0.0.1:443"), remote: ap("127.0.0.1:50000"), uid: 1000, inode: 12348},
		{local: ap("0.0.0.0:444"), remote: any4, uid: 0, inode: 12349},
		{local: ap("0.0.0.0:443"), remote: any4, uid: 0, inode: 0},
	}
	if got := parseSample(t, sampleUDP, false); !slices.Equal(got, want4) {
		t.Errorf("udp table:\n got %+v\nwant %+v", got, want4)
	}
	want6 := []udpSocket{
		{local: ap("[::]:443"), remote: any6, uid: 0, inode: 22221},
		{local: ap("[::1]:443"), remote: any6, uid: 0, inode: 22222},
		{local: ap("[::ffff:127.0.0.1]:443"), remote: any6, uid: 33, inode: 22223},
		{local: ap("[fe80::1]:443"), remote: any6, uid: 0, inode: 22224},
		{local: ap("[2001:db8::1]:443"), remote: any6, uid: 4294967295, inode: 22225},
	}
	if got := parseSample(t, sampleUDP6, true); !slices.Equal(got, want6) {
		t.Errorf("udp6 table:\n got %+v\nwant %+v", got, want6)
	}

	// A big-endian host prints the words in network order.
	be := "  1: 7F000001:01BB 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 7 2 0 0\n"
	es, err := parseProcUDP(strings.NewReader(be), false, binary.BigEndian)
	if err != nil || len(es) != 1 || es[0].local != ap("127.0.0.1:443") {
		t.Errorf("big-endian line: %+v, %v; want 127.0.0.1:443", es, err)
	}

	// Empty tables and header-only tables have no entries.
	for _, text := range []string{"", "\n\n", strings.SplitAfter(sampleUDP, "\n")[0]} {
		if es, err := parseProcUDP(strings.NewReader(text), false, binary.LittleEndian); err != nil || len(es) != 0 {
			t.Errorf("parse(%q) = %+v, %v; want nothing", text, es, err)
		}
	}
}

func TestForeignParseMalformed(t *testing.T) {
	const rest = " 07 00000000:00000000 00:00000000 00000000  1000        0 12346 2 0000000000000000 0"
	line4 := func(local, remote string) string { return "  1: " + local + " " + remote + rest }
	const z4, z6 = "00000000:0000", "00000000000000000000000000000000:0000"
	tests := []struct {
		name string
		v6   bool
		line string
	}{
		{"too few columns", false, "  1: 0100007F:01BB 00000000:0000 07"},
		{"slot without colon", false, "  1 0100007F:01BB" + " " + z4 + rest},
		{"local without port", false, line4("0100007F01BB", z4)},
		{"remote without port", false, line4("0100007F:01BB", "00000000")},
		{"bad hex", false, line4("0100007G:01BB", z4)},
		{"short address", false, line4("100007F:01BB", z4)},
		{"long address", false, line4("00100007F:01BB", z4)},
		{"signed address", false, line4("+100007F:01BB", z4)},
		{"0x address", false, line4("0x00007F:01BB", z4)},
		{"empty port", false, line4("0100007F:", z4)},
		{"long port", false, line4("0100007F:101BB", z4)},
		{"bad port", false, line4("0100007F:01BX", z4)},
		{"two colons", false, line4("0100007F:01BB:1", z4)},
		{"IPv6 address in udp", false, line4("00000000000000000000000001000000:01BB", z4)},
		{"IPv4 address in udp6", true, "  1: 0100007F:01BB " + z6 + rest},
		{"uid not a number", false, "  1: 0100007F:01BB " + z4 + " 07 00000000:00000000 00:00000000 00000000 x 0 5 2 0 0"},
		{"negative uid", false, "  1: 0100007F:01BB " + z4 + " 07 00000000:00000000 00:00000000 00000000 -1 0 5 2 0 0"},
		{"uid too large", false, "  1: 0100007F:01BB " + z4 + " 07 00000000:00000000 00:00000000 00000000 4294967296 0 5 2 0 0"},
		{"negative inode", false, "  1: 0100007F:01BB " + z4 + " 07 00000000:00000000 00:00000000 00000000 0 0 -5 2 0 0"},
		{"inode not decimal", false, "  1: 0100007F:01BB " + z4 + " 07 00000000:00000000 00:00000000 00000000 0 0 1e3 2 0 0"},
		{"garbage", false, "\x00\xff:: ::: :"},
		{"line too long", false, strings.Repeat("0", 1<<20)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			header, good := sampleUDP, ""
			if tt.v6 {
				header = sampleUDP6
			}
			header, good, _ = strings.Cut(header, "\n") // header line, then the first entry
			good, _, _ = strings.Cut(good, "\n")
			text := header + "\n" + good + "\n" + tt.line + "\n" + good + "\n"
			es, err := parseProcUDP(strings.NewReader(text), tt.v6, binary.LittleEndian)
			if err == nil {
				t.Fatalf("parsed %q as %+v; want an error", tt.line, es)
			}
			if tt.name != "line too long" && !strings.Contains(err.Error(), "line 3") {
				t.Errorf("error %q does not name line 3", err)
			}
		})
	}
}

// TestForeignFilter checks which sockets of the sample tables, and of
// sockets known to be IPv6-only (as sock_diag tells), count as foreign for
// a key.
func TestForeignFilter(t *testing.T) {
	socks := append(parseSample(t, sampleUDP, false), parseSample(t, sampleUDP6, true)...)
	socks = append(socks,
		udpSocket{local: ap("[::]:443"), remote: ap("[::]:0"), v6only: true, inode: 33331},
		udpSocket{local: ap("[::1]:443"), remote: ap("[::]:0"), v6only: true, inode: 33332},
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

// rawSocket is a bare descriptor, for sockets that package net will not
// bind, closed at the end of the test.
type rawSocket int

func (s rawSocket) SyscallConn() (syscall.RawConn, error) { return s, nil }
func (s rawSocket) Control(f func(uintptr)) error         { f(uintptr(s)); return nil }
func (s rawSocket) Read(func(uintptr) bool) error         { return errors.ErrUnsupported }
func (s rawSocket) Write(func(uintptr) bool) error        { return errors.ErrUnsupported }

// bindRaw binds an AF_INET6 UDP socket to addr with SO_REUSEPORT and the
// given IPV6_V6ONLY, which also binds what package net refuses to (an
// IPv4-mapped address).
func bindRaw(t *testing.T, addr netip.AddrPort, v6only bool) rawSocket {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	on := 0
	if v6only {
		on = 1
	}
	for _, err := range []error{
		unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, on),
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1),
		unix.Bind(fd, &unix.SockaddrInet6{Port: int(addr.Port()), Addr: addr.Addr().As16()}),
	} {
		if err != nil {
			t.Fatalf("binding %v (v6only %v): %v", addr, v6only, err)
		}
	}
	return rawSocket(fd)
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
	v6only := foreignOf(t, bindRaw(t, at("::"), true))
	if v6only.Network != "udp6" {
		t.Fatalf("IPv6-only socket is %v", v6only)
	}
	checkForeign(t, k, ours, want...)
	dual := foreignOf(t, bindRaw(t, at("::"), false))
	if dual.Network != "udp" {
		t.Fatalf("dual-stack socket is %v", dual)
	}
	want = append(want, dual)
	checkForeign(t, k, ours, want...)

	// An IPv6 socket bound to the IPv4-mapped address receives that
	// address's IPv4 datagrams. The net package refuses to bind one.
	mapped := foreignOf(t, bindRaw(t, at("::ffff:127.0.0.1"), false))
	if mapped.Network != "udp6" || mapped.Local != at("::ffff:127.0.0.1") {
		t.Fatalf("IPv4-mapped socket is %v", mapped)
	}
	want = append(want, mapped)
	checkForeign(t, k, ours, want...)
}

// TestForeignSocketsNamespace checks that foreignSockets reads the socket
// tables of the calling thread's network namespace, not the process's.
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
	var proc []udpSocket
	err = ns.Do(func() error {
		// The namespace has its own ports: no reuse needed.
		pc, err := net.ListenPacket("udp4", k.Addr.String())
		if err != nil {
			return err
		}
		inner = pc.(*net.UDPConn)
		if got, err = foreignSockets(k, nil); err != nil {
			return err
		}
		proc, err = procUDP() // the fallback too
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
	if len(proc) != 1 || proc[0].inode != inodeOf(t, inner) {
		t.Errorf("in the namespace: /proc lists %+v, want only the socket %d", proc, inodeOf(t, inner))
	}
	// Outside, only the pool's socket is on the port.
	checkForeign(t, k, nil, ForeignSocket{Network: "udp4", Local: k.Addr, Inode: own, UID: uint32(os.Getuid())})
}

// TestForeignSockDiagAgreesWithProc binds sockets of every kind on one
// port and checks that sock_diag and the /proc fallback list the same
// sockets, and that only sock_diag tells an IPv6-only [::] from a
// dual-stack one.
func TestForeignSockDiagAgreesWithProc(t *testing.T) {
	needIPv4(t)
	needIPv6(t)
	first := foreignListen(t, true, "udp4", ap("127.0.0.1:0"))
	P := first.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	at := func(ip string) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr(ip), P) }
	v6only := bindRaw(t, at("::"), true)
	dual := bindRaw(t, at("::"), false)
	mapped := bindRaw(t, at("::ffff:127.0.0.1"), false)
	loop6 := foreignListen(t, true, "udp6", at("::1")) // package net sets IPV6_V6ONLY
	any4 := foreignListen(t, true, "udp4", at("0.0.0.0"))
	peer := foreignListen(t, false, "udp4", ap("127.0.0.1:0"))
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
	mine := func(socks []udpSocket) []udpSocket {
		socks = slices.DeleteFunc(socks, func(s udpSocket) bool { return !ours[s.inode] })
		slices.SortFunc(socks, func(a, b udpSocket) int { return cmp.Compare(a.inode, b.inode) })
		return socks
	}

	diag, err := diagUDP(P)
	if err != nil {
		t.Fatalf("sock_diag: %v", err)
	}
	if slices.ContainsFunc(diag, func(s udpSocket) bool { return s.local.Port() != P }) {
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
		if got[i].v6only != slices.Contains(only, got[i].inode) {
			t.Errorf("sock_diag: %+v has v6only %v", got[i], got[i].v6only)
		}
		got[i].v6only = false // /proc cannot tell
	}
	if !slices.Equal(got, proc) {
		t.Errorf("sock_diag and /proc disagree:\n%+v\n%+v", diag, proc)
	}
	for _, s := range diag {
		if s.inode == inodeOf(t, dual) && s.key().Network != "udp" || s.inode == inodeOf(t, v6only) && s.key().Network != "udp6" {
			t.Errorf("socket %+v has key %v", s, s.key())
		}
	}
}

// TestForeignFallback checks that /proc is read where sock_diag is
// unavailable, and only there.
func TestForeignFallback(t *testing.T) {
	needIPv4(t)
	c := foreignListen(t, false, "udp4", ap("127.0.0.1:0"))
	P := c.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	unavailable := func(uint16) ([]udpSocket, error) {
		return nil, fmt.Errorf("%w: %w", errNoSockDiag, unix.EPROTONOSUPPORT)
	}
	socks, err := listUDP(P, unavailable)
	if err != nil || !slices.ContainsFunc(socks, func(s udpSocket) bool { return s.inode == inodeOf(t, c) }) {
		t.Errorf("without sock_diag: %d sockets, %v; want those of /proc, with %v", len(socks), err, c.LocalAddr())
	}
	failing := func(uint16) ([]udpSocket, error) { return nil, unix.ENOBUFS }
	if socks, err := listUDP(P, failing); !errors.Is(err, unix.ENOBUFS) {
		t.Errorf("failing sock_diag: %d sockets, %v; want its error", len(socks), err)
	}
}

// diagMsg builds a struct inet_diag_msg as the kernel sends it, with
// attributes attrs.
func diagMsg(family uint8, local netip.AddrPort, uid, inode uint32, attrs ...byte) []byte {
	b := make([]byte, sizeofInetDiagMsg, sizeofInetDiagMsg+len(attrs))
	b[0], b[1] = family, 7 // TCP_CLOSE: unconnected
	binary.BigEndian.PutUint16(b[offDiagSockID:], local.Port())
	ip := local.Addr().AsSlice()
	copy(b[offDiagSockID+4:], ip)
	binary.NativeEndian.PutUint32(b[offDiagUID:], uid)
	binary.NativeEndian.PutUint32(b[offDiagInode:], inode)
	return append(b, attrs...)
}

// nlattr builds one attribute, padded.
func nlattr(typ uint16, payload ...byte) []byte {
	b := binary.NativeEndian.AppendUint16(nil, uint16(4+len(payload)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func TestForeignParseDiagMsg(t *testing.T) {
	v6only := nlattr(inetDiagSKV6Only, 1)
	other := nlattr(5, 0) // INET_DIAG_TOS
	for _, tt := range []struct {
		msg  []byte
		want udpSocket
	}{
		{diagMsg(unix.AF_INET, ap("127.0.0.1:443"), 1000, 77),
			udpSocket{local: ap("127.0.0.1:443"), remote: ap("0.0.0.0:0"), uid: 1000, inode: 77}},
		{diagMsg(unix.AF_INET6, ap("[::]:443"), 0, 78, slices.Concat(other, v6only)...),
			udpSocket{local: ap("[::]:443"), remote: ap("[::]:0"), v6only: true, inode: 78}},
		{diagMsg(unix.AF_INET6, ap("[::]:443"), 0, 79, nlattr(inetDiagSKV6Only, 0)...),
			udpSocket{local: ap("[::]:443"), remote: ap("[::]:0"), inode: 79}},
		// A nested or byte-order flag on the type does not hide it.
		{diagMsg(unix.AF_INET6, ap("[::]:443"), 0, 80, nlattr(inetDiagSKV6Only|0x8000, 1)...),
			udpSocket{local: ap("[::]:443"), remote: ap("[::]:0"), v6only: true, inode: 80}},
	} {
		got, err := parseDiagMsg(tt.msg)
		if err != nil || got != tt.want {
			t.Errorf("parseDiagMsg = %+v, %v; want %+v", got, err, tt.want)
		}
	}

	good := diagMsg(unix.AF_INET6, ap("[::]:443"), 0, 78, v6only...)
	for name, msg := range map[string][]byte{
		"empty":              nil,
		"short":              good[:sizeofInetDiagMsg-1],
		"unknown family":     diagMsg(unix.AF_UNIX, ap("[::]:443"), 0, 1),
		"short attribute":    good[:sizeofInetDiagMsg+2],
		"attribute too long": diagMsg(unix.AF_INET6, ap("[::]:443"), 0, 1, 40, 0, 11, 0, 1),
		"attribute length 2": diagMsg(unix.AF_INET6, ap("[::]:443"), 0, 1, 2, 0, 11, 0),
		"v6only of 4 bytes":  diagMsg(unix.AF_INET6, ap("[::]:443"), 0, 1, nlattr(inetDiagSKV6Only, 1, 0, 0, 0)...),
	} {
		if got, err := parseDiagMsg(msg); err == nil {
			t.Errorf("%s: parsed %+v, want an error", name, got)
		}
	}

	// Netlink framing: two messages, the first padded.
	frame := func(typ uint16, data []byte) []byte {
		b := binary.NativeEndian.AppendUint32(nil, uint32(unix.NLMSG_HDRLEN+len(data)))
		b = binary.NativeEndian.AppendUint16(b, typ)
		b = binary.NativeEndian.AppendUint16(b, unix.NLM_F_MULTI)
		b = binary.NativeEndian.AppendUint32(b, 9)
		b = binary.NativeEndian.AppendUint32(b, 0)
		return append(b, data...)
	}
	two := slices.Concat(frame(unix.SOCK_DIAG_BY_FAMILY, []byte{1, 2, 3}), []byte{0}, frame(unix.NLMSG_DONE, []byte{0, 0, 0, 0}))
	msgs, err := splitNetlink(two)
	if err != nil || len(msgs) != 2 || !slices.Equal(msgs[0].Data, []byte{1, 2, 3}) ||
		msgs[1].Header.Type != unix.NLMSG_DONE || msgs[1].Header.Seq != 9 {
		t.Errorf("splitNetlink = %+v, %v", msgs, err)
	}
	for name, b := range map[string][]byte{
		"short header":    two[:unix.NLMSG_HDRLEN-1],
		"length too long": two[:unix.NLMSG_HDRLEN+2],
		"length too short": func() []byte {
			b := slices.Clone(two)
			binary.NativeEndian.PutUint32(b, 3)
			return b
		}(),
	} {
		if msgs, err := splitNetlink(b); err == nil {
			t.Errorf("%s: split into %+v, want an error", name, msgs)
		}
	}
}
