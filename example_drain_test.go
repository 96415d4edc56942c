package udppool_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"

	"github.com/quic-go/quic-go"
	"github.com/udppool/udppool"
	"github.com/udppool/udppool/udppooltest"
)

// A drain that ends: the protocol's "please leave" (here "bye" on a
// stream of the server's) reaches every connection of the old epoch;
// a client that leaves when asked is counted so, and one that stays is
// closed when the grace period ends, with the listener's close code.
func ExampleListener_Drain() {
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
	serverTLS := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"bye"}}
	clientTLS := &tls.Config{RootCAs: ca.Roots(), ServerName: "localhost", NextProtos: []string{"bye"}}

	tr, err := pool.Transport(ctx, "udp4", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()
	old, err := tr.Listen(serverTLS, nil, udppool.WithCloseCode(0x42, "reloaded"))
	if err != nil {
		log.Fatal(err)
	}
	dial := func() *quic.Conn {
		conn, err := quic.DialAddr(ctx, tr.LocalAddr().String(), clientTLS, nil)
		if err != nil {
			log.Fatal(err)
		}
		if _, err := old.Accept(ctx); err != nil {
			log.Fatal(err)
		}
		return conn
	}
	polite, stubborn := dial(), dial()
	go func() { // leaves when asked
		if s, err := polite.AcceptUniStream(ctx); err == nil {
			io.ReadAll(s)
			polite.CloseWithError(0, "leaving")
		}
	}()

	next, err := tr.Listen(serverTLS, nil) // epoch 2 takes new handshakes
	if err != nil {
		log.Fatal(err)
	}
	defer next.Close()
	// For the example's sake, the grace period ends when the first
	// connection has left.
	grace, endGrace := context.WithCancel(ctx)
	goAway := func(c *quic.Conn) {
		go func() {
			if s, err := c.OpenUniStream(); err == nil {
				s.Write([]byte("bye"))
				s.Close()
			}
			<-c.Context().Done()
			endGrace()
		}()
	}
	ds, err := old.Drain(grace, goAway)
	fmt.Println(ds)
	fmt.Println("drain:", err)

	<-stubborn.Context().Done()
	var ae *quic.ApplicationError
	if errors.As(context.Cause(stubborn.Context()), &ae) {
		fmt.Printf("the stubborn client was closed with %#x %q\n", uint64(ae.ErrorCode), ae.ErrorMessage)
	}
	// Output:
	// epoch=1 conns=2 ended_by_themselves=0 ended_by_goaway=1 ended_by_deadline=1
	// drain: context canceled
	// the stubborn client was closed with 0x42 "reloaded"
}
