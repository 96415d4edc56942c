package rawsock

import (
	"net"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// TestBind binds an IPv4-mapped address, which net.ListenPacket refuses,
// and checks the options the socket got.
func TestBind(t *testing.T) {
	c, err := net.ListenPacket("udp6", "[::]:0")
	if err != nil {
		t.Skipf("no IPv6: %v", err)
	}
	port := uint16(c.LocalAddr().(*net.UDPAddr).Port)
	c.Close()
	s := Bind(t, netip.AddrPortFrom(netip.MustParseAddr("::ffff:127.0.0.1"), port), false)
	var v6only, reuse int
	var gerr error
	s.Control(func(fd uintptr) {
		if v6only, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); gerr == nil {
			reuse, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT)
		}
	})
	if gerr != nil {
		t.Fatal(gerr)
	}
	if v6only != 0 || reuse != 1 {
		t.Errorf("IPV6_V6ONLY %d, SO_REUSEPORT %d, want 0 and 1", v6only, reuse)
	}
	sa, err := unix.Getsockname(int(s))
	if err != nil {
		t.Fatal(err)
	}
	if got := sa.(*unix.SockaddrInet6).Port; got != int(port) {
		t.Errorf("bound to port %d, want %d", got, port)
	}
}
