package udppool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udppool/udppool/internal/rawsock"
)

// reusePortSocket binds a socket outside the pool with SO_REUSEPORT, as a
// second process of the same user would.
func reusePortSocket(t *testing.T, network, addr string) net.PacketConn {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return errors.Join(err, serr)
	}}
	c, err := lc.ListenPacket(context.Background(), network, addr)
	if err != nil {
		t.Fatalf("foreign socket %s %s: %v", network, addr, err)
	}
	return c
}

// fixedPort acquires a dual-stack key with a fixed port (so it has
// SO_REUSEPORT) and returns it.
func fixedPort(t *testing.T, p *Pool) *Conn {
	t.Helper()
	probe := listen(t, p, "udp", ":0")
	addr := fmt.Sprintf(":%d", port(probe))
	probe.Close()
	c := listen(t, p, "udp", addr)
	if c.Key().Network != "udp" {
		t.Skipf("host cannot bind dual-stack sockets (%v)", c.Key())
	}
	return c
}

// TestCheckFindsForeignSocket joins a foreign udp4 socket to the reuseport
// group of a pooled dual-stack socket: it takes the IPv4 datagrams, and
// Check names it.
func TestCheckFindsForeignSocket(t *testing.T) {
	needIPv4(t)
	p := newPool(t)
	c := fixedPort(t, p)
	defer c.Close()
	if err := p.Check(); err != nil {
		t.Fatalf("Check with no foreign socket: %v", err)
	}
	foreign := reusePortSocket(t, "udp4", fmt.Sprintf("0.0.0.0:%d", port(c)))
	defer foreign.Close()

	// The hazard is real: IPv4 datagrams go to the foreign socket.
	cli := sender(t, false)
	foreign.SetReadDeadline(time.Now().Add(testTimeout))
	if _, err := cli.WriteTo([]byte("v4"), net.UDPAddrFromAddrPort(loopbackAddr(c, false))); err != nil {
		t.Fatal(err)
	}
	if _, _, err := foreign.ReadFrom(make([]byte, 8)); err != nil {
		t.Fatalf("the foreign socket did not take the IPv4 datagram: %v", err)
	}

	err := p.Check()
	if !errors.Is(err, ErrForeignSocket) {
		t.Fatalf("Check: %v, want ErrForeignSocket", err)
	}
	var fe *ForeignError
	if !errors.As(err, &fe) || fe.Key != c.Key() || len(fe.Found) != 1 {
		t.Fatalf("Check: %#v", err)
	}
	inode, err := socketInode(mustRaw(t, foreign))
	if err != nil {
		t.Fatal(err)
	}
	if f := fe.Found[0]; f.Inode != inode || f.Local.Port() != port(c) || f.Network != "udp4" {
		t.Fatalf("found %v, want the udp4 socket with inode %d", f, inode)
	}
	if msg := fe.Error(); !strings.Contains(msg, fmt.Sprint(port(c))) || !strings.Contains(msg, "udp4 0.0.0.0") {
		t.Fatalf("message does not name port and socket: %s", msg)
	}
}

// TestRefuseForeign: with WithRefuseForeign the pool does not join a
// reuseport group that already has a foreign member.
func TestRefuseForeign(t *testing.T) {
	needIPv4(t)
	p := newPool(t, WithRefuseForeign(true))
	probe := listen(t, p, "udp", ":0")
	addr := fmt.Sprintf(":%d", port(probe))
	probe.Close()
	foreign := reusePortSocket(t, "udp", addr)
	defer foreign.Close()
	_, err := p.ListenPacket(context.Background(), "udp", addr)
	if !errors.Is(err, ErrForeignSocket) {
		t.Fatalf("joining a group with a foreign member: %v, want ErrForeignSocket", err)
	}
	var e *Error
	if !errors.As(err, &e) || e.Addr != addr {
		t.Fatalf("error does not name the request: %v", err)
	}
	foreign.Close()
	c := listen(t, p, "udp", addr) // alone again: allowed
	c.Close()
}

func mustRaw(t *testing.T, c net.PacketConn) syscall.RawConn {
	t.Helper()
	rc, err := c.(*net.UDPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

// TestCheckIPv6OnlyBesideUDP4: an IPv6-only socket on [::]:P takes no
// datagram of a pooled udp4 0.0.0.0:P, so neither Check nor
// WithRefuseForeign objects to it; a dual-stack one on [::]:P overlaps the
// pooled socket and is reported, and refused.
func TestCheckIPv6OnlyBesideUDP4(t *testing.T) {
	needIPv4(t)
	needIPv6(t)
	p := newPool(t, WithRefuseForeign(true))
	probe := listen(t, p, "udp4", "0.0.0.0:0")
	P := port(probe)
	probe.Close()
	addr := fmt.Sprintf("0.0.0.0:%d", P)

	v6only := foreignOf(t, rawsock.Bind(t, netip.AddrPortFrom(netip.IPv6Unspecified(), P), true))
	if v6only.Network != "udp6" {
		t.Fatalf("foreign socket %v is not IPv6-only", v6only)
	}
	c, err := p.ListenPacket(context.Background(), "udp4", addr)
	if err != nil {
		t.Fatalf("WithRefuseForeign refused udp4 %s beside %v: %v", addr, v6only, err)
	}
	defer c.Close()
	if err := p.Check(); err != nil {
		t.Fatalf("Check with an IPv6-only socket beside udp4 %s: %v", addr, err)
	}

	dual := foreignOf(t, rawsock.Bind(t, netip.AddrPortFrom(netip.IPv6Unspecified(), P), false))
	if dual.Network != "udp" {
		t.Fatalf("foreign socket %v is not dual-stack", dual)
	}
	err = p.Check()
	var fe *ForeignError
	if !errors.As(err, &fe) || fe.Key != c.Key() || !slices.Equal(fe.Found, []ForeignSocket{dual}) {
		t.Fatalf("Check with a dual-stack socket beside udp4 %s: %v, want it to report %v only", addr, err, dual)
	}

	c.Close()
	if c, err := p.ListenPacket(context.Background(), "udp4", addr); !errors.Is(err, ErrForeignSocket) {
		if err == nil {
			c.Close()
		}
		t.Fatalf("WithRefuseForeign beside a dual-stack socket: %v, want ErrForeignSocket", err)
	}
}
