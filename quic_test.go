package udppool_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/udppool/udppool"
	"github.com/udppool/udppool/udppooltest"
	"golang.org/x/net/nettest"
)

const quicTimeout = 15 * time.Second

// certs are the certificates of every QUIC test of the package: one CA and
// a server certificate for loopback and two documentation addresses.
var certs = sync.OnceValue(func() *udppooltest.Certs {
	ca, err := udppooltest.NewCA()
	if err != nil {
		panic(err)
	}
	cert, err := ca.Issue(udppooltest.Leaf{Names: []string{"localhost", "127.0.0.1", "::1", "192.0.2.1", "2001:db8::1"}})
	if err != nil {
		panic(err)
	}
	return &udppooltest.Certs{Certificate: cert, Roots: ca.Roots(), CA: ca}
})

// pool returns a pool that must be empty at the end of the test, with no
// goroutine or descriptor left behind (udppooltest.Pool).
func pool(t testing.TB, opts ...udppool.Option) *udppool.Pool {
	t.Helper()
	return udppooltest.Pool(t, opts...)
}

// echoServer accepts connections on ln and echoes one stream per
// connection, prefixed with tag, until ln is closed. It returns a function
// that waits for the server goroutines.
func echoServer(ln *udppool.Listener, tag string) (wait func()) {
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			wg.Go(func() { echo(conn, tag) })
		}
	})
	return wg.Wait
}

func echo(conn *quic.Conn, tag string) {
	for {
		s, err := conn.AcceptStream(context.Background())
		if err != nil {
			return
		}
		go func() {
			defer s.Close()
			s.Write([]byte(tag))
			io.Copy(s, s)
		}()
	}
}

// clientConn returns an unpooled client socket on the loopback of ip's
// family (or on local, if valid).
func clientConn(t testing.TB, local netip.Addr) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)))
	if err != nil {
		t.Fatalf("client socket on %v: %v", local, err)
	}
	return c
}

// roundTrip dials dst from a fresh client socket bound to local, sends a
// message on a stream and checks the echo. It returns the server's tag and
// the open connection, which the caller closes.
func roundTrip(ctx context.Context, uc *net.UDPConn, dst netip.AddrPort, alpn string) (string, *quic.Conn, *quic.Transport, error) {
	tr := &quic.Transport{Conn: uc}
	conn, err := tr.Dial(ctx, net.UDPAddrFromAddrPort(dst), certs().ClientConfig(alpn), &quic.Config{
		HandshakeIdleTimeout: quicTimeout,
		// Connections kept across a long soak must not reach the idle timeout.
		KeepAlivePeriod: 5 * time.Second,
	})
	if err != nil {
		tr.Close()
		uc.Close()
		return "", nil, nil, fmt.Errorf("dial %v: %w", dst, err)
	}
	tag, err := streamEcho(ctx, conn)
	if err != nil {
		conn.CloseWithError(0, "")
		tr.Close()
		uc.Close()
		return "", nil, nil, err
	}
	return tag, conn, tr, nil
}

// streamEcho opens a stream and checks that the server echoes it.
func streamEcho(ctx context.Context, conn *quic.Conn) (string, error) {
	s, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return "", err
	}
	defer s.Close()
	if d, ok := ctx.Deadline(); ok {
		s.SetDeadline(d)
	}
	msg := "hello over " + conn.RemoteAddr().String()
	if _, err := s.Write([]byte(msg)); err != nil {
		return "", err
	}
	buf := make([]byte, 64+len(msg))
	n, err := io.ReadAtLeast(s, buf, 2+len(msg))
	if err != nil {
		return "", fmt.Errorf("reading echo: %w", err)
	}
	got := string(buf[:n])
	if len(got) < len(msg) || got[len(got)-len(msg):] != msg {
		return "", fmt.Errorf("echo %q does not end with %q", got, msg)
	}
	return got[:len(got)-len(msg)], nil
}

// handshake runs one complete client round trip and closes everything.
func handshake(t testing.TB, local netip.Addr, dst netip.AddrPort, alpn string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
	defer cancel()
	tag, conn, tr, err := roundTrip(ctx, clientConn(t, local), dst, alpn)
	if err != nil {
		t.Fatalf("handshake from %v to %v: %v", local, dst, err)
	}
	conn.CloseWithError(0, "")
	tr.Close()
	tr.Conn.Close()
	return tag
}

var (
	v4 = netip.MustParseAddr("127.0.0.1")
	v6 = netip.IPv6Loopback()
)

// needFamilies skips the test on a host without loopback addresses of the
// families of addrs.
func needFamilies(t testing.TB, addrs ...netip.Addr) {
	t.Helper()
	for _, a := range addrs {
		if a.Is4() && !nettest.SupportsIPv4() || a.Is6() && !nettest.SupportsIPv6() {
			t.Skipf("host has no %v loopback", a)
		}
	}
}

// deadline bounds a blocking step of a test, so that a bug fails the test
// instead of hanging it; it is never asserted as a duration.
func deadline() time.Time { return time.Now().Add(quicTimeout) }

// waitFor polls cond until it holds, failing the test if it does not
// within quicTimeout. For conditions that no event announces (counters of
// the pool); the poll interval is no timing assumption.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for end := deadline(); !cond(); {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func portOf(tr *udppool.Transport) uint16 {
	return uint16(tr.LocalAddr().(*net.UDPAddr).Port)
}

// transport opens a pooled transport that the test closes at its end.
func transport(t testing.TB, p *udppool.Pool, network, address string) *udppool.Transport {
	t.Helper()
	tr, err := p.Transport(context.Background(), network, address)
	if err != nil {
		t.Fatalf("Transport(%q, %q): %v", network, address, err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// serve opens a pooled transport and an echo listener on it.
func serve(t testing.TB, p *udppool.Pool, network, address string) (*udppool.Transport, *udppool.Listener) {
	t.Helper()
	tr, err := p.Transport(context.Background(), network, address)
	if err != nil {
		t.Fatalf("Transport(%q, %q): %v", network, address, err)
	}
	ln, err := tr.Listen(certs().ServerConfig("echo"), nil)
	if err != nil {
		t.Fatal(err)
	}
	wait := echoServer(ln, "srv:")
	t.Cleanup(func() {
		ln.Close()
		tr.Close()
		wait()
	})
	return tr, ln
}

// TestHandshakePaths runs a real quic-go handshake and stream round trip for
// each address path on loopback.
func TestHandshakePaths(t *testing.T) {
	hasV4, hasV6 := nettest.SupportsIPv4(), nettest.SupportsIPv6()
	cases := []struct {
		name             string
		network, address string
		split            bool
		clients          []netip.Addr
	}{
		{"udp wildcard dual-stack", "udp", ":0", false, []netip.Addr{v4, v6}},
		{"udp4 wildcard", "udp4", ":0", false, []netip.Addr{v4}},
		{"udp6 wildcard", "udp6", ":0", false, []netip.Addr{v6}},
		{"udp 127.0.0.1", "udp", "127.0.0.1:0", false, []netip.Addr{v4}},
		{"udp4 127.0.0.1", "udp4", "127.0.0.1:0", false, []netip.Addr{v4}},
		{"udp ::1", "udp", "[::1]:0", false, []netip.Addr{v6}},
		{"udp6 ::1", "udp6", "[::1]:0", false, []netip.Addr{v6}},
		{"udp wildcard split-stack", "udp", ":0", true, []netip.Addr{v4, v6}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, c := range tc.clients {
				if c.Is4() && !hasV4 || c.Is6() && !hasV6 {
					t.Skipf("host has no %v loopback", c)
				}
			}
			p := pool(t, udppool.WithSplitStack(tc.split))
			tr, _ := serve(t, p, tc.network, tc.address)
			if tc.split && len(tr.Keys()) != 2 {
				t.Fatalf("split-stack transport on %v", tr.Keys())
			}
			if !tc.split && tc.network == "udp" && tc.address == ":0" && tr.Keys()[0].Network != "udp" {
				t.Fatalf("wildcard transport not dual-stack: %v", tr.Keys())
			}
			for _, c := range tc.clients {
				if tag := handshake(t, c, netip.AddrPortFrom(c, portOf(tr)), "echo"); tag != "srv:" {
					t.Errorf("client %v reached %q", c, tag)
				}
			}
		})
	}
}

// TestReloadHandOff: a new listener takes new handshakes, the old one's
// connections keep working after it closed, and the socket stays the same.
func TestReloadHandOff(t *testing.T) {
	needFamilies(t, v4)
	p := pool(t)
	tr, err := p.Transport(context.Background(), "udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	dst := netip.AddrPortFrom(v4, portOf(tr))
	oldLn, err := tr.Listen(certs().ServerConfig("echo"), nil)
	if err != nil {
		t.Fatal(err)
	}
	waitOld := echoServer(oldLn, "old:")
	ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
	defer cancel()
	tag, oldConn, oldTr, err := roundTrip(ctx, clientConn(t, v4), dst, "echo")
	if err != nil || tag != "old:" {
		t.Fatalf("before reload: %q, %v", tag, err)
	}
	defer func() { oldTr.Close(); oldTr.Conn.Close() }()

	// Reload: open the new listener first, then close the old one.
	newLn, err := tr.Listen(certs().ServerConfig("echo"), nil)
	if err != nil {
		t.Fatal(err)
	}
	waitNew := echoServer(newLn, "new:")
	if err := oldLn.Close(); err != nil {
		t.Fatal(err)
	}
	if err := oldLn.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close of a listener: %v", err)
	}
	if _, err := oldLn.Accept(ctx); !errors.Is(err, quic.ErrServerClosed) {
		t.Fatalf("Accept on a closed listener: %v", err)
	}
	if tag := handshake(t, v4, dst, "echo"); tag != "new:" {
		t.Fatalf("after reload a new handshake reached %q", tag)
	}
	// The old connection still works after its listener closed.
	if tag, err := streamEcho(ctx, oldConn); err != nil || tag != "old:" {
		t.Fatalf("old connection after reload: %q, %v", tag, err)
	}
	if st := p.Stats(); len(st) != 1 || st[0].Refs != 1 {
		t.Fatalf("stats after reload: %+v (want one socket held by the shared transport)", st)
	}
	oldConn.CloseWithError(0, "")
	newLn.Close()
	waitOld()
	waitNew()
}

// TestNewestListenerTakesHandshakes: with several listeners of one protocol
// open at once (a reload whose old epochs have not closed yet), every
// new handshake goes to the newest; closing it hands new handshakes to the
// newest that is left, never to an older one.
func TestNewestListenerTakesHandshakes(t *testing.T) {
	needFamilies(t, v4)
	p := pool(t)
	tr := transport(t, p, "udp4", "127.0.0.1:0")
	dst := netip.AddrPortFrom(v4, portOf(tr))
	var lns []*udppool.Listener
	var waits []func()
	for gen := 1; gen <= 3; gen++ {
		ln, err := tr.Listen(certs().ServerConfig("echo"), nil)
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		waits = append(waits, echoServer(ln, fmt.Sprintf("gen%d:", gen)))
	}
	defer func() {
		for i, ln := range lns {
			ln.Close()
			waits[i]()
		}
	}()
	if st := p.Stats(); len(st) != 1 || st[0].Epoch != 3 || len(st[0].Listeners) != 3 {
		t.Fatalf("stats with three listeners open: %+v", st)
	}
	for newest := 3; newest >= 1; newest-- {
		want := fmt.Sprintf("gen%d:", newest)
		for range 2 {
			if tag := handshake(t, v4, dst, "echo"); tag != want {
				t.Fatalf("with epochs 1 to %d open, a new handshake reached %q, want %q", newest, tag, want)
			}
		}
		if err := lns[newest-1].Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestALPNRouting: listeners for different protocols share one port; a
// handshake for a protocol nobody serves fails without disturbing the rest.
func TestALPNRouting(t *testing.T) {
	needFamilies(t, v4)
	p := pool(t)
	tr := transport(t, p, "udp4", "127.0.0.1:0")
	lnA, err := tr.Listen(certs().ServerConfig("proto-a"), nil)
	if err != nil {
		t.Fatal(err)
	}
	waitA := echoServer(lnA, "a:")
	lnB, err := tr.ListenEarly(certs().ServerConfig("proto-b"), nil)
	if err != nil {
		t.Fatal(err)
	}
	waitB := echoServer(lnB, "b:")
	dst := netip.AddrPortFrom(v4, portOf(tr))
	for range 2 {
		if tag := handshake(t, v4, dst, "proto-a"); tag != "a:" {
			t.Fatalf("proto-a reached %q", tag)
		}
		if tag := handshake(t, v4, dst, "proto-b"); tag != "b:" {
			t.Fatalf("proto-b reached %q", tag)
		}
		ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
		_, _, _, err := roundTrip(ctx, clientConn(t, v4), dst, "proto-c")
		cancel()
		if err == nil {
			t.Fatal("handshake for an unserved protocol succeeded")
		}
	}
	lnB.Close()
	// With proto-b's listener gone, proto-b is refused and proto-a works.
	ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
	defer cancel()
	if _, _, _, err := roundTrip(ctx, clientConn(t, v4), dst, "proto-b"); err == nil {
		t.Fatal("proto-b still served after its listener closed")
	}
	if tag := handshake(t, v4, dst, "proto-a"); tag != "a:" {
		t.Fatalf("proto-a reached %q", tag)
	}
	lnA.Close()
	waitA()
	waitB()
}

func TestTransportSettingsConflict(t *testing.T) {
	p := pool(t)
	ctx := context.Background()
	first, err := p.Transport(ctx, "udp4", "127.0.0.1:0", udppool.WithQUICTransport(&quic.Transport{ConnectionIDLength: 8}))
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	addr := first.LocalAddr().String()
	same, err := p.Transport(ctx, "udp4", addr, udppool.WithQUICTransport(&quic.Transport{ConnectionIDLength: 8}))
	if err != nil {
		t.Fatalf("same settings: %v", err)
	}
	same.Close()
	none, err := p.Transport(ctx, "udp4", addr)
	if err != nil {
		t.Fatalf("no settings: %v", err)
	}
	none.Close()
	_, err = p.Transport(ctx, "udp4", addr, udppool.WithQUICTransport(&quic.Transport{ConnectionIDLength: 4}))
	if !errors.Is(err, udppool.ErrTransportConfig) {
		t.Fatalf("conflicting settings: %v, want ErrTransportConfig", err)
	}
	var e *udppool.Error
	if !errors.As(err, &e) || e.Addr != addr {
		t.Fatalf("error does not name the address: %v", err)
	}
	if st := p.Stats(); len(st) != 1 || st[0].Refs != 1 {
		t.Fatalf("a refused request left references: %+v", st)
	}
}

// TestDialFromPool dials from a pooled transport (a client reusing a
// server's port) and refuses a family its socket cannot reach.
func TestDialFromPool(t *testing.T) {
	needFamilies(t, v4)
	p := pool(t)
	srv, _ := serve(t, p, "udp4", "127.0.0.1:0")
	cli, err := p.Transport(context.Background(), "udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
	defer cancel()
	conn, err := cli.Dial(ctx, srv.LocalAddr(), certs().ClientConfig("echo"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if tag, err := streamEcho(ctx, conn); err != nil || tag != "srv:" {
		t.Fatalf("dialled round trip: %q, %v", tag, err)
	}
	if got := conn.LocalAddr().(*net.UDPAddr).Port; got != int(portOf(cli)) {
		t.Fatalf("connection left from port %d, want the pooled %d", got, portOf(cli))
	}
	conn.CloseWithError(0, "")
	_, err = cli.Dial(ctx, &net.UDPAddr{IP: net.IPv6loopback, Port: 443}, certs().ClientConfig("echo"), nil)
	if !errors.Is(err, udppool.ErrFamily) {
		t.Fatalf("dialling IPv6 from a udp4 socket: %v, want ErrFamily", err)
	}
}

// TestNonQUICBesideQUIC runs a plain UDP echo on the QUIC port while QUIC
// handshakes go on.
func TestNonQUICBesideQUIC(t *testing.T) {
	needFamilies(t, v4)
	p := pool(t)
	tr, _ := serve(t, p, "udp4", "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
	defer cancel()
	// The server echoes every non-QUIC datagram until the test is done, so
	// that a datagram the client sent again (its echo was slow, or it came
	// before the server read) costs nothing.
	srvCtx, stop := context.WithCancel(ctx)
	echoed := make(chan error, 1)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := tr.ReadNonQUICPacket(srvCtx, buf)
			if err != nil {
				if srvCtx.Err() != nil {
					err = nil
				}
				echoed <- err
				return
			}
			if _, err := tr.WriteTo(buf[:n], from); err != nil {
				echoed <- err
				return
			}
		}
	}()
	plain := clientConn(t, v4)
	defer plain.Close()
	dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(v4, portOf(tr)))
	deadline, _ := ctx.Deadline()
	buf := make([]byte, 64)
	for i := range 5 {
		handshake(t, v4, netip.AddrPortFrom(v4, portOf(tr)), "echo")
		// The first bit clear marks it as not QUIC.
		msg := fmt.Sprintf("\x00plain %d", i)
		// quic-go drops non-QUIC datagrams until the server first reads,
		// so the client sends again when no echo came for a while, waiting
		// twice as long each time so that a slow server is not flooded. The
		// wait only paces the sends: a slow echo still counts when it
		// comes, and the test fails only at the overall deadline or after
		// maxTries sends.
		const maxTries = 20
		got, wait := "", 100*time.Millisecond
		for try := 0; got != msg; try, wait = try+1, min(2*wait, 2*time.Second) {
			if try == maxTries || !time.Now().Before(deadline) {
				t.Fatalf("plain UDP echo %d: no echo after %d sends", i, try)
			}
			if _, err := plain.WriteTo([]byte(msg), dst); err != nil {
				t.Fatal(err)
			}
			if next := time.Now().Add(wait); next.Before(deadline) {
				plain.SetReadDeadline(next)
			} else {
				plain.SetReadDeadline(deadline)
			}
			for got != msg {
				n, _, err := plain.ReadFrom(buf)
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				got = string(buf[:n]) // an echo of an earlier message is read past
			}
		}
	}
	stop()
	if err := <-echoed; err != nil {
		t.Fatal(err)
	}
}

func udpAddr(ip netip.Addr, port uint16) *net.UDPAddr {
	return net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, port))
}
