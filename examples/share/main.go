// Command share demonstrates handing a pooled UDP socket from an old
// configuration to a new one while clients keep sending: the port never
// closes and no datagram is lost.
//
//	go run ./examples/share
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/udppool/udppool"
)

func main() {
	count := flag.Int("n", 2000, "datagrams to send per address family")
	flag.Parse()
	if err := run(*count); err != nil {
		log.Fatal(err)
	}
}

func run(count int) error {
	pool := udppool.New()
	defer pool.Close()
	ctx := context.Background()

	// The old configuration serves a dual-stack wildcard.
	old, err := pool.ListenPacket(ctx, "udp", ":0")
	if err != nil {
		return err
	}
	addr := old.LocalAddr().(*net.UDPAddr)
	fmt.Printf("serving %v (socket %v)\n", addr, old.Key())

	var received [2]atomic.Int64 // by the old and the new handle
	var wg sync.WaitGroup
	serve := func(c *udppool.Conn, n *atomic.Int64) {
		defer wg.Done()
		buf := make([]byte, 64)
		for {
			if _, _, err := c.ReadFrom(buf); err != nil {
				if !errors.Is(err, net.ErrClosed) {
					log.Print(err)
				}
				return
			}
			n.Add(1)
		}
	}
	wg.Add(1)
	go serve(old, &received[0])

	// Clients of each family the host has send while the hand-off happens.
	var clients []*net.UDPConn
	for _, host := range []string{"127.0.0.1", "::1"} {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(host)})
		if err != nil {
			fmt.Printf("no client for %s: %v\n", host, err)
			continue
		}
		defer c.Close()
		clients = append(clients, c)
	}
	sent := 0
	var next *udppool.Conn
	deadline := time.Now().Add(20 * time.Second)
	for i := range count {
		if i == count/2 {
			// Reload: the new configuration acquires the same key, then
			// the old one lets go. The socket stays bound throughout.
			next, err = pool.ListenPacket(ctx, "udp", fmt.Sprintf(":%d", addr.Port))
			if err != nil {
				return err
			}
			wg.Add(1)
			go serve(next, &received[1])
			old.Close()
		}
		for _, c := range clients {
			dst := &net.UDPAddr{IP: c.LocalAddr().(*net.UDPAddr).IP, Port: addr.Port}
			if _, err := c.WriteTo([]byte("datagram"), dst); err != nil {
				return err
			}
			sent++
		}
		// Pace the clients so that loss can only come from the hand-off,
		// never from a full socket buffer.
		for received[0].Load()+received[1].Load() < int64(sent-32) && time.Now().Before(deadline) {
			time.Sleep(100 * time.Microsecond)
		}
	}
	for received[0].Load()+received[1].Load() < int64(sent) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	sockets := len(pool.Stats())
	next.Close()
	wg.Wait()

	got := received[0].Load() + received[1].Load()
	fmt.Printf("%-28s %d\n", "datagrams sent", sent)
	fmt.Printf("%-28s %d\n", "received by old handle", received[0].Load())
	fmt.Printf("%-28s %d\n", "received by new handle", received[1].Load())
	fmt.Printf("%-28s %d\n", "lost", int64(sent)-got)
	fmt.Printf("%-28s %d\n", "sockets open during reload", sockets)
	if got != int64(sent) || sockets != 1 {
		os.Exit(1)
	}
	return nil
}
