package udppool_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"net"
	"runtime"
	"strings"
	"time"

	"github.com/udppool/udppool"
)

// Two parts of a server (say, the old and the new configuration during a
// reload) ask for the same address and get one socket.
func Example() {
	pool := udppool.New()
	defer pool.Close()
	ctx := context.Background()

	old, err := pool.ListenPacket(ctx, "udp4", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	// The new configuration spells the address differently: same socket.
	next, err := pool.ListenPacket(ctx, "udp", old.LocalAddr().String())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("same socket:", old.Key() == next.Key())
	fmt.Println("references:", pool.Stats()[0].Refs)

	old.Close() // the old configuration lets go; the port stays open
	fmt.Println("sockets after the old handle closed:", len(pool.Stats()))
	next.Close()
	fmt.Println("sockets after the last handle closed:", len(pool.Stats()))
	// Output:
	// same socket: true
	// references: 2
	// sockets after the old handle closed: 1
	// sockets after the last handle closed: 0
}

// Errors name what was asked for and wrap a sentinel to test with errors.Is.
func ExamplePool_ListenPacket_errors() {
	pool := udppool.New()
	defer pool.Close()
	_, err := pool.ListenPacket(context.Background(), "udp4", "127.0.0.1:70000")
	fmt.Println(err)
	fmt.Println(errors.Is(err, udppool.ErrPortRange))
	// Output:
	// udppool: listen udp4 "127.0.0.1:70000": port out of range: 70000
	// true
}

// A pooled handle is a drop-in net.PacketConn.
func ExampleConn() {
	pool := udppool.New()
	defer pool.Close()
	srv, err := pool.ListenPacket(context.Background(), "udp4", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()

	cli, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	cli.WriteTo([]byte("hello"), srv.LocalAddr())

	buf := make([]byte, 16)
	n, _, err := srv.ReadFrom(buf)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", buf[:n])
	// Output: hello
}

// Stats lists every socket of the pool with its references and, for a
// QUIC socket, its listener epochs: what an operator watches.
func ExamplePool_Stats() {
	pool := udppool.New()
	defer pool.Close()
	ctx := context.Background()

	a, err := pool.ListenPacket(ctx, "udp4", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer a.Close()
	b, err := pool.ListenPacket(ctx, "udp4", a.LocalAddr().String())
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()

	tr, err := pool.Transport(ctx, "udp4", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()
	// No certificate is needed until a client connects.
	ln, err := tr.Listen(&tls.Config{NextProtos: []string{"h3"}}, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()

	for _, s := range pool.Stats() {
		switch s.Key {
		case a.Key():
			fmt.Printf("plain socket %s %v: %d references\n", s.Key.Network, s.Key.Addr.Addr(), s.Refs)
		case tr.Keys()[0]:
			fmt.Printf("QUIC socket %s %v: %d reference (the transport's)\n", s.Key.Network, s.Key.Addr.Addr(), s.Refs)
			for _, l := range s.Listeners {
				fmt.Printf("  epoch %d %v: accepting=%v conns=%d\n", l.Epoch, l.Protocols, l.Accepting, l.Conns)
			}
		}
	}
	// Unordered output:
	// plain socket udp4 127.0.0.1: 2 references
	// QUIC socket udp4 127.0.0.1: 1 reference (the transport's)
	//   epoch 1 [h3]: accepting=true conns=0
}

// WithLeakReport finds handles that were dropped without Close: each is
// reported, with the call that acquired it, when the garbage collector
// finds it, and its reference is released so that the port does not stay
// open forever.
func ExampleWithLeakReport() {
	leaks := make(chan udppool.Leak, 1)
	pool := udppool.New(udppool.WithLeakReport(func(l udppool.Leak) { leaks <- l }))
	defer pool.Close()

	func() {
		conn, err := pool.ListenPacket(context.Background(), "udp4", "127.0.0.1:0")
		if err != nil {
			log.Fatal(err)
		}
		_ = conn // forgotten: never closed
	}()

	// Leaks show when the garbage collector runs.
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		select {
		case l := <-leaks:
			fmt.Println(l.Kind, "leaked; acquired in this example:", strings.Contains(l.Site, "ExampleWithLeakReport"))
			return
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			log.Fatal("no leak reported")
		}
	}
	// Output: Conn leaked; acquired in this example: true
}
