package udppool

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func reusePortOf(t *testing.T, c *Conn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	if err := rc.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return v
}

// TestReusePort checks SO_REUSEPORT on pooled sockets, and that another
// socket with SO_REUSEPORT (a new process during an upgrade) can bind the
// same address while the pool holds it.
func TestReusePort(t *testing.T) {
	needIPv4(t)
	p := newPool(t)
	off := newPool(t, WithReusePort(false))
	eph := listen(t, p, "udp4", "127.0.0.1:0")
	defer eph.Close()
	if v := reusePortOf(t, eph); v != 0 {
		t.Errorf("port 0 socket has SO_REUSEPORT=%d; an ephemeral port must not join a group", v)
	}
	// Bind a fixed port through the pool (the port 0 socket tells us a
	// free one after it is released).
	addr := eph.LocalAddr().String()
	eph.Close()
	c := listen(t, p, "udp4", addr)
	defer c.Close()
	if v := reusePortOf(t, c); v != 1 {
		t.Fatalf("SO_REUSEPORT=%d on a pooled socket, want 1", v)
	}
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
	}}
	next, err := lc.ListenPacket(context.Background(), "udp4", addr)
	if err != nil {
		t.Fatalf("an upgrading process could not bind beside the pool: %v", err)
	}
	next.Close()

	c.Close()
	d := listen(t, off, "udp4", addr)
	defer d.Close()
	if v := reusePortOf(t, d); v != 0 {
		t.Fatalf("SO_REUSEPORT=%d with WithReusePort(false)", v)
	}
}

// TestWithControlChains checks that a caller's Control runs after the
// pool's own options, and that its error fails the bind with nothing left.
func TestWithControlChains(t *testing.T) {
	needIPv4(t)
	var sawReuse int
	p := newPool(t, WithControl(func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { sawReuse, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT) })
	}))
	c := listen(t, p, "udp4", "127.0.0.1:0")
	addr := c.LocalAddr().String()
	c.Close()
	c = listen(t, p, "udp4", addr)
	c.Close()
	if sawReuse != 1 {
		t.Fatalf("caller's Control saw SO_REUSEPORT=%d, want the pool's option already set", sawReuse)
	}
	fails := newPool(t, WithControl(func(string, string, syscall.RawConn) error { return syscall.EPERM }))
	if _, err := fails.ListenPacket(context.Background(), "udp4", addr); err == nil || !errors.Is(err, syscall.EPERM) {
		t.Fatalf("Control error not returned: %v", err)
	}
}
