package udppool

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// TestUpgraderListen checks Listen within one process: a bad network is a
// typed error that names it; a second Listen of the same spelling is
// another listener on the same socket, which keeps accepting after the
// first is closed; Stop ends the Upgrader's copies, and nothing is left
// open. The hand-over itself runs in examples/upgrade's tests, under HTTPS
// load over IPv4 and IPv6, under systemd and as PID 1.
func TestUpgraderListen(t *testing.T) {
	needIPv4(t)
	before := openFDs(t)
	u, err := newUpgrader("", false, WithSupervisor(false))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var oe *net.OpError
	if _, err := u.Listen(ctx, "udp", "127.0.0.1:0"); !errors.As(err, &oe) || !strings.Contains(err.Error(), "udp") {
		t.Errorf("Listen on udp: %v, want a *net.OpError naming the network", err)
	}
	if _, err := u.Listen(ctx, "tcp", "127.0.0.1:no-such-port"); err == nil || !strings.Contains(err.Error(), "no-such-port") {
		t.Errorf("Listen on a bad address: %v, want an error naming it", err)
	}
	a, err := u.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b, err := u.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if a.Addr().String() != b.Addr().String() {
		t.Fatalf("one spelling, two sockets: %v and %v", a.Addr(), b.Addr())
	}
	a.Close()
	accepted := make(chan error, 1)
	go func() {
		c, err := b.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	c, err := net.DialTimeout("tcp", b.Addr().String(), testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case err := <-accepted:
		if err != nil {
			t.Fatalf("accept on the second listener after the first closed: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("no connection accepted")
	}
	b.Close()
	if err := u.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Listen(ctx, "tcp", "127.0.0.1:0"); !errors.Is(err, ErrUpgraderStopped) {
		t.Errorf("Listen after Stop: %v, want ErrUpgraderStopped", err)
	}
	if after := openFDs(t); after != before {
		t.Errorf("%d descriptors open after Stop, %d before", after, before)
	}
}
