package udppool

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BreakTransportSocket lets the external tests break the socket under a
// Transport (its first one) the same way.
func BreakTransportSocket(t *testing.T, tr *Transport) { breakSocket(t, tr.parts[0].conn) }

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

// TestSendErrorsNeverKill: sends that fail because of their arguments
// (here a malformed control message, EINVAL) fail alone, however many there
// are: the socket stays, other sends succeed, and Stats counts the failures
// by kind.
func TestSendErrorsNeverKill(t *testing.T) {
	needIPv4(t)
	p := newPool(t)
	c := listen(t, p, "udp4", "127.0.0.1:0")
	defer c.Close()
	dst := c.LocalAddr().(*net.UDPAddr)
	bad := make([]byte, unix.CmsgSpace(4))
	for i := range bad {
		bad[i] = 0xff // a control message longer than its buffer
	}
	const n = 100
	for range n {
		if _, _, err := c.WriteMsgUDP([]byte("x"), bad, dst); !errors.Is(err, unix.EINVAL) {
			t.Fatalf("malformed control message: %v, want EINVAL", err)
		}
	}
	if _, err := c.WriteTo([]byte("ok"), dst); err != nil {
		t.Fatalf("a good send after %d bad ones: %v", n, err)
	}
	st := p.Stats()
	if len(st) != 1 || st[0].Dead != nil || st[0].SendErrors[unix.EINVAL.Error()] != n {
		t.Fatalf("stats after %d bad sends: %+v", n, st)
	}
}
