package udppooltest_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/udppool/udppool"
	"github.com/udppool/udppool/udppooltest"
)

// test runs fn as the body of a test: in a real test, t is the test's
// *testing.T. It runs the cleanups at the end and prints the first clause
// of each failure the helpers reported, and why the test was skipped.
func test(fn func(t testing.TB)) {
	r := &recorder{}
	r.run(fn)
	for _, e := range r.errors() {
		e = strings.TrimPrefix(e, "udppooltest: ")
		for _, sep := range []string{": ", " ("} {
			e, _, _ = strings.Cut(e, sep)
		}
		fmt.Println("FAIL:", e)
	}
	if r.skipped != "" {
		fmt.Println("SKIP:", r.skipped)
	}
}

// A datagram between two pooled loopback sockets, each closed at cleanup.
func ExampleLoopback() {
	test(func(t testing.TB) {
		server := udppooltest.Loopback(t, "udp") // 127.0.0.1, or ::1 without IPv4
		client := udppooltest.Loopback(t, "udp")
		if _, err := client.WriteTo([]byte("ping"), server.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		server.SetReadDeadline(time.Now().Add(udppooltest.Timeout))
		buf := make([]byte, 64)
		n, from, err := server.ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("%s from the client: %v\n", buf[:n], from.String() == client.LocalAddr().String())
	})
	// Output: ping from the client: true
}

// A pool of the test's own: two requests for one address share a socket,
// and the pool is checked and closed at cleanup.
func ExamplePool() {
	test(func(t testing.TB) {
		pool := udppooltest.Pool(t)
		a := udppooltest.LoopbackIn(t, pool, "udp")
		b, err := pool.ListenPacket(context.Background(), "udp", a.LocalAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		st := pool.Stats()
		fmt.Println("sockets:", len(st), "references:", st[0].Refs)
	})
	// Output: sockets: 1 references: 2
}

// Pool calls NoLeaks for its pool: a handle the test forgot to close fails
// the test at cleanup.
func ExampleNoLeaks() {
	test(func(t testing.TB) {
		pool := udppooltest.Pool(t)
		conn := udppooltest.LoopbackIn(t, pool, "udp") // closed by its cleanup
		again, err := pool.ListenPacket(context.Background(), "udp", conn.LocalAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		_ = again // a second handle to the same socket, forgotten: never closed
	})
	// Output: FAIL: pool still holds 1 socket(s) at cleanup
}

// With a pool of one's own, order matters: cleanups run last-in first-out,
// so the pool's Close is registered before NoLeaks (it runs after the
// check: closed earlier, the pool would hide a forgotten handle), and
// NoLeaks is called before anything it checks is created (their cleanups
// run before the check).
func ExampleNoLeaks_ownPool() {
	test(func(t testing.TB) {
		pool := udppool.New(udppool.WithReusePort(false))
		t.Cleanup(func() { pool.Close() })
		udppooltest.NoLeaks(t, pool)
		conn := udppooltest.LoopbackIn(t, pool, "udp") // closed by its cleanup
		fmt.Println("loopback:", conn.Key().Addr.Addr().IsLoopback())
	})
	// Output: loopback: true
}

// Certificates that the client verifies for real, here over an in-memory
// connection.
func ExampleTLS() {
	test(func(t testing.TB) {
		certs := udppooltest.TLS(t)
		c1, c2 := net.Pipe()
		defer c1.Close()
		defer c2.Close()
		served := make(chan error, 1)
		go func() { served <- tls.Server(c1, certs.ServerConfig("demo")).Handshake() }()
		client := tls.Client(c2, certs.ClientConfig("demo"))
		if err := client.Handshake(); err != nil {
			t.Fatal(err)
		}
		if err := <-served; err != nil {
			t.Fatal(err)
		}
		st := client.ConnectionState()
		fmt.Println(st.NegotiatedProtocol, st.PeerCertificates[0].Subject.CommonName, "verified:", len(st.VerifiedChains) > 0)
	})
	// Output: demo localhost verified: true
}

// A QUIC connection through a pooled Transport on loopback, with a server
// that echoes every stream.
func ExampleQUICPair() {
	test(func(t testing.TB) {
		pair := udppooltest.QUICPair(t, udppooltest.WithEcho())
		reply := udppooltest.RoundTrip(t, pair.Client, []byte("hello"))
		fmt.Printf("%s (ALPN %s, server on loopback: %v)\n", reply,
			pair.Server.ConnectionState().TLS.NegotiatedProtocol, pair.Addr.Addr().IsLoopback())
	})
	// Output: hello (ALPN udppooltest, server on loopback: true)
}

// An IPv6-only server machine (no 127.0.0.1, even on loopback) serving the
// "udp" wildcard, and a client machine that reaches it over the veth link.
// It needs root on Linux (the test is skipped elsewhere), so it has no
// output to check.
func ExampleHost() {
	test(func(t testing.TB) {
		h := udppooltest.Host(t, udppooltest.IPv6Only)

		// A socket belongs to the machine it is created in.
		pool := udppooltest.Pool(t)
		var conn *udppool.Conn
		err := h.InServer(func() (err error) {
			conn, err = pool.ListenPacket(context.Background(), "udp", ":0")
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Println("wildcard socket:", conn.Key())

		// Or let QUICPair create them on each side.
		pair := udppooltest.QUICPair(t, udppooltest.WithHost(h), udppooltest.WithListenAddr("udp", ":0"), udppooltest.WithEcho())
		reply := udppooltest.RoundTrip(t, pair.Client, []byte("hello"))
		fmt.Printf("%s from %v to %v\n", reply, h.ClientV6, pair.Addr)
	})
}
