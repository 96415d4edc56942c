package udppool_test

// This file holds the example test of README.md, verbatim, so that it
// keeps compiling and passing.

import (
	"context"
	"testing"

	"github.com/quic-go/quic-go"
	"github.com/udppool/udppool/udppooltest"
)

func TestREADMEExample(t *testing.T) {
	pool := udppooltest.Pool(t) // at cleanup: no socket, reference, goroutine or descriptor left
	certs := udppooltest.TLS(t) // an in-memory CA and a leaf for localhost, 127.0.0.1 and ::1

	tr, err := pool.Transport(context.Background(), "udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ln, err := tr.Listen(certs.ServerConfig("my-proto"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			udppooltest.Echo(t, conn) // copies every stream back, closes conn at cleanup
		}
	}()

	// The client is plain quic-go, trusting only the test CA.
	conn, err := quic.DialAddr(context.Background(), tr.LocalAddr().String(), certs.ClientConfig("my-proto"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	if got := udppooltest.RoundTrip(t, conn, []byte("ping")); string(got) != "ping" {
		t.Fatalf("echo: %q", got)
	}
}
