package udppool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
)

// TestWithSocketsNoSteering: where the kernel cannot steer by connection
// ID, several sockets per address are refused with ErrNoSteering naming
// the address, and one socket is today's Transport.
func TestWithSocketsNoSteering(t *testing.T) {
	ctx := context.Background()
	p := newPool(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freeUDPPort(t))
	tr2, err := p.Transport(ctx, "udp4", addr, WithSockets(2))
	if kernelSteering {
		if err != nil {
			t.Fatalf("WithSockets(2) with kernel steering: %v", err)
		}
		tr2.Close()
		t.Skip("the kernel steers here; the refusals are in TestWithSocketsErrors")
	}
	var e *Error
	if !errors.Is(err, ErrNoSteering) || !errors.As(err, &e) || e.Addr != addr {
		t.Errorf("WithSockets(2) without kernel steering: %v, want an *Error naming %s wrapping ErrNoSteering", err, addr)
	}
	tr, err := p.Transport(ctx, "udp4", addr, WithSockets(1))
	if err != nil {
		t.Fatalf("WithSockets(1): %v", err)
	}
	if keys := tr.Keys(); len(keys) != 1 || keys[0].Socket != 0 {
		t.Errorf("WithSockets(1): keys %v", keys)
	}
	tr.Close()
}

// freeUDPPort returns a port that was free for IPv4 loopback a moment ago.
func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}
