package udppool

import (
	"context"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/nettest"
)

func TestMain(m *testing.M) {
	if runUpgradeChild() {
		return
	}
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every blocking step of a test, so a bug fails the test
// instead of hanging it. It is never asserted as a duration.
const testTimeout = 20 * time.Second

// openFDs counts this process's open descriptors, or returns -1 where the
// platform does not tell.
func openFDs(t testing.TB) int {
	t.Helper()
	if runtime.GOOS != "linux" {
		return -1
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("counting descriptors: %v", err)
	}
	return len(ents)
}

// newPool returns a pool that is checked at cleanup: no socket or reference
// left, and no descriptor more than before. Goroutines are checked by
// goleak in TestMain.
func newPool(t testing.TB, opts ...Option) *Pool {
	t.Helper()
	before := openFDs(t)
	p := New(opts...)
	t.Cleanup(func() {
		if st := p.Stats(); len(st) != 0 {
			t.Errorf("pool still holds sockets at cleanup: %+v", st)
		}
		p.Close()
		if after := openFDs(t); after != before {
			t.Errorf("open descriptors: %d before, %d after", before, after)
		}
	})
	return p
}

func listen(t testing.TB, p *Pool, network, address string) *Conn {
	t.Helper()
	c, err := p.ListenPacket(context.Background(), network, address)
	if err != nil {
		t.Fatalf("ListenPacket(%q, %q): %v", network, address, err)
	}
	return c
}

func port(c *Conn) uint16 { return c.Key().Addr.Port() }

func needIPv6(t testing.TB) {
	t.Helper()
	if !nettest.SupportsIPv6() {
		t.Skip("host has no IPv6 loopback")
	}
}

func needIPv4(t testing.TB) {
	t.Helper()
	if !nettest.SupportsIPv4() {
		t.Skip("host has no IPv4 loopback")
	}
}

func refs(p *Pool, k Key) int {
	for _, s := range p.Stats() {
		if s.Key == k {
			return s.Refs
		}
	}
	return 0
}

// loopbackAddr is the address on which a test reaches socket c.
func loopbackAddr(c *Conn, v6 bool) netip.AddrPort {
	ip := netip.MustParseAddr("127.0.0.1")
	if v6 {
		ip = netip.IPv6Loopback()
	}
	return netip.AddrPortFrom(ip, port(c))
}

// sender returns an unpooled client socket of the given family.
func sender(t testing.TB, v6 bool) *net.UDPConn {
	t.Helper()
	network, addr := "udp4", "127.0.0.1:0"
	if v6 {
		network, addr = "udp6", "[::1]:0"
	}
	c, err := net.ListenPacket(network, addr)
	if err != nil {
		t.Fatalf("client socket: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.UDPConn)
}

// loopbackInterface returns the host's loopback interface.
func loopbackInterface(t testing.TB) *net.Interface {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatalf("listing interfaces: %v", err)
	}
	for _, ifi := range ifs {
		if ifi.Flags&net.FlagLoopback != 0 {
			return &ifi
		}
	}
	t.Skip("host has no loopback interface")
	return nil
}
