package udppool_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/udppool/udppool"
	"go.uber.org/goleak"
	"golang.org/x/net/nettest"
)

// openFDs counts this process's descriptors, or -1 where it cannot.
func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

// TestReloadUnderLoad reloads the listener of a dual-stack transport 100
// times while IPv4 and IPv6 clients handshake without pause: no handshake
// may fail, and a connection accepted by each old epoch keeps working
// until the end.
func TestReloadUnderLoad(t *testing.T) { reloadUnderLoad(t, 100) }

// TestSoakReloads is the long version: 1,000 reloads under the same load,
// then no goroutine, descriptor or reference may be left.
func TestSoakReloads(t *testing.T) {
	if testing.Short() {
		t.Skip("soak test; runs without -short")
	}
	ignore := goleak.IgnoreCurrent()
	fds := openFDs()
	reloadUnderLoad(t, 1000) // closes every connection, listener and transport
	goleak.VerifyNone(t, ignore)
	if after := openFDs(); after != fds {
		t.Errorf("open descriptors: %d before the soak, %d after", fds, after)
	}
}

func reloadUnderLoad(t *testing.T, reloads int) {
	var clients []netip.Addr
	if nettest.SupportsIPv4() {
		clients = append(clients, v4)
	}
	if nettest.SupportsIPv6() {
		clients = append(clients, v6)
	}
	if len(clients) == 0 {
		t.Skip("no loopback")
	}
	p := pool(t)
	tr, err := p.Transport(context.Background(), "udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	port := portOf(tr)

	var waits []func()
	open := func(gen int) *udppool.Listener {
		ln, err := tr.Listen(certs().ServerConfig("echo"), nil)
		if err != nil {
			t.Fatal(err)
		}
		waits = append(waits, echoServer(ln, fmt.Sprintf("gen%d:", gen)))
		return ln
	}
	ln := open(0)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // the bound of the whole run
	defer cancel()
	stop := make(chan struct{})
	var ok, failed atomic.Int64
	var failMu sync.Mutex
	var failures []string
	var wg sync.WaitGroup
	for _, c := range clients {
		for range 2 {
			wg.Go(func() {
				uc := clientConn(t, c)
				defer uc.Close()
				ctr := &quic.Transport{Conn: uc}
				defer ctr.Close()
				for i := 0; i < 10000; i++ { // bounded; stops when the reloads end
					select {
					case <-stop:
						return
					default:
					}
					hctx, hcancel := context.WithTimeout(ctx, quicTimeout)
					conn, err := ctr.Dial(hctx, udpAddr(c, port), certs().ClientConfig("echo"), nil)
					if err == nil {
						_, err = streamEcho(hctx, conn)
						conn.CloseWithError(0, "")
					}
					hcancel()
					if err != nil {
						failed.Add(1)
						failMu.Lock()
						failures = append(failures, fmt.Sprintf("%v: %v", c, err))
						failMu.Unlock()
						continue
					}
					ok.Add(1)
				}
			})
		}
	}

	// Keep one connection of every tenth epoch open across later
	// reloads.
	type held struct {
		conn *quic.Conn
		tr   *quic.Transport
		tag  string
	}
	var kept []held
	for gen := 1; gen <= reloads; gen++ {
		if gen%(reloads/10) == 1 {
			c := clients[len(kept)%len(clients)]
			tag, conn, ctr, err := roundTrip(ctx, clientConn(t, c), netip.AddrPortFrom(c, port), "echo")
			if err != nil {
				t.Fatalf("epoch %d: %v", gen-1, err)
			}
			kept = append(kept, held{conn, ctr, tag})
		}
		next := open(gen)
		if err := ln.Close(); err != nil {
			t.Fatal(err)
		}
		ln = next
		// Let some handshakes land on each epoch.
		for start := ok.Load() + failed.Load(); ok.Load()+failed.Load() < start+2 && ctx.Err() == nil; {
			time.Sleep(100 * time.Microsecond)
		}
	}
	close(stop)
	wg.Wait()

	for _, h := range kept {
		if tag, err := streamEcho(ctx, h.conn); err != nil || tag != h.tag {
			t.Errorf("connection of %s after its listener closed: %q, %v", h.tag, tag, err)
		}
		h.conn.CloseWithError(0, "")
		h.tr.Close()
		h.tr.Conn.Close()
	}
	ln.Close()
	for _, w := range waits {
		w()
	}
	t.Logf("%d reloads, %d handshakes ok, %d failed, %d old-epoch connections kept", reloads, ok.Load(), failed.Load(), len(kept))
	if failed.Load() != 0 {
		t.Errorf("%d failed handshakes, first: %v", failed.Load(), failures[:min(len(failures), 5)])
	}
	if ok.Load() == 0 {
		t.Error("no handshake succeeded")
	}
	if st := p.Stats(); len(st) != 1 {
		t.Errorf("sockets after reloads: %+v, want the one socket", st)
	}
}

// TestQUICKeepsOptimizations runs a server on a pooled transport in a child
// process with quic-go's logging on (quic-go reads QUIC_GO_LOG_LEVEL at
// start-up) and fails if quic-go says it disabled its optimizations.
func TestQUICKeepsOptimizations(t *testing.T) {
	if os.Getenv("UDPPOOL_TEST_CHILD") == "quic-log" {
		p := pool(t)
		tr, _ := serve(t, p, "udp", ":0") // wildcard: quic-go needs packet info
		handshake(t, v4, netip.AddrPortFrom(v4, portOf(tr)), "echo")
		return
	}
	needFamilies(t, v4)
	cmd := exec.Command(os.Args[0], "-test.run=^TestQUICKeepsOptimizations$", "-test.count=1")
	cmd.Env = append(os.Environ(), "UDPPOOL_TEST_CHILD=quic-log", "QUIC_GO_LOG_LEVEL=debug")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	log := string(out)
	if strings.Contains(log, "Disabling optimizations") {
		t.Fatalf("quic-go disabled its optimizations on a pooled socket:\n%s", log)
	}
	// Proof that the child logged at all, and took the optimized path.
	for _, want := range []string{"Activating reading of ECN bits", "Activating reading of packet info", "server Installed 1-RTT Read keys"} {
		if !strings.Contains(log, want) {
			t.Errorf("quic-go did not log %q; log:\n%.3000s", want, log)
		}
	}
}
