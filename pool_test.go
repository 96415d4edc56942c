package udppool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"
)

func TestRefCounting(t *testing.T) {
	needIPv4(t)
	p := newPool(t)
	a := listen(t, p, "udp4", "127.0.0.1:0")
	b := listen(t, p, "udp4", fmt.Sprintf("127.0.0.1:%d", port(a)))
	if a.Key() != b.Key() || a.LocalAddr().String() != b.LocalAddr().String() {
		t.Fatalf("keys differ: %v and %v", a.Key(), b.Key())
	}
	if got := refs(p, a.Key()); got != 2 {
		t.Fatalf("refs = %d, want 2", got)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if got := refs(p, b.Key()); got != 1 {
		t.Fatalf("refs after one Close = %d, want 1", got)
	}
	if err := a.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close = %v, want net.ErrClosed", err)
	}
	if got := refs(p, b.Key()); got != 1 {
		t.Fatalf("refs after a second Close of the same handle = %d, want 1", got)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); len(st) != 0 {
		t.Fatalf("socket still held after last Close: %+v", st)
	}
	// The port is really free again.
	c, err := net.ListenPacket("udp4", b.LocalAddr().String())
	if err != nil {
		t.Fatalf("port not released: %v", err)
	}
	c.Close()
}

// TestKeysShareLikeGo checks, with real sockets, that spellings Go binds to
// one socket share one pooled socket, and that the socket is the one Go
// would bind.
func TestKeysShareLikeGo(t *testing.T) {
	type spelling struct{ network, host string }
	cases := []struct {
		name   string
		first  spelling
		shares []spelling
		v6     bool
	}{
		{"dual-stack wildcard", spelling{"udp", ""}, []spelling{{"udp", "0.0.0.0"}, {"udp", "[::]"}, {"udp", "[::ffff:0.0.0.0]"}}, true},
		{"IPv4 wildcard", spelling{"udp4", ""}, []spelling{{"udp4", "0.0.0.0"}}, false},
		{"IPv6 wildcard", spelling{"udp6", ""}, []spelling{{"udp6", "[::]"}}, true},
		{"IPv4 loopback", spelling{"udp4", "127.0.0.1"}, []spelling{{"udp", "127.0.0.1"}, {"udp", "[::ffff:127.0.0.1]"}, {"udp4", "localhost"}}, false},
		{"IPv6 loopback", spelling{"udp6", "[::1]"}, []spelling{{"udp", "[::1]"}, {"udp6", "[0:0::1]"}}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.v6 {
				needIPv6(t)
			} else {
				needIPv4(t)
			}
			p := newPool(t)
			first := listen(t, p, tc.first.network, tc.first.host+":0")
			defer first.Close()
			for _, s := range tc.shares {
				addr := fmt.Sprintf("%s:%d", s.host, port(first))
				c := listen(t, p, s.network, addr)
				if c.Key() != first.Key() {
					t.Errorf("%s %s: key %v, want %v", s.network, addr, c.Key(), first.Key())
				}
				defer c.Close()
			}
			if got, want := refs(p, first.Key()), 1+len(tc.shares); got != want {
				t.Errorf("refs = %d, want %d (one socket for all spellings)", got, want)
			}
			if n := len(p.Stats()); n != 1 {
				t.Errorf("pool holds %d sockets, want 1", n)
			}
		})
	}
}

func TestDistinctKeys(t *testing.T) {
	needIPv4(t)
	needIPv6(t)
	p := newPool(t)
	a := listen(t, p, "udp4", ":0")
	defer a.Close()
	// The IPv6-only wildcard on the same port does not overlap udp4.
	b := listen(t, p, "udp6", fmt.Sprintf(":%d", port(a)))
	defer b.Close()
	if a.Key() == b.Key() {
		t.Fatalf("udp4 and udp6 wildcards share key %v", a.Key())
	}
	if n := len(p.Stats()); n != 2 {
		t.Fatalf("pool holds %d sockets, want 2", n)
	}
}

// TestFastPathKeepsNetwork: once the fast path has learnt a spelling of one
// network, the same address in another network is still its own socket.
// "udp4" ":P" and "udp6" ":P" differ only in the network, so an index that
// forgot the network would hand the second caller the first one's socket.
func TestFastPathKeepsNetwork(t *testing.T) {
	needIPv4(t)
	needIPv6(t)
	for _, order := range [][2]string{{"udp4", "udp6"}, {"udp6", "udp4"}} {
		t.Run(order[0]+" first", func(t *testing.T) {
			p := newPool(t)
			first := listen(t, p, order[0], ":0")
			defer first.Close()
			addr := fmt.Sprintf(":%d", port(first))
			// The slow path enters this spelling in the fast-path index,
			// the next request of it takes the fast path.
			again := listen(t, p, order[0], addr)
			defer again.Close()
			cached := listen(t, p, order[0], addr)
			defer cached.Close()
			if cached.Key() != first.Key() || refs(p, first.Key()) != 3 {
				t.Fatalf("%s %s: key %v with %d refs, want %v with 3", order[0], addr, cached.Key(), refs(p, first.Key()), first.Key())
			}

			other := listen(t, p, order[1], addr)
			defer other.Close()
			want := Key{Network: order[1], Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), port(first))}
			if order[1] == "udp6" {
				want.Addr = netip.AddrPortFrom(netip.IPv6Unspecified(), port(first))
			}
			if other.Key() != want {
				t.Fatalf("%s %s: key %v, want %v (a socket of its own)", order[1], addr, other.Key(), want)
			}
			if n := len(p.Stats()); n != 2 {
				t.Fatalf("pool holds %d sockets, want 2", n)
			}
			// Each family's datagram reaches the socket of its network.
			for _, c := range []*Conn{first, other} {
				v6 := c.Key().Network == "udp6"
				msg := "to " + c.Key().Network
				if _, err := sender(t, v6).WriteTo([]byte(msg), net.UDPAddrFromAddrPort(loopbackAddr(c, v6))); err != nil {
					t.Fatal(err)
				}
				c.SetReadDeadline(time.Now().Add(testTimeout))
				buf := make([]byte, 64)
				n, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil || string(buf[:n]) != msg {
					t.Fatalf("%v: read %q from %v, %v; want %q", c.Key(), buf[:n], from, err, msg)
				}
			}
		})
	}
}

func TestPortZeroOpensNewSocket(t *testing.T) {
	needIPv4(t)
	p := newPool(t)
	a := listen(t, p, "udp4", "127.0.0.1:0")
	defer a.Close()
	b := listen(t, p, "udp4", "127.0.0.1:0")
	defer b.Close()
	if port(a) == 0 || port(a) == port(b) {
		t.Fatalf("port 0 shared or unset: %d and %d", port(a), port(b))
	}
	if a.Key().Addr.Port() != uint16(a.LocalAddr().(*net.UDPAddr).Port) {
		t.Fatalf("key %v does not carry the port the socket got (%v)", a.Key(), a.LocalAddr())
	}
}

func TestRoundTrip(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) {
			network, host := "udp4", "127.0.0.1"
			if v6 {
				needIPv6(t)
				network, host = "udp6", "[::1]"
			} else {
				needIPv4(t)
			}
			p := newPool(t)
			srv := listen(t, p, network, host+":0")
			defer srv.Close()
			srv2 := listen(t, p, network, fmt.Sprintf("%s:%d", host, port(srv)))
			defer srv2.Close()
			cli := sender(t, v6)
			dst := net.UDPAddrFromAddrPort(loopbackAddr(srv, v6))
			deadline := time.Now().Add(testTimeout)
			srv.SetDeadline(deadline)
			srv2.SetDeadline(deadline)
			cli.SetDeadline(deadline)
			buf := make([]byte, 64)
			oob := make([]byte, 128)

			// ReadFrom / WriteTo through the first handle.
			if _, err := cli.WriteTo([]byte("ping"), dst); err != nil {
				t.Fatal(err)
			}
			n, from, err := srv.ReadFrom(buf)
			if err != nil || string(buf[:n]) != "ping" {
				t.Fatalf("ReadFrom = %q, %v", buf[:n], err)
			}
			if _, err := srv.WriteTo([]byte("pong"), from); err != nil {
				t.Fatal(err)
			}
			if n, _, err := cli.ReadFrom(buf); err != nil || string(buf[:n]) != "pong" {
				t.Fatalf("client got %q, %v", buf[:n], err)
			}

			// ReadMsgUDP / WriteMsgUDP through the second handle.
			if _, err := cli.WriteTo([]byte("msg"), dst); err != nil {
				t.Fatal(err)
			}
			n, _, _, ua, err := srv2.ReadMsgUDP(buf, oob)
			if err != nil || string(buf[:n]) != "msg" {
				t.Fatalf("ReadMsgUDP = %q, %v", buf[:n], err)
			}
			if _, _, err := srv2.WriteMsgUDP([]byte("reply"), nil, ua); err != nil {
				t.Fatal(err)
			}
			if n, _, err := cli.ReadFrom(buf); err != nil || string(buf[:n]) != "reply" {
				t.Fatalf("client got %q, %v", buf[:n], err)
			}

			// The netip variants.
			if _, err := cli.WriteTo([]byte("ap"), dst); err != nil {
				t.Fatal(err)
			}
			n, _, _, ap, err := srv.ReadMsgUDPAddrPort(buf, oob)
			if err != nil || string(buf[:n]) != "ap" {
				t.Fatalf("ReadMsgUDPAddrPort = %q, %v", buf[:n], err)
			}
			if _, err := srv.WriteToUDPAddrPort([]byte("ap-reply"), ap); err != nil {
				t.Fatal(err)
			}
			if n, _, err := cli.ReadFrom(buf); err != nil || string(buf[:n]) != "ap-reply" {
				t.Fatalf("client got %q, %v", buf[:n], err)
			}
		})
	}
}

// TestDualStackServesBothFamilies sends from an IPv4 and an IPv6 client to
// one dual-stack pooled socket.
func TestDualStackServesBothFamilies(t *testing.T) {
	needIPv4(t)
	needIPv6(t)
	p := newPool(t)
	srv := listen(t, p, "udp", ":0")
	defer srv.Close()
	if srv.Key().Network != "udp" {
		t.Skipf("host cannot bind dual-stack sockets (key %v)", srv.Key())
	}
	srv.SetReadDeadline(time.Now().Add(testTimeout))
	buf := make([]byte, 16)
	for _, v6 := range []bool{false, true} {
		cli := sender(t, v6)
		if _, err := cli.WriteTo([]byte("hi"), net.UDPAddrFromAddrPort(loopbackAddr(srv, v6))); err != nil {
			t.Fatal(err)
		}
		_, from, err := srv.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("v6=%v: %v", v6, err)
		}
		if got := from.Addr().Unmap().Is4(); got == v6 {
			t.Fatalf("v6=%v: datagram from %v", v6, from)
		}
	}
}

// TestCloseUnblocksOnlyItsOwnReader blocks a reader on each of two handles
// of one socket, closes one handle, and checks that only its reader returns
// while the other still receives the next datagram.
func TestCloseUnblocksOnlyItsOwnReader(t *testing.T) {
	needIPv4(t)
	p := newPool(t)
	a := listen(t, p, "udp4", "127.0.0.1:0")
	b := listen(t, p, "udp4", a.LocalAddr().String())
	defer b.Close()
	b.SetReadDeadline(time.Now().Add(testTimeout))

	type result struct {
		data string
		err  error
	}
	read := func(c *Conn, ch chan<- result) {
		buf := make([]byte, 16)
		n, _, err := c.ReadFrom(buf)
		ch <- result{string(buf[:n]), err}
	}
	ra, rb := make(chan result, 1), make(chan result, 1)
	go read(a, ra)
	go read(b, rb)
	// Wait until both reads are in flight so Close really has to wake one.
	waitInflight(t, a, b)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-ra:
		if !errors.Is(r.err, net.ErrClosed) {
			t.Fatalf("closed handle's read: %q, %v; want net.ErrClosed", r.data, r.err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Close did not unblock the handle's read")
	}
	select {
	case r := <-rb:
		t.Fatalf("other handle's read returned after Close: %q, %v", r.data, r.err)
	default:
	}
	cli := sender(t, false)
	if _, err := cli.WriteTo([]byte("still here"), b.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if r := <-rb; r.err != nil || r.data != "still here" {
		t.Fatalf("other handle's read: %q, %v", r.data, r.err)
	}
}

// waitInflight waits until each handle has a read in flight.
func waitInflight(t *testing.T, cs ...*Conn) {
	t.Helper()
	stop := time.Now().Add(testTimeout)
	for _, c := range cs {
		for c.dirs[dirRead].inflight.Load() == 0 {
			if time.Now().After(stop) {
				t.Fatal("read never started")
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// TestDeadlinesPerHandle checks that one handle's deadline times out its own
// read only.
func TestDeadlinesPerHandle(t *testing.T) {
	needIPv4(t)
	p := newPool(t)
	a := listen(t, p, "udp4", "127.0.0.1:0")
	defer a.Close()
	b := listen(t, p, "udp4", a.LocalAddr().String())
	defer b.Close()
	b.SetReadDeadline(time.Now().Add(testTimeout))

	rb := make(chan error, 1)
	go func() {
		buf := make([]byte, 16)
		n, _, err := b.ReadFrom(buf)
		if err == nil && string(buf[:n]) != "for b" {
			err = fmt.Errorf("got %q", buf[:n])
		}
		rb <- err
	}()
	waitInflight(t, b)

	// a's read times out while b keeps reading.
	a.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	_, _, err := a.ReadFrom(make([]byte, 16))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a's read: %v, want a timeout", err)
	}
	// An expired deadline fails at once, again and again.
	if _, _, err := a.ReadFrom(make([]byte, 16)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a's read after its deadline: %v", err)
	}
	select {
	case err := <-rb:
		t.Fatalf("b's read returned because of a's deadline: %v", err)
	default:
	}
	cli := sender(t, false)
	if _, err := cli.WriteTo([]byte("for b"), b.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if err := <-rb; err != nil {
		t.Fatalf("b's read: %v", err)
	}

	// Clearing a's deadline makes it usable again.
	a.SetReadDeadline(time.Time{})
	if _, err := cli.WriteTo([]byte("for a"), a.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	a.SetReadDeadline(time.Now().Add(testTimeout))
	if n, _, err := a.ReadFrom(make([]byte, 16)); err != nil || n != len("for a") {
		t.Fatalf("a's read after clearing its deadline: %d, %v", n, err)
	}
}

func TestMethodsAfterClose(t *testing.T) {
	needIPv4(t)
	p := newPool(t)
	c := listen(t, p, "udp4", "127.0.0.1:0")
	other := listen(t, p, "udp4", c.LocalAddr().String())
	defer other.Close()
	c.Close()
	dst := other.LocalAddr().(*net.UDPAddr)
	buf := make([]byte, 8)
	checks := map[string]error{}
	_, _, checks["ReadFrom"] = c.ReadFrom(buf)
	_, _, checks["ReadFromUDP"] = c.ReadFromUDP(buf)
	_, _, checks["ReadFromUDPAddrPort"] = c.ReadFromUDPAddrPort(buf)
	_, _, _, _, checks["ReadMsgUDP"] = c.ReadMsgUDP(buf, nil)
	_, _, _, _, checks["ReadMsgUDPAddrPort"] = c.ReadMsgUDPAddrPort(buf, nil)
	_, checks["Read"] = c.Read(buf)
	_, checks["WriteTo"] = c.WriteTo(buf, dst)
	_, checks["WriteToUDP"] = c.WriteToUDP(buf, dst)
	_, checks["WriteToUDPAddrPort"] = c.WriteToUDPAddrPort(buf, dst.AddrPort())
	_, _, checks["WriteMsgUDP"] = c.WriteMsgUDP(buf, nil, dst)
	_, _, checks["WriteMsgUDPAddrPort"] = c.WriteMsgUDPAddrPort(buf, nil, dst.AddrPort())
	_, checks["Write"] = c.Write(buf)
	checks["SetDeadline"] = c.SetDeadline(time.Now())
	checks["SetReadDeadline"] = c.SetReadDeadline(time.Now())
	checks["SetWriteDeadline"] = c.SetWriteDeadline(time.Now())
	checks["SetReadBuffer"] = c.SetReadBuffer(1 << 16)
	checks["SetWriteBuffer"] = c.SetWriteBuffer(1 << 16)
	_, checks["SyscallConn"] = c.SyscallConn()
	checks["Close"] = c.Close()
	for name, err := range checks {
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("%s after Close: %v, want net.ErrClosed", name, err)
		}
	}
	if c.LocalAddr() == nil {
		t.Error("LocalAddr is nil after Close")
	}
	// The socket is untouched for the other handle.
	if _, err := other.WriteTo([]byte("x"), dst); err != nil {
		t.Errorf("other handle after Close: %v", err)
	}
}

// TestSyscallConnHandle checks the raw connection of a handle: Control
// reaches the socket, and a raw Read observes the handle's Close.
func TestSyscallConnHandle(t *testing.T) {
	needIPv4(t)
	p := newPool(t)
	c := listen(t, p, "udp4", "127.0.0.1:0")
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd uintptr
	if err := rc.Control(func(s uintptr) { fd = s }); err != nil || fd == 0 {
		t.Fatalf("Control: fd %d, %v", fd, err)
	}
	done := make(chan error, 1)
	go func() {
		// A raw read that never finds data blocks until the handle closes.
		done <- rc.Read(func(uintptr) bool { return false })
	}()
	waitInflight(t, c)
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("raw Read after Close: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Close did not unblock a raw Read")
	}
}

func TestConcurrentAcquireRelease(t *testing.T) {
	needIPv4(t)
	p := newPool(t)
	// Keys: one shared by all goroutines, and a few others.
	base := listen(t, p, "udp4", "127.0.0.1:0")
	var keys []string
	for range 4 {
		c := listen(t, p, "udp4", "127.0.0.1:0")
		keys = append(keys, c.LocalAddr().String())
		defer c.Close()
	}
	shared := base.LocalAddr().String()
	const goroutines = 1000
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for i := range goroutines {
		addr := shared
		if i%2 == 1 {
			addr = keys[i%len(keys)]
		}
		wg.Go(func() {
			for range 5 {
				c, err := p.ListenPacket(context.Background(), "udp4", addr)
				if err != nil {
					errs <- err
					return
				}
				if err := c.Close(); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := refs(p, base.Key()); got != 1 {
		t.Errorf("refs of the shared key = %d, want 1", got)
	}
	base.Close()
}

// TestConcurrentLastRelease races the last release of a key against new
// acquires: no acquire may fail (no second socket may be bound beside one
// that is still closing) and the pool ends empty.
func TestConcurrentLastRelease(t *testing.T) {
	needIPv4(t)
	p := newPool(t, WithReusePort(false)) // a second bind would fail loudly
	first := listen(t, p, "udp4", "127.0.0.1:0")
	addr := first.LocalAddr().String()
	first.Close()
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			for range 20 {
				c, err := p.ListenPacket(context.Background(), "udp4", addr)
				if err != nil {
					// EADDRINUSE here means a second socket bound
					// beside one that was still closing.
					t.Error(err)
					return
				}
				c.Close()
			}
		})
	}
	wg.Wait()
}

// TestAcquireWaitsForClose stops the last release at the moment its socket
// closes and starts an acquire of the same key then: the acquire must wait
// for the close and then bind a fresh socket, never bind a second socket
// beside the closing one (which, without SO_REUSEPORT, fails with
// EADDRINUSE). The bubble makes "the acquire is waiting" a fact rather than
// a guess: synctest.Wait returns once it is durably blocked.
func TestAcquireWaitsForClose(t *testing.T) {
	needIPv4(t)
	synctest.Test(t, func(t *testing.T) {
		p := New(WithReusePort(false))
		defer p.Close()
		old := listen(t, p, "udp4", "127.0.0.1:0")
		oldSock := old.entry.sock
		addr := old.LocalAddr().String()
		type result struct {
			c   *Conn
			err error
		}
		acquired := make(chan result, 1)
		var raced bool
		closeSocket = func(c *net.UDPConn) error {
			if c == oldSock.conn && !raced {
				raced = true
				go func() {
					c, err := p.ListenPacket(context.Background(), "udp4", addr)
					acquired <- result{c, err}
				}()
				synctest.Wait()
				select {
				case r := <-acquired:
					t.Errorf("acquire during the close of the last handle returned (%v, %v) before the socket closed", r.c, r.err)
					acquired <- r
				default:
				}
			}
			return c.Close()
		}
		defer func() { closeSocket = (*net.UDPConn).Close }()
		if err := old.Close(); err != nil {
			t.Fatal(err)
		}
		if !raced {
			t.Fatal("closing the last handle did not close the socket")
		}
		r := <-acquired
		if r.err != nil {
			t.Fatalf("acquire after the close: %v", r.err)
		}
		defer r.c.Close()
		if r.c.entry.sock == oldSock {
			t.Fatal("acquire after the close got the closed socket back")
		}
		if st := p.Stats(); len(st) != 1 || st[0].Refs != 1 {
			t.Fatalf("stats after the acquire: %+v, want one socket with one reference", st)
		}
	})
}

func TestOverlapGuard(t *testing.T) {
	needIPv4(t)
	needIPv6(t)
	p := newPool(t)
	dual := listen(t, p, "udp", ":0")
	defer dual.Close()
	if dual.Key().Network != "udp" {
		t.Skipf("host cannot bind dual-stack sockets (key %v)", dual.Key())
	}
	P := port(dual)
	for _, req := range [][2]string{
		{"udp4", fmt.Sprintf("0.0.0.0:%d", P)},
		{"udp4", fmt.Sprintf("127.0.0.1:%d", P)},
		{"udp6", fmt.Sprintf("[::]:%d", P)},
		{"udp6", fmt.Sprintf("[::1]:%d", P)},
		{"udp", fmt.Sprintf("127.0.0.1:%d", P)},
	} {
		_, err := p.ListenPacket(context.Background(), req[0], req[1])
		if !errors.Is(err, ErrOverlap) {
			t.Errorf("%s %s while %v is held: %v, want ErrOverlap", req[0], req[1], dual.Key(), err)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, dual.Key().String()) || !strings.Contains(msg, req[1]) {
			t.Errorf("error does not name both keys: %s", msg)
		}
	}

	// The other direction: a specific IPv4 socket blocks the dual-stack
	// wildcard and the IPv4 wildcard, but not the IPv6-only wildcard.
	v4 := listen(t, p, "udp4", "127.0.0.1:0")
	defer v4.Close()
	Q := port(v4)
	for _, req := range [][2]string{{"udp", fmt.Sprintf(":%d", Q)}, {"udp4", fmt.Sprintf(":%d", Q)}} {
		if _, err := p.ListenPacket(context.Background(), req[0], req[1]); !errors.Is(err, ErrOverlap) {
			t.Errorf("%s %s while %v is held: %v, want ErrOverlap", req[0], req[1], v4.Key(), err)
		}
	}
	v6 := listen(t, p, "udp6", fmt.Sprintf(":%d", Q))
	v6.Close()
}

func TestBadInput(t *testing.T) {
	p := newPool(t)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	closed := New()
	closed.Close()
	cases := []struct {
		pool             *Pool
		ctx              context.Context
		network, address string
		want             error
	}{
		{p, nil, "tcp", ":0", ErrUnknownNetwork},
		{p, nil, "unixgram", "/tmp/x", ErrUnknownNetwork},
		{p, nil, "", ":0", ErrUnknownNetwork},
		{p, nil, "UDP", ":0", ErrUnknownNetwork},
		{p, nil, "udp", "127.0.0.1", ErrInvalidAddress},
		{p, nil, "udp", "[::1", ErrInvalidAddress},
		{p, nil, "udp", "1.2.3.4.5:80", ErrInvalidAddress},
		{p, nil, "udp", "::1:80", ErrInvalidAddress},
		{p, nil, "udp4", "[::1]:0", ErrInvalidAddress},
		{p, nil, "udp6", "127.0.0.1:0", ErrInvalidAddress},
		{p, nil, "udp", ":no-such-service-xyz", ErrInvalidAddress},
		{p, nil, "udp", "no-such-host.invalid:0", ErrInvalidAddress},
		{p, nil, "udp", ":65536", ErrPortRange},
		{p, nil, "udp", ":-1", ErrPortRange},
		{p, nil, "udp", ":99999999999999999999999", ErrPortRange},
		{closed, nil, "udp", ":0", ErrPoolClosed},
		{p, cancelled, "udp", ":0", context.Canceled},
	}
	for _, tc := range cases {
		ctx := tc.ctx
		if ctx == nil {
			ctx = context.Background()
		}
		c, err := tc.pool.ListenPacket(ctx, tc.network, tc.address)
		if err == nil {
			c.Close()
			t.Errorf("ListenPacket(%q, %q) succeeded", tc.network, tc.address)
			continue
		}
		if !errors.Is(err, tc.want) {
			t.Errorf("ListenPacket(%q, %q) = %v, want %v", tc.network, tc.address, err, tc.want)
		}
		var e *Error
		if !errors.As(err, &e) || e.Net != tc.network || e.Addr != tc.address {
			t.Errorf("ListenPacket(%q, %q): error %#v does not name the input", tc.network, tc.address, err)
		}
		if !strings.Contains(err.Error(), fmt.Sprintf("%q", tc.address)) {
			t.Errorf("message %q does not name the address", err)
		}
	}
	if err := closed.Close(); !errors.Is(err, ErrPoolClosed) {
		t.Errorf("second Pool.Close = %v, want ErrPoolClosed", err)
	}
}

func TestForeignSocketHoldsPort(t *testing.T) {
	needIPv4(t)
	p := newPool(t)
	foreign, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	_, err = p.ListenPacket(context.Background(), "udp4", foreign.LocalAddr().String())
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("bind over a foreign socket: %v, want EADDRINUSE", err)
	}
	var e *Error
	if !errors.As(err, &e) || !e.Key.IsValid() {
		t.Fatalf("error %v carries no key", err)
	}
	// A failed bind leaves nothing behind, and the key can be tried again.
	if st := p.Stats(); len(st) != 0 {
		t.Fatalf("failed bind left %+v", st)
	}
}

func TestPoolClose(t *testing.T) {
	needIPv4(t)
	p := New()
	before := openFDs(t)
	c := listen(t, p, "udp4", "127.0.0.1:0")
	done := make(chan error, 1)
	go func() {
		_, _, err := c.ReadFrom(make([]byte, 8))
		done <- err
	}()
	waitInflight(t, c)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read on a closed pool: %v", err)
	}
	if _, err := p.ListenPacket(context.Background(), "udp4", "127.0.0.1:0"); !errors.Is(err, ErrPoolClosed) {
		t.Fatalf("ListenPacket after Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("handle Close after pool Close: %v", err)
	}
	if after := openFDs(t); after != before {
		t.Fatalf("descriptors: %d before the bind, %d after Close", before, after)
	}
}

func TestLinger(t *testing.T) {
	needIPv4(t)
	synctest.Test(t, func(t *testing.T) {
		p := New(WithLinger(time.Minute))
		defer p.Close()
		c := listen(t, p, "udp4", "127.0.0.1:0")
		k := c.Key()
		c.Close()
		time.Sleep(59 * time.Second)
		synctest.Wait()
		if st := p.Stats(); len(st) != 1 || st[0].Refs != 0 {
			t.Fatalf("socket not kept for the linger time: %+v", st)
		}
		// Re-acquiring within the linger time reuses the socket and
		// cancels the pending close.
		c = listen(t, p, k.Network, k.Addr.String())
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		if got := refs(p, k); got != 1 {
			t.Fatalf("re-acquired socket: refs %d, want 1", got)
		}
		c.Close()
		time.Sleep(time.Minute)
		synctest.Wait()
		if st := p.Stats(); len(st) != 0 {
			t.Fatalf("socket kept after the linger time: %+v", st)
		}
	})
}

func TestAddressWithService(t *testing.T) {
	k, err := normalize(context.Background(), staticResolver{}, stack{dualStack: true}, "udp", "127.0.0.1:domain")
	if err != nil || k.Addr.Port() != 53 {
		t.Fatalf("service name: %v, %v", k, err)
	}
}

// staticResolver resolves a fixed set of names, so normalization tests do
// not depend on the host's resolver.
type staticResolver struct{}

func (staticResolver) LookupNetIP(_ context.Context, network, host string) ([]netip.Addr, error) {
	var all []netip.Addr
	switch host {
	case "dual.test":
		all = []netip.Addr{netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("192.0.2.1")}
	case "v6.test":
		all = []netip.Addr{netip.MustParseAddr("2001:db8::2")}
	default:
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	var out []netip.Addr
	for _, a := range all {
		if network == "ip" || (network == "ip4") == a.Is4() {
			out = append(out, a)
		}
	}
	return out, nil
}

func (staticResolver) LookupPort(_ context.Context, _, service string) (int, error) {
	if service == "domain" {
		return 53, nil
	}
	return 0, &net.DNSError{Err: "unknown port", Name: service, IsNotFound: true}
}

func TestKeyTable(t *testing.T) {
	lo := loopbackInterface(t)
	loIndex := strconv.Itoa(lo.Index)
	dual, single := stack{dualStack: true}, stack{}
	cases := []struct {
		st               stack
		network, address string
		want             string
	}{
		{dual, "udp", ":443", "udp [::]:443"},
		{dual, "udp", "0.0.0.0:443", "udp [::]:443"},
		{dual, "udp", "[::]:443", "udp [::]:443"},
		{dual, "udp", "", "udp [::]:0"},
		{dual, "udp4", ":443", "udp4 0.0.0.0:443"},
		{dual, "udp4", "0.0.0.0:443", "udp4 0.0.0.0:443"},
		{dual, "udp6", ":443", "udp6 [::]:443"},
		{dual, "udp6", "[::]:443", "udp6 [::]:443"},
		{dual, "udp", "127.0.0.1:443", "udp4 127.0.0.1:443"},
		{dual, "udp4", "127.0.0.1:443", "udp4 127.0.0.1:443"},
		{dual, "udp", "[::ffff:127.0.0.1]:443", "udp4 127.0.0.1:443"},
		{dual, "udp", "[::1]:443", "udp6 [::1]:443"},
		{dual, "udp6", "[::1]:443", "udp6 [::1]:443"},
		// Zones as the kernel binds them: an interface index on
		// link-local addresses, none elsewhere.
		{dual, "udp6", "[fe80::1%" + lo.Name + "]:443", "udp6 [fe80::1%" + loIndex + "]:443"},
		{dual, "udp6", "[fe80::1%0" + loIndex + "]:443", "udp6 [fe80::1%" + loIndex + "]:443"},
		{dual, "udp", "[::1%" + lo.Name + "]:443", "udp6 [::1]:443"},
		{dual, "udp", "[::%" + lo.Name + "]:443", "udp [::]:443"},
		{dual, "udp6", "[::%" + loIndex + "]:443", "udp6 [::]:443"},
		{dual, "udp", "dual.test:443", "udp4 192.0.2.1:443"},
		{dual, "udp6", "dual.test:443", "udp6 [2001:db8::1]:443"},
		{dual, "udp", "v6.test:443", "udp6 [2001:db8::2]:443"},
		{dual, "udp", ":domain", "udp [::]:53"},
		{dual, "udp", ":+53", "udp [::]:53"},
		{single, "udp", ":443", "udp4 0.0.0.0:443"},
		{single, "udp", "0.0.0.0:443", "udp4 0.0.0.0:443"},
		{single, "udp", "[::]:443", "udp6 [::]:443"},
	}
	for _, tc := range cases {
		k, err := normalize(context.Background(), staticResolver{}, tc.st, tc.network, tc.address)
		if err != nil {
			t.Errorf("parseKey(%q, %q): %v", tc.network, tc.address, err)
			continue
		}
		if k.String() != tc.want {
			t.Errorf("parseKey(%q, %q) = %v, want %s (dual-stack host: %v)", tc.network, tc.address, k, tc.want, tc.st.dualStack)
		}
	}
}

// TestDeadlineInSynctestBubble: handle deadlines follow the bubble's fake
// clock, as the net package's own deadlines do.
func TestDeadlineInSynctestBubble(t *testing.T) {
	needIPv4(t)
	synctest.Test(t, func(t *testing.T) {
		p := New()
		defer p.Close()
		c := listen(t, p, "udp4", "127.0.0.1:0")
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(time.Hour))
		if err := c.entry.sock.gates[dirRead].waitRetry(c, dirRead); err != nil {
			t.Fatalf("a deadline an hour ahead counts as expired: %v", err)
		}
		c.SetReadDeadline(time.Now().Add(-time.Second))
		if _, _, err := c.ReadFrom(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read past the deadline: %v", err)
		}
	})
}
