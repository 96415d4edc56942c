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

func parseSample(t *testing.T, text string, v6 bool) []procEntry {
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
	want4 := []procEntry{
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
	want6 := []procEntry{
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

// TestForeignFilter checks which entries of the sample tables count as
// foreign for a key.
func TestForeignFilter(t *testing.T) {
	v4 := parseSample(t, sampleUDP, false)
	v6 := parseSample(t, sampleUDP6, true)
	k := func(network, addr string) Key { return Key{Network: network, Addr: ap(addr)} }
	tests := []struct {
		key  Key
		ours map[uint64]bool
		want []uint64
	}{
		// Dual-stack: everything on the port but the connected socket
		// (12348), the other port (12349) and inode 0.
		{k("udp", "[::]:443"), nil, []uint64{12345, 12346, 12347, 22221, 22222, 22223, 22224, 22225}},
		{k("udp", "[::]:443"), map[uint64]bool{12345: true, 22221: true}, []uint64{12346, 12347, 22222, 22223, 22224, 22225}},
		// IPv4 keys: IPv4 sockets that cover or are covered, [::] (maybe
		// dual-stack) and the IPv4-mapped socket of its address.
		{k("udp4", "0.0.0.0:443"), nil, []uint64{12345, 12346, 12347, 22221, 22223}},
		{k("udp4", "127.0.0.1:443"), nil, []uint64{12345, 12346, 22221, 22223}},
		{k("udp4", "127.0.0.2:443"), nil, []uint64{12345, 12347, 22221}},
		{k("udp4", "0.0.0.0:444"), nil, []uint64{12349}},
		{k("udp4", "0.0.0.0:445"), nil, nil},
		// IPv6-only keys: no IPv4 socket, not the IPv4-mapped one.
		{k("udp6", "[::]:443"), nil, []uint64{22221, 22222, 22224, 22225}},
		{k("udp6", "[::1]:443"), nil, []uint64{22221, 22222}},
		// The tables list no zones: a zoned key matches the bare address.
		{k("udp6", "[fe80::1%eth0]:443"), nil, []uint64{22221, 22224}},
	}
	for _, tt := range tests {
		var got []uint64
		for _, f := range append(filterForeign(tt.key, tt.ours, false, v4), filterForeign(tt.key, tt.ours, true, v6)...) {
			got = append(got, f.Inode)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("foreign sockets of %v (ours %v): inodes %v, want %v", tt.key, tt.ours, got, tt.want)
		}
	}

	got := filterForeign(k("udp4", "127.0.0.1:443"), nil, true, v6)
	want := []ForeignSocket{
		{Network: "udp6", Local: ap("[::]:443"), Inode: 22221, UID: 0},
		{Network: "udp6", Local: ap("[::ffff:127.0.0.1]:443"), Inode: 22223, UID: 33},
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if s := (ForeignSocket{Network: "udp4", Local: ap("0.0.0.0:443"), Inode: 12345}).String(); s != "udp4 0.0.0.0:443 (inode 12345, uid 0)" {
		t.Errorf("String() = %q", s)
	}
	if s := want[1].String(); s != "udp6 [::ffff:127.0.0.1]:443 (inode 22223, uid 33)" {
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

// foreignOf is what foreignSockets should report for c.
func foreignOf(t *testing.T, c *net.UDPConn) ForeignSocket {
	t.Helper()
	local := c.LocalAddr().(*net.UDPAddr).AddrPort()
	network := "udp6"
	if local.Addr().Is4() { // an AF_INET socket's address has 4 bytes
		network = "udp4"
	}
	return ForeignSocket{Network: network, Local: local, Inode: inodeOf(t, c), UID: uint32(os.Getuid())}
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
	checkForeign(t, k, nil, ForeignSocket{Network: "udp6", Local: netip.AddrPortFrom(netip.IPv6Unspecified(), P), Inode: own, UID: uint32(os.Getuid())})

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
		if want := (ForeignSocket{Network: map[bool]string{true: "udp4", false: "udp6"}[f.network == "udp4"], Local: f.addr}); fs.Network != want.Network || fs.Local != want.Local {
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
// 127.0.0.1:P, 0.0.0.0:P, [::]:P (reported although IPv6-only, since the
// kernel's tables do not tell) and [::ffff:127.0.0.1]:P are reported;
// 127.0.0.2:P and [::1]:P are not.
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
	v6only := foreignOf(t, foreignListen(t, true, "udp6", at("::")))
	want = append(want, v6only)
	checkForeign(t, k, ours, want...)

	// An IPv6 socket bound to the IPv4-mapped address receives that
	// address's IPv4 datagrams. The net package refuses to bind one, so
	// bind it by hand.
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	mapped := at("::ffff:127.0.0.1")
	for _, err := range []error{
		unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0),
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1),
		unix.Bind(fd, &unix.SockaddrInet6{Port: int(P), Addr: mapped.Addr().As16()}),
	} {
		if err != nil {
			t.Fatalf("binding %v: %v", mapped, err)
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	want = append(want, ForeignSocket{Network: "udp6", Local: mapped, Inode: uint64(st.Ino), UID: uint32(os.Getuid())})
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
