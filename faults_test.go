package udppool_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/udppool/udppool"
)

// TestFaultForeignPortTransport: a Transport on a port held by a foreign
// socket without reuse fails with EADDRINUSE, naming the address, and
// leaves nothing behind.
func TestFaultForeignPortTransport(t *testing.T) {
	needFamilies(t, v4)
	p := pool(t)
	foreign, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	_, err = p.Transport(context.Background(), "udp4", foreign.LocalAddr().String())
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("Transport over a foreign socket: %v, want EADDRINUSE", err)
	}
	var e *udppool.Error
	if !errors.As(err, &e) || e.Addr != foreign.LocalAddr().String() {
		t.Fatalf("error does not name the address: %v", err)
	}
}

// TestFaultContextCancelledDuringAcquire cancels a request that waits for
// another caller's slow bind of the same key.
func TestFaultContextCancelledDuringAcquire(t *testing.T) {
	needFamilies(t, v4)
	binding, release := make(chan struct{}), make(chan struct{})
	slow := false
	p := pool(t, udppool.WithControl(func(string, string, syscall.RawConn) error {
		if slow {
			close(binding)
			<-release
		}
		return nil
	}))
	probe, err := p.ListenPacket(context.Background(), "udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := probe.LocalAddr().String()
	probe.Close()

	slow = true
	first := make(chan error, 1)
	var c *udppool.Conn
	go func() {
		var err error
		c, err = p.ListenPacket(context.Background(), "udp4", addr)
		first <- err
	}()
	<-binding
	ctx, cancel := context.WithCancel(context.Background())
	waiting := make(chan error, 1)
	go func() {
		_, err := p.ListenPacket(ctx, "udp4", addr)
		waiting <- err
	}()
	cancel()
	if err := <-waiting; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled acquire: %v, want context.Canceled", err)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); len(st) != 1 || st[0].Refs != 1 {
		t.Fatalf("a cancelled acquire left a reference: %+v", st)
	}
	c.Close()
}

// TestFaultPoolClosedUnderLiveUsers closes the pool while a handle reads, a
// listener accepts and a transport is held: each fails cleanly, every Close
// afterwards works, and the sockets are gone.
func TestFaultPoolClosedUnderLiveUsers(t *testing.T) {
	needFamilies(t, v4)
	fds := openFDs()
	p := udppool.New()
	c, err := p.ListenPacket(context.Background(), "udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tr, err := p.Transport(context.Background(), "udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tr.Listen(certs().ServerConfig("echo"), nil)
	if err != nil {
		t.Fatal(err)
	}
	read := make(chan error, 1)
	go func() {
		_, _, err := c.ReadFrom(make([]byte, 8))
		read <- err
	}()
	accept := make(chan error, 1)
	go func() {
		_, err := ln.Accept(context.Background())
		accept <- err
	}()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]chan error{"read": read, "accept": accept} {
		select {
		case err := <-ch:
			if err == nil {
				t.Errorf("%s succeeded on a closed pool", name)
			}
		case <-time.After(quicTimeout):
			t.Fatalf("%s still blocked after Pool.Close", name)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
	defer cancel()
	if _, err := tr.Dial(ctx, udpAddr(v4, 9), certs().ClientConfig("echo"), nil); err == nil {
		t.Error("Dial succeeded on a closed pool")
	}
	if _, err := p.Transport(ctx, "udp4", "127.0.0.1:0"); !errors.Is(err, udppool.ErrPoolClosed) {
		t.Errorf("Transport after Pool.Close: %v", err)
	}
	for name, closer := range map[string]func() error{"listener": ln.Close, "transport": tr.Close, "conn": c.Close} {
		if err := closer(); err != nil {
			t.Errorf("%s Close after Pool.Close: %v", name, err)
		}
	}
	if after := openFDs(); after != fds {
		t.Errorf("open descriptors: %d before, %d after", fds, after)
	}
}

// TestFaultTransportClosedUnderListener: closing the Transport handle leaves
// its listener serving; the listener's Close then frees the socket.
func TestFaultTransportClosedUnderListener(t *testing.T) {
	needFamilies(t, v4)
	p := pool(t)
	tr, err := p.Transport(context.Background(), "udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tr.Listen(certs().ServerConfig("echo"), nil)
	if err != nil {
		t.Fatal(err)
	}
	wait := echoServer(ln, "srv:")
	port := portOf(tr)
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Transport Close: %v", err)
	}
	if _, err := tr.Listen(certs().ServerConfig("echo"), nil); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Listen on a closed Transport: %v", err)
	}
	if tag := handshake(t, v4, netip.AddrPortFrom(v4, port), "echo"); tag != "srv:" {
		t.Fatalf("listener after its Transport closed: %q", tag)
	}
	ln.Close()
	wait()
	if st := p.Stats(); len(st) != 0 {
		t.Fatalf("socket kept after the last listener closed: %+v", st)
	}
}

// TestFaultTransportSocketDies breaks the socket under a QUIC transport
// while its listener waits: a new Transport for the same address is not
// handed the dead socket but binds a fresh one that serves handshakes, and
// the old listener's Accept returns instead of waiting forever.
func TestFaultTransportSocketDies(t *testing.T) {
	needFamilies(t, v4)
	if _, err := os.Stat("/proc/self/fd"); err != nil {
		t.Skip("needs Linux to break a descriptor")
	}
	p := pool(t)
	tr, ln := serve(t, p, "udp4", "127.0.0.1:0")
	addr := tr.LocalAddr().String()
	breakDescriptor(t, tr)
	fresh, _ := serve(t, p, "udp4", addr)
	if tag := handshake(t, v4, netip.AddrPortFrom(v4, portOf(fresh)), "echo"); tag != "srv:" {
		t.Fatalf("fresh transport: %q", tag)
	}
	ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
	defer cancel()
	if _, err := ln.Accept(ctx); !errors.Is(err, quic.ErrServerClosed) {
		t.Fatalf("Accept on a dead socket: %v, want quic.ErrServerClosed", err)
	}
}
