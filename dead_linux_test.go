package udppool

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BreakSocket lets the external tests break a socket the same way.
var BreakSocket = breakSocket

// breakSocket replaces the descriptor of c's socket with /dev/null, as if
// something had closed it underneath the pool, without freeing the number
// for reuse by an unrelated file.
func breakSocket(t *testing.T, c *Conn) {
	t.Helper()
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var derr error
	if err := rc.Control(func(fd uintptr) { derr = unix.Dup2(int(null.Fd()), int(fd)) }); err != nil || derr != nil {
		t.Fatalf("dup2: %v, %v", err, derr)
	}
}

// TestDeadSocket breaks a pooled socket underneath the pool: its holders get
// ErrSocketDead, the hook and Stats report it, and the next acquire of the
// key binds a fresh, working socket instead of wedging on the dead one.
func TestDeadSocket(t *testing.T) {
	needIPv4(t)
	died := make(chan Key, 1)
	p := newPool(t, WithDeadSocketHook(func(k Key, cause error) {
		if !errors.Is(cause, unix.ENOTSOCK) {
			t.Errorf("cause %v, want ENOTSOCK", cause)
		}
		died <- k
	}))
	a := listen(t, p, "udp4", "127.0.0.1:0")
	b := listen(t, p, "udp4", a.LocalAddr().String())
	breakSocket(t, a)

	_, _, err := a.ReadFrom(make([]byte, 8))
	if !errors.Is(err, ErrSocketDead) {
		t.Fatalf("read on a broken socket: %v, want ErrSocketDead", err)
	}
	select {
	case k := <-died:
		if k != a.Key() {
			t.Fatalf("hook reported %v, want %v", k, a.Key())
		}
	case <-time.After(testTimeout):
		t.Fatal("dead socket hook not called")
	}
	if _, err := b.WriteTo([]byte("x"), b.LocalAddr()); !errors.Is(err, ErrSocketDead) {
		t.Fatalf("other holder's write: %v, want ErrSocketDead", err)
	}
	st := p.Stats()
	if len(st) != 1 || st[0].Dead == nil || st[0].Refs != 2 {
		t.Fatalf("stats of a dead socket: %+v", st)
	}

	// The key is free again: a new acquire binds a fresh socket.
	fresh := listen(t, p, "udp4", a.LocalAddr().String())
	defer fresh.Close()
	cli := sender(t, false)
	if _, err := cli.WriteTo([]byte("alive"), fresh.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	fresh.SetReadDeadline(time.Now().Add(testTimeout))
	buf := make([]byte, 8)
	if n, _, err := fresh.ReadFrom(buf); err != nil || string(buf[:n]) != "alive" {
		t.Fatalf("fresh socket: %q, %v", buf[:n], err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); len(st) != 1 || st[0].Dead != nil {
		t.Logf("stats %+v", st)
		t.Fatalf("after the dead socket's holders left: %+v", st)
	}
	var _ net.Conn = fresh
}

// TestDeadAfterRepeatedEINVAL: sends that keep failing with EINVAL (here a
// malformed control message, the kind of send error that kept a VPN's path
// dead for days) mark the socket dead after deadAfter failures in a row;
// any success in between resets the count.
func TestDeadAfterRepeatedEINVAL(t *testing.T) {
	needIPv4(t)
	p := newPool(t)
	c := listen(t, p, "udp4", "127.0.0.1:0")
	defer c.Close()
	dst := c.LocalAddr().(*net.UDPAddr)
	bad := make([]byte, unix.CmsgSpace(4))
	for i := range bad {
		bad[i] = 0xff // a control message longer than its buffer
	}
	fail := func(n int) error {
		var err error
		for range n {
			if _, _, err = c.WriteMsgUDP([]byte("x"), bad, dst); !errors.Is(err, unix.EINVAL) && !errors.Is(err, ErrSocketDead) {
				t.Fatalf("malformed control message: %v, want EINVAL", err)
			}
		}
		return err
	}
	fail(deadAfter - 1)
	if _, err := c.WriteTo([]byte("ok"), dst); err != nil {
		t.Fatalf("a good send: %v", err)
	}
	if err := fail(deadAfter - 1); errors.Is(err, ErrSocketDead) {
		t.Fatal("dead although a send succeeded in between")
	}
	if err := fail(1); !errors.Is(err, ErrSocketDead) {
		t.Fatalf("after %d failures in a row: %v, want ErrSocketDead", deadAfter, err)
	}
	if st := p.Stats(); len(st) != 1 || !errors.Is(st[0].Dead, unix.EINVAL) {
		t.Fatalf("stats: %+v", st)
	}
}
