package udppool_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"syscall"

	"github.com/udppool/udppool"
	"golang.org/x/sys/unix"
)

// Check finds sockets outside the pool on a pooled port, here one that a
// stale process of the same user could have left: with SO_REUSEPORT it
// joined the pooled socket's group and takes a share of its datagrams.
func ExamplePool_Check() {
	pool := udppool.New()
	defer pool.Close()
	ctx := context.Background()

	// A fixed port: a socket on port 0 never shares its port.
	probe, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	addr := probe.LocalAddr().String()
	probe.Close()
	conn, err := pool.ListenPacket(ctx, "udp4", addr)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	fmt.Println("alone:", pool.Check())

	reusePort := func(network, address string, c syscall.RawConn) error {
		var err error
		c.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return err
	}
	stale, err := (&net.ListenConfig{Control: reusePort}).ListenPacket(ctx, "udp4", addr)
	if err != nil {
		log.Fatal(err)
	}
	defer stale.Close()

	err = pool.Check()
	fmt.Println("foreign socket:", errors.Is(err, udppool.ErrForeignSocket))
	var fe *udppool.ForeignError
	if errors.As(err, &fe) {
		for _, f := range fe.Found {
			fmt.Println(f.Network, f.Local.String() == stale.LocalAddr().String())
		}
	}
	// Output:
	// alone: <nil>
	// foreign socket: true
	// udp4 true
}
