package udppool_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/udppool/udppool"
	"golang.org/x/net/nettest"
)

// listenUDP returns a plain socket, closed at cleanup.
func listenUDP(t testing.TB, network, address string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenPacket(network, address)
	if err != nil {
		t.Fatalf("ListenPacket(%q, %q): %v", network, address, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.UDPConn)
}

// waitEmpty waits until p holds no socket, or fails the test after
// quicTimeout: a dialled connection releases its transport from a
// goroutine of its own once it has closed.
func waitEmpty(t *testing.T, p *udppool.Pool) {
	t.Helper()
	deadline := time.Now().Add(quicTimeout)
	for len(p.Stats()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("pool still holds %+v", p.Stats())
		}
		time.Sleep(time.Millisecond)
	}
}

// TestDialTemporaryTransport dials from a pool without any transport: the
// pool binds one socket per destination family on an ephemeral port,
// shares it among concurrent dials, keeps it while a connection dialled on
// it is open, and closes it with the last one, leaving no descriptor or
// goroutine behind.
func TestDialTemporaryTransport(t *testing.T) {
	servers := pool(t)
	var dsts []*net.UDPAddr
	if nettest.SupportsIPv4() {
		tr, _ := serve(t, servers, "udp4", "127.0.0.1:0")
		dsts = append(dsts, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(portOf(tr))})
	}
	if nettest.SupportsIPv6() {
		tr, _ := serve(t, servers, "udp6", "[::1]:0")
		dsts = append(dsts, &net.UDPAddr{IP: net.IPv6loopback, Port: int(portOf(tr))})
	}
	if len(dsts) == 0 {
		t.Skip("no loopback address")
	}

	p := pool(t) // checked at cleanup: no socket, goroutine or descriptor left
	before := openFDs()
	ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
	defer cancel()

	// Concurrent first dials of each family.
	const perFamily = 4
	var (
		mu    sync.Mutex
		conns []*quic.Conn
		errs  []error
		wg    sync.WaitGroup
	)
	for _, dst := range dsts {
		for range perFamily {
			wg.Go(func() {
				conn, err := p.Dial(ctx, dst, certs().ClientConfig("echo"), nil)
				if err == nil {
					_, err = streamEcho(ctx, conn)
				}
				mu.Lock()
				defer mu.Unlock()
				if conn != nil {
					conns = append(conns, conn)
				}
				if err != nil {
					errs = append(errs, err)
				}
			})
		}
	}
	wg.Wait()
	defer func() {
		for _, c := range conns {
			c.CloseWithError(0, "")
		}
	}()
	if len(errs) > 0 {
		t.Fatalf("dials: %v", errs)
	}

	st := p.Stats()
	if len(st) != len(dsts) {
		t.Fatalf("want one temporary socket per family, have %+v", st)
	}
	for _, s := range st {
		if !s.Key.Addr.Addr().IsUnspecified() || s.Key.Network == "udp" || s.Key.Addr.Port() == 0 {
			t.Errorf("temporary socket %v: want a wildcard of one family on an ephemeral port", s.Key)
		}
	}
	for _, c := range conns {
		la := c.LocalAddr().(*net.UDPAddr)
		ra := c.RemoteAddr().(*net.UDPAddr)
		var key udppool.Key
		for _, s := range st {
			if s.Key.Network == "udp4" == (ra.IP.To4() != nil) {
				key = s.Key
			}
		}
		if la.Port != int(key.Addr.Port()) {
			t.Errorf("connection to %v left from %v, not from the temporary socket %v", ra, la, key)
		}
	}

	// All connections but one close: the sockets of the families without
	// a connection go, the last one stays.
	last := conns[len(conns)-1]
	for _, c := range conns[:len(conns)-1] {
		c.CloseWithError(0, "")
	}
	lastV4 := last.RemoteAddr().(*net.UDPAddr).IP.To4() != nil
	deadline := time.Now().Add(quicTimeout)
	for len(p.Stats()) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("sockets of closed connections kept: %+v", p.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	if s := p.Stats()[0]; (s.Key.Network == "udp4") != lastV4 {
		t.Fatalf("the socket of the open connection went: left %v", s.Key)
	}
	if _, err := streamEcho(ctx, last); err != nil {
		t.Fatalf("the last connection after the others closed: %v", err)
	}
	last.CloseWithError(0, "")
	waitEmpty(t, p)
	if after := openFDs(); after != before {
		t.Errorf("open descriptors: %d before the dials, %d after the last connection closed", before, after)
	}
}

// TestDialKeepsTransport: a connection dialled from a user's transport
// keeps the socket open after the user closes the transport, and lets it
// go when the connection closes.
func TestDialKeepsTransport(t *testing.T) {
	needFamilies(t, v4)
	srv, _ := serve(t, pool(t), "udp4", "127.0.0.1:0")
	p := pool(t)
	tr, err := p.Transport(context.Background(), "udp4", "127.0.0.1:0") // no listener
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
	defer cancel()
	conn, err := p.Dial(ctx, srv.LocalAddr(), certs().ClientConfig("echo"), nil)
	if err != nil {
		tr.Close()
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	if got := conn.LocalAddr().(*net.UDPAddr).Port; got != int(portOf(tr)) {
		t.Errorf("dial left from port %d, not from the pooled transport's %d", got, portOf(tr))
	}
	tr.Close()
	if _, err := streamEcho(ctx, conn); err != nil {
		t.Fatalf("round trip after the transport's only user left: %v", err)
	}
	if st := p.Stats(); len(st) != 1 || st[0].Key.Addr.Port() != portOf(tr) {
		t.Fatalf("want the dialled socket still open, have %+v", st)
	}
	conn.CloseWithError(0, "")
	waitEmpty(t, p)
}

// TestBadDestination: a nil or non-UDP destination fails every Dial and
// WriteTo at once, with a typed error, and so does an incomplete one where
// quic-go would get it; however often it is tried, the socket lives.
func TestBadDestination(t *testing.T) {
	needFamilies(t, v4)
	p := pool(t)
	tr := transport(t, p, "udp4", "127.0.0.1:0")
	conn, err := p.ListenPacket(context.Background(), "udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
	defer cancel()
	tlsConf := certs().ClientConfig("echo")
	ops := map[string]func(net.Addr) error{
		"Pool.Dial": func(a net.Addr) error { _, err := p.Dial(ctx, a, tlsConf, nil); return err },
		"Pool.Dial from port": func(a net.Addr) error {
			_, err := p.Dial(ctx, a, tlsConf, nil, udppool.WithLocalPort(portOf(tr)))
			return err
		},
		"Transport.Dial":      func(a net.Addr) error { _, err := tr.Dial(ctx, a, tlsConf, nil); return err },
		"Transport.DialEarly": func(a net.Addr) error { _, err := tr.DialEarly(ctx, a, tlsConf, nil); return err },
		"Transport.WriteTo":   func(a net.Addr) error { _, err := tr.WriteTo([]byte("x"), a); return err },
		"Conn.WriteTo":        func(a net.Addr) error { _, err := conn.WriteTo([]byte("x"), a); return err },
	}
	dsts := []struct {
		name     string
		addr     net.Addr
		want     error
		complete bool // refused only where a complete address is needed
	}{
		{"nil", nil, udppool.ErrMissingAddr, false},
		{"nil *net.UDPAddr", (*net.UDPAddr)(nil), udppool.ErrMissingAddr, false},
		{"no IP", &net.UDPAddr{Port: 443}, udppool.ErrMissingAddr, true},
		{"port 0", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, udppool.ErrMissingAddr, true},
		{"*net.TCPAddr", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 443}, udppool.ErrNotUDPAddr, false},
	}
	for name, op := range ops {
		for _, d := range dsts {
			if d.complete && name == "Conn.WriteTo" {
				continue // sent, as *net.UDPConn sends it, and refused by the kernel
			}
			// More often than the failures that would kill a socket.
			for range 3 * 8 {
				err := op(d.addr)
				var oe *net.OpError
				if !errors.Is(err, d.want) || !errors.As(err, &oe) {
					t.Fatalf("%s to %s: %v, want a *net.OpError wrapping %v", name, d.name, err, d.want)
				}
			}
		}
	}
	for _, s := range p.Stats() {
		if s.Dead != nil {
			t.Errorf("socket %v died of bad destinations: %v", s.Key, s.Dead)
		}
	}
	if n := len(p.Stats()); n != 2 {
		t.Errorf("bad destinations changed the pool's sockets: %+v", p.Stats())
	}
}
