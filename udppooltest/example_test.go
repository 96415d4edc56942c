package udppooltest_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
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
// It needs network namespaces (Linux, as root or in a user namespace) and
// is skipped elsewhere, so its output is checked by TestExampleHost where
// it runs, not by go test's comparison.
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
		fmt.Println("wildcard socket:", conn.Key().Network, conn.Key().Addr.Addr())

		// Or let QUICPair create them on each side.
		pair := udppooltest.QUICPair(t, udppooltest.WithHost(h), udppooltest.WithListenAddr("udp", ":0"), udppooltest.WithEcho())
		reply := udppooltest.RoundTrip(t, pair.Client, []byte("hello"))
		fmt.Printf("%s from %v to %v\n", reply, h.ClientV6, pair.Addr.Addr())
	})
}

// One CA for a whole test: it issues rotated server certificates that the
// same clients trust, client certificates, and the expired or wrong-name
// certificates of negative tests.
func ExampleCA() {
	test(func(t testing.TB) {
		certs := udppooltest.TLS(t) // a CA and a server certificate for localhost
		ca := certs.CA

		// handshake runs a TLS handshake in memory and returns the
		// client's and the server's verdicts.
		handshake := func(server, client *tls.Config) (error, error) {
			c1, c2 := net.Pipe()
			defer c1.Close()
			defer c2.Close()
			served := make(chan error, 1)
			go func() {
				err := tls.Server(c1, server).Handshake()
				c1.Close()
				served <- err
			}()
			conn := tls.Client(c2, client)
			err := conn.Handshake()
			if err == nil {
				conn.Read(make([]byte, 1)) // the server's verdict on a client certificate
			}
			c2.Close()
			return err, <-served
		}

		rotated := ca.Server(t) // a new key and certificate, same CA
		err, _ := handshake(rotated.ServerConfig("demo"), certs.ClientConfig("demo"))
		fmt.Println("rotated certificate trusted:", err == nil)

		expired, err := ca.Issue(udppooltest.Leaf{Names: []string{"localhost"}, NotAfter: time.Now().Add(-time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		err, _ = handshake(&tls.Config{Certificates: []tls.Certificate{expired}}, certs.ClientConfig("demo"))
		var invalid x509.CertificateInvalidError
		fmt.Println("expired certificate refused:", errors.As(err, &invalid) && invalid.Reason == x509.Expired)

		wrongName, err := ca.Issue(udppooltest.Leaf{Names: []string{"other.example"}})
		if err != nil {
			t.Fatal(err)
		}
		err, _ = handshake(&tls.Config{Certificates: []tls.Certificate{wrongName}}, certs.ClientConfig("demo"))
		var hostname x509.HostnameError
		fmt.Println("wrong name refused:", errors.As(err, &hostname))

		// Mutual TLS: the server verifies client certificates of the CA.
		server := certs.ServerConfig("demo")
		server.ClientCAs = ca.Roots()
		server.ClientAuth = tls.RequireAndVerifyClientCert
		client := certs.ClientConfig("demo")
		client.Certificates = []tls.Certificate{ca.Client(t, "alice")}
		_, err = handshake(server, client)
		fmt.Println("client certificate accepted:", err == nil)
		client.Certificates = []tls.Certificate{udppooltest.TLS(t).CA.Client(t, "mallory")}
		_, err = handshake(server, client)
		fmt.Println("client certificate of another CA accepted:", err == nil)
	})
	// Output:
	// rotated certificate trusted: true
	// expired certificate refused: true
	// wrong name refused: true
	// client certificate accepted: true
	// client certificate of another CA accepted: false
}

// TestExampleHost runs ExampleHost, whose output go test does not compare
// because the example is skipped where namespaces are not available, and
// compares its output where it runs.
func TestExampleHost(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	read := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(r)
		read <- string(b)
	}()
	stdout := os.Stdout
	os.Stdout = w
	func() {
		defer func() { os.Stdout = stdout }()
		ExampleHost()
	}()
	w.Close()
	out := <-read
	r.Close()
	if reason, ok := strings.CutPrefix(out, "SKIP: "); ok {
		t.Skip(strings.TrimSpace(reason))
	}
	want := "wildcard socket: udp ::\nhello from 2001:db8::2 to 2001:db8::1\n"
	if out != want {
		t.Errorf("ExampleHost printed\n%s\nwant\n%s", out, want)
	}
}
