package udppool_test

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/udppool/udppool"
)

// acquireAndDrop acquires a handle and a transport and drops them without
// Close.
func acquireAndDrop(t *testing.T, p *udppool.Pool) (conn, tr udppool.Key) {
	c, err := p.ListenPacket(context.Background(), "udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	x, err := p.Transport(context.Background(), "udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return c.Key(), x.Keys()[0]
}

// TestLeakReport drops a Conn and a Transport without Close: both are
// reported with the call site that acquired them, and their references are
// released, so their ports close.
func TestLeakReport(t *testing.T) {
	leaks := make(chan udppool.Leak, 4)
	p := pool(t, udppool.WithLeakReport(func(l udppool.Leak) { leaks <- l }))
	connKey, trKey := acquireAndDrop(t, p)
	got := map[udppool.Key]udppool.Leak{}
	deadline := time.Now().Add(quicTimeout)
	for len(got) < 2 && time.Now().Before(deadline) {
		runtime.GC()
		select {
		case l := <-leaks:
			got[l.Key] = l
		case <-time.After(10 * time.Millisecond):
		}
	}
	for k, kind := range map[udppool.Key]string{connKey: "Conn", trKey: "Transport"} {
		l, ok := got[k]
		if !ok {
			t.Fatalf("leaked %s of %v not reported (got %v)", kind, k, got)
		}
		if l.Kind != kind || !strings.Contains(l.Site, "acquireAndDrop") || !strings.Contains(l.Site, "leak_test.go") {
			t.Errorf("report %v: want kind %s and the acquiring call site", l, kind)
		}
	}
	// The references were released: the pool closes the sockets.
	for time.Now().Before(deadline) && len(p.Stats()) > 0 {
		time.Sleep(time.Millisecond)
	}
	if st := p.Stats(); len(st) != 0 {
		t.Fatalf("leaked references not released: %+v", st)
	}
}

// TestNoLeakReportAfterClose: handles closed properly are never reported.
func TestNoLeakReportAfterClose(t *testing.T) {
	leaks := make(chan udppool.Leak, 4)
	p := pool(t, udppool.WithLeakReport(func(l udppool.Leak) { leaks <- l }))
	func() {
		c, err := p.ListenPacket(context.Background(), "udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}()
	for range 3 {
		runtime.GC()
	}
	select {
	case l := <-leaks:
		t.Fatalf("closed handle reported as leaked: %v", l)
	case <-time.After(50 * time.Millisecond):
	}
}
