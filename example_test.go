package udppool_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"

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
