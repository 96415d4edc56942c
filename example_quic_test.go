package udppool_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/udppool/udppool"
	"github.com/udppool/udppool/udppooltest"
)

// A QUIC echo server on a pooled Transport, and a plain quic-go client.
// Every part of a process that asks the pool for the address gets the same
// quic.Transport; the Listener is logical, so several can be open on it.
func ExamplePool_Transport() {
	pool := udppool.New()
	defer pool.Close()
	ctx := context.Background()

	// A throw-away CA stands in for the server's real certificate.
	ca, err := udppooltest.NewCA()
	if err != nil {
		log.Fatal(err)
	}
	cert, err := ca.Issue(udppooltest.Leaf{Names: []string{"localhost"}})
	if err != nil {
		log.Fatal(err)
	}

	tr, err := pool.Transport(ctx, "udp4", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()
	ln, err := tr.Listen(&tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"echo"}}, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept(ctx)
		if err != nil {
			return
		}
		str, err := conn.AcceptStream(ctx)
		if err != nil {
			return
		}
		io.Copy(str, str)
		str.Close()
	}()

	client := &tls.Config{RootCAs: ca.Roots(), ServerName: "localhost", NextProtos: []string{"echo"}}
	conn, err := quic.DialAddr(ctx, tr.LocalAddr().String(), client, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		log.Fatal(err)
	}
	str.Write([]byte("hello"))
	str.Close()
	reply, err := io.ReadAll(str)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s (ALPN %s)\n", reply, conn.ConnectionState().TLS.NegotiatedProtocol)
	// Output: hello (ALPN echo)
}

// A reload hand-off: open the new listener first, then close the old one.
// The port never closes, so no handshake fails; new handshakes go to the
// newest listener, and connections of the old one stay open.
func ExampleTransport_Listen_reload() {
	pool := udppool.New()
	defer pool.Close()
	ctx := context.Background()

	ca, err := udppooltest.NewCA()
	if err != nil {
		log.Fatal(err)
	}
	cert, err := ca.Issue(udppooltest.Leaf{Names: []string{"localhost"}})
	if err != nil {
		log.Fatal(err)
	}
	serverTLS := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"echo"}}
	clientTLS := &tls.Config{RootCAs: ca.Roots(), ServerName: "localhost", NextProtos: []string{"echo"}}

	tr, err := pool.Transport(ctx, "udp4", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()

	// serve answers each stream of each connection of ln with its name
	// and what the client wrote.
	serve := func(ln *udppool.Listener, name string) {
		for {
			conn, err := ln.Accept(ctx)
			if err != nil {
				return // ln closed
			}
			go func() {
				for {
					str, err := conn.AcceptStream(ctx)
					if err != nil {
						return // conn closed
					}
					msg, _ := io.ReadAll(str)
					fmt.Fprintf(str, "%s: %s", name, msg)
					str.Close()
				}
			}()
		}
	}
	ask := func(conn *quic.Conn, msg string) string {
		str, err := conn.OpenStreamSync(ctx)
		if err != nil {
			return err.Error()
		}
		str.Write([]byte(msg))
		str.Close()
		reply, err := io.ReadAll(str)
		if err != nil {
			return err.Error()
		}
		return string(reply)
	}

	old, err := tr.Listen(serverTLS, nil)
	if err != nil {
		log.Fatal(err)
	}
	go serve(old, "old")
	first, err := quic.DialAddr(ctx, tr.LocalAddr().String(), clientTLS, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer first.CloseWithError(0, "")
	fmt.Println(ask(first, "hello"))

	// The reload, with a new configuration in a real server.
	next, err := tr.Listen(serverTLS, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer next.Close()
	go serve(next, "new")
	old.Close()

	second, err := quic.DialAddr(ctx, tr.LocalAddr().String(), clientTLS, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer second.CloseWithError(0, "")
	fmt.Println(ask(second, "hello"))
	fmt.Println(ask(first, "still there?"))
	// Output:
	// old: hello
	// new: hello
	// old: still there?
}

// Shutdown retires a listener epoch gracefully: it stops accepting at
// once, and returns when the connections it accepted have closed (or when
// its context ends, closing those left). Stats shows the hand-over.
func ExampleListener_Shutdown() {
	pool := udppool.New()
	defer pool.Close()
	ctx := context.Background()

	ca, err := udppooltest.NewCA()
	if err != nil {
		log.Fatal(err)
	}
	cert, err := ca.Issue(udppooltest.Leaf{Names: []string{"localhost"}})
	if err != nil {
		log.Fatal(err)
	}
	serverTLS := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"echo"}}
	clientTLS := &tls.Config{RootCAs: ca.Roots(), ServerName: "localhost", NextProtos: []string{"echo"}}

	tr, err := pool.Transport(ctx, "udp4", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()
	show := func(when string) {
		for _, s := range pool.Stats() {
			for _, l := range s.Listeners {
				fmt.Printf("%s: epoch %d accepting=%v conns=%d\n", when, l.Epoch, l.Accepting, l.Conns)
			}
		}
	}

	old, err := tr.Listen(serverTLS, nil)
	if err != nil {
		log.Fatal(err)
	}
	client, err := quic.DialAddr(ctx, tr.LocalAddr().String(), clientTLS, nil)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := old.Accept(ctx); err != nil {
		log.Fatal(err)
	}

	next, err := tr.Listen(serverTLS, nil) // epoch 2 takes new handshakes
	if err != nil {
		log.Fatal(err)
	}
	defer next.Close()
	drained := make(chan error, 1)
	go func() { drained <- old.Shutdown(ctx) }()
	// Accept returns once the old listener has stopped accepting.
	if _, err := old.Accept(ctx); errors.Is(err, quic.ErrServerClosed) {
		show("draining")
	}

	client.CloseWithError(0, "bye") // the last connection of epoch 1 ends
	if err := <-drained; err != nil {
		log.Fatal(err)
	}
	show("drained")
	// Output:
	// draining: epoch 1 accepting=false conns=1
	// draining: epoch 2 accepting=true conns=0
	// drained: epoch 2 accepting=true conns=0
}

// HTTP/3 on a pooled Listener: http3.Server.ServeListener takes it as it
// is. A reload starts a new listener and server and closes the old
// listener; closing an http3.Server does not close its listener.
func ExampleListener_http3() {
	pool := udppool.New()
	defer pool.Close()
	ctx := context.Background()

	ca, err := udppooltest.NewCA()
	if err != nil {
		log.Fatal(err)
	}
	cert, err := ca.Issue(udppooltest.Leaf{Names: []string{"127.0.0.1"}})
	if err != nil {
		log.Fatal(err)
	}

	tr, err := pool.Transport(ctx, "udp4", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()
	// ConfigureTLSConfig sets the ALPN protocol "h3", by which the pool
	// routes handshakes to this listener.
	ln, err := tr.Listen(http3.ConfigureTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}}), nil)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http3.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello over %s", r.Proto)
	})}
	served := make(chan error, 1)
	go func() { served <- srv.ServeListener(ln) }()

	h3 := &http3.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Roots()}}
	defer h3.Close()
	client := &http.Client{Transport: h3}
	resp, err := client.Get(fmt.Sprintf("https://%v/", tr.LocalAddr()))
	if err != nil {
		log.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.Status, string(body))

	ln.Close()
	fmt.Println(<-served)
	srv.Close()
	// Output:
	// 200 OK hello over HTTP/3.0
	// http: Server closed
}

// Dial on a pool that runs no transport: the pool binds one for the
// destination's family on an ephemeral port, which later dials share and
// which closes with the last connection dialled on it.
func ExamplePool_Dial() {
	ctx := context.Background()
	ca, err := udppooltest.NewCA()
	if err != nil {
		log.Fatal(err)
	}
	cert, err := ca.Issue(udppooltest.Leaf{Names: []string{"localhost"}})
	if err != nil {
		log.Fatal(err)
	}
	// The peer is plain quic-go.
	peer, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"echo"}}, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer peer.Close()

	pool := udppool.New()
	defer pool.Close()
	conn, err := pool.Dial(ctx, peer.Addr(), &tls.Config{RootCAs: ca.Roots(), ServerName: "localhost", NextProtos: []string{"echo"}}, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	seen, err := peer.Accept(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer seen.CloseWithError(0, "")
	for _, s := range pool.Stats() {
		fmt.Println("dialled from", s.Key.Network, s.Key.Addr.Addr(), "port", s.Key.Addr.Port() == uint16(seen.RemoteAddr().(*net.UDPAddr).Port))
	}
	// Output: dialled from udp4 0.0.0.0 port true
}

// Dial from the port a server listens on, so that the peer sees, and NAT
// maps, that port: what hole punching needs.
func ExamplePool_Dial_localPort() {
	pool := udppool.New()
	defer pool.Close()
	ctx := context.Background()

	ca, err := udppooltest.NewCA()
	if err != nil {
		log.Fatal(err)
	}
	cert, err := ca.Issue(udppooltest.Leaf{Names: []string{"localhost"}})
	if err != nil {
		log.Fatal(err)
	}
	serverTLS := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"p2p"}}
	clientTLS := &tls.Config{RootCAs: ca.Roots(), ServerName: "localhost", NextProtos: []string{"p2p"}}

	// Our server.
	tr, err := pool.Transport(ctx, "udp4", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()
	ln, err := tr.Listen(serverTLS, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	port := uint16(tr.LocalAddr().(*net.UDPAddr).Port)

	// A peer, in plain quic-go.
	peer, err := quic.ListenAddr("127.0.0.1:0", serverTLS, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer peer.Close()

	conn, err := pool.Dial(ctx, peer.Addr(), clientTLS, nil, udppool.WithLocalPort(port))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	seen, err := peer.Accept(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer seen.CloseWithError(0, "")
	fmt.Println("the peer sees our listening port:", seen.RemoteAddr().(*net.UDPAddr).Port == int(port))

	// A port without a pooled transport is an error, not a new socket.
	_, err = pool.Dial(ctx, peer.Addr(), clientTLS, nil, udppool.WithLocalPort(port+1))
	fmt.Println(errors.Is(err, udppool.ErrNoTransport))
	// Output:
	// the peer sees our listening port: true
	// true
}
