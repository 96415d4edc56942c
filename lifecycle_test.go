package udppool_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/udppool/udppool"
	"golang.org/x/net/nettest"
)

// listenerStats returns the listener epochs of the pool's only socket.
func listenerStats(t *testing.T, p *udppool.Pool) []udppool.ListenerStats {
	t.Helper()
	st := p.Stats()
	if len(st) != 1 {
		t.Fatalf("want one socket, have %+v", st)
	}
	return st[0].Listeners
}

func epochs(ls []udppool.ListenerStats) string {
	var s []string
	for _, l := range ls {
		s = append(s, fmt.Sprintf("gen%d accepting=%v conns=%d", l.Epoch, l.Accepting, l.Conns))
	}
	return strings.Join(s, "; ")
}

// TestShutdownDrains: an old listener's Shutdown waits for its connection
// while the new epoch accepts, keeps the port open for it even after
// every other user left, and then lets the socket go.
func TestShutdownDrains(t *testing.T) {
	needFamilies(t, v4)
	p := pool(t)
	tr, err := p.Transport(context.Background(), "udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dst := netip.AddrPortFrom(v4, portOf(tr))
	old, err := tr.Listen(certs().ServerConfig("echo"), nil)
	if err != nil {
		t.Fatal(err)
	}
	waitOld := echoServer(old, "old:")
	ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
	defer cancel()
	_, conn, ctr, err := roundTrip(ctx, clientConn(t, v4), dst, "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ctr.Close(); ctr.Conn.Close() }()

	next, err := tr.Listen(certs().ServerConfig("echo"), nil)
	if err != nil {
		t.Fatal(err)
	}
	waitNext := echoServer(next, "new:")
	shut := make(chan error, 1)
	go func() { shut <- old.Shutdown(ctx) }()
	// Stats shows the old epoch draining while the new one accepts.
	for !strings.Contains(epochs(listenerStats(t, p)), "gen1 accepting=false conns=1") && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	if got := epochs(listenerStats(t, p)); got != "gen1 accepting=false conns=1; gen2 accepting=true conns=0" {
		t.Fatalf("during the reload: %s", got)
	}
	if tag := handshake(t, v4, dst, "echo"); tag != "new:" {
		t.Fatalf("new handshake reached %q", tag)
	}
	// Every other user leaves; the draining listener keeps the port.
	next.Close()
	tr.Close()
	waitNext()
	if tag, err := streamEcho(ctx, conn); err != nil || tag != "old:" {
		t.Fatalf("old connection while draining: %q, %v", tag, err)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned with a connection open: %v", err)
	default:
	}
	conn.CloseWithError(0, "done")
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	waitOld()
	if st := p.Stats(); len(st) != 0 {
		t.Fatalf("socket kept after the drain: %+v", st)
	}
}

// TestShutdownDeadline: connections still open when the context ends are
// closed with application error 0.
func TestShutdownDeadline(t *testing.T) {
	needFamilies(t, v4)
	p := pool(t)
	tr, ln := serve(t, p, "udp4", "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
	defer cancel()
	_, conn, ctr, err := roundTrip(ctx, clientConn(t, v4), netip.AddrPortFrom(v4, portOf(tr)), "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ctr.Close(); ctr.Conn.Close() }()
	short, cancelShort := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelShort()
	if err := ln.Shutdown(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown past its deadline: %v", err)
	}
	select {
	case <-conn.Context().Done():
	case <-ctx.Done():
		t.Fatal("connection not closed by Shutdown")
	}
	var ae *quic.ApplicationError
	if err := context.Cause(conn.Context()); !errors.As(err, &ae) || ae.ErrorCode != 0 || !ae.Remote {
		t.Fatalf("connection closed with %v, want the peer's application error 0", err)
	}
}

// TestHTTP3SlowRequestAcrossReload: a slow HTTP/3 request on the old
// epoch completes while the new epoch serves, and Stats shows the
// old one draining to zero.
func TestHTTP3SlowRequestAcrossReload(t *testing.T) {
	needFamilies(t, v4)
	p := pool(t)
	tr := transport(t, p, "udp4", "127.0.0.1:0")
	release := make(chan struct{})
	started := make(chan struct{})
	epoch := func(name string) (*udppool.Listener, *http3.Server) {
		ln, err := tr.Listen(http3.ConfigureTLSConfig(certs().ServerConfig()), nil)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http3.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				close(started)
				<-release
			}
			fmt.Fprintf(w, "%s served %s", name, r.URL.Path)
		})}
		go srv.ServeListener(ln)
		return ln, srv
	}
	oldLn, oldSrv := epoch("gen1")
	defer oldSrv.Close()
	url := fmt.Sprintf("https://127.0.0.1:%d", portOf(tr))
	get := func(rt *http3.Transport, path string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+path, nil)
		resp, err := rt.RoundTrip(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	oldClient := &http3.Transport{TLSClientConfig: certs().ClientConfig()}
	defer oldClient.Close()
	slow := make(chan string, 1)
	go func() {
		body, err := get(oldClient, "/slow")
		if err != nil {
			body = err.Error()
		}
		slow <- body
	}()
	<-started

	// Load: clients make requests, each on a new connection, from before
	// the reload until the old epoch has drained.
	stopLoad := make(chan struct{})
	var loadWG sync.WaitGroup
	var loadMu sync.Mutex
	served := map[string]int{}
	var failures []string
	for range 3 {
		loadWG.Go(func() {
			for range 1000 { // bounded; stopped after the drain
				select {
				case <-stopLoad:
					return
				default:
				}
				c := &http3.Transport{TLSClientConfig: certs().ClientConfig()}
				body, err := get(c, "/fast")
				c.Close()
				loadMu.Lock()
				if err != nil {
					failures = append(failures, err.Error())
				} else {
					served[strings.Fields(body)[0]]++
				}
				loadMu.Unlock()
			}
		})
	}
	for loaded := false; !loaded; {
		time.Sleep(time.Millisecond)
		loadMu.Lock()
		loaded = served["gen1"] > 0 || len(failures) > 0
		loadMu.Unlock()
	}

	// Reload while the slow request is in flight.
	newLn, newSrv := epoch("gen2")
	defer newLn.Close()
	defer newSrv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
	defer cancel()
	drained := make(chan error, 1)
	go func() { drained <- oldLn.Shutdown(ctx) }()
	newClient := &http3.Transport{TLSClientConfig: certs().ClientConfig()}
	defer newClient.Close()
	if body, err := get(newClient, "/fast"); err != nil || body != "gen2 served /fast" {
		t.Fatalf("new request during the reload: %q, %v", body, err)
	}
	t.Logf("during the reload: %s", epochs(listenerStats(t, p)))
	close(release)
	if body := <-slow; body != "gen1 served /slow" {
		t.Fatalf("slow request across the reload: %q", body)
	}
	oldClient.Close() // the old client leaves: the old epoch drains
	if err := <-drained; err != nil {
		t.Fatalf("old epoch did not drain: %v", err)
	}
	got := epochs(listenerStats(t, p))
	t.Logf("after the drain: %s", got)
	if strings.Contains(got, "gen1") {
		t.Fatalf("old epoch still listed after draining: %s", got)
	}
	close(stopLoad)
	loadWG.Wait()
	t.Logf("load: %d requests served by gen1, %d by gen2, %d failed", served["gen1"], served["gen2"], len(failures))
	if len(failures) > 0 || served["gen2"] == 0 {
		t.Fatalf("load across the reload: served %v, failures %v", served, failures[:min(3, len(failures))])
	}
	newClient.Close()
}

// TestPoolDial picks the pooled transport on a given port that can reach
// the destination, and fails at once when none can.
func TestPoolDial(t *testing.T) {
	if !nettest.SupportsIPv4() || !nettest.SupportsIPv6() {
		t.Skip("needs IPv4 and IPv6 loopback")
	}
	p := pool(t, udppool.WithSplitStack(true))
	srv4, _ := serve(t, p, "udp4", "127.0.0.1:0")
	srv6, _ := serve(t, p, "udp6", "[::1]:0")
	split, _ := serve(t, p, "udp", ":0") // an IPv4 and an IPv6 socket on one port
	port := portOf(split)
	ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
	defer cancel()
	for _, dst := range []net.Addr{srv4.LocalAddr(), srv6.LocalAddr()} {
		conn, err := p.Dial(ctx, dst, certs().ClientConfig("echo"), nil, udppool.WithLocalPort(port))
		if err != nil {
			t.Fatalf("Dial %v: %v", dst, err)
		}
		la := conn.LocalAddr().(*net.UDPAddr)
		ra := dst.(*net.UDPAddr)
		if la.Port != int(port) || (la.IP.To4() != nil) != (ra.IP.To4() != nil) {
			t.Errorf("dial to %v left from %v, want port %d of the same family", dst, la, port)
		}
		if _, err := streamEcho(ctx, conn); err != nil {
			t.Errorf("round trip to %v: %v", dst, err)
		}
		conn.CloseWithError(0, "")
	}
	// Port of the udp6-only server: it cannot send to IPv4.
	if _, err := p.Dial(ctx, srv4.LocalAddr(), certs().ClientConfig("echo"), nil, udppool.WithLocalPort(portOf(srv6))); !errors.Is(err, udppool.ErrFamily) {
		t.Fatalf("IPv4 from an IPv6-only socket: %v, want ErrFamily", err)
	}
	// A port without a transport: Dial does not bind it.
	free := listenUDP(t, "udp4", "127.0.0.1:0")
	freePort := uint16(free.LocalAddr().(*net.UDPAddr).Port)
	free.Close()
	if _, err := p.Dial(ctx, srv4.LocalAddr(), certs().ClientConfig("echo"), nil, udppool.WithLocalPort(freePort)); !errors.Is(err, udppool.ErrNoTransport) {
		t.Fatalf("dial from port %d without a transport: %v, want ErrNoTransport", freePort, err)
	}
	// A socket bound to loopback does not send elsewhere.
	if _, err := p.Dial(ctx, &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 443}, certs().ClientConfig("echo"), nil, udppool.WithLocalPort(portOf(srv4))); !errors.Is(err, udppool.ErrNoTransport) {
		t.Fatalf("dial to 192.0.2.1 from a socket on 127.0.0.1: %v, want ErrNoTransport", err)
	}
	if _, err := tr6Dial(ctx, srv6, srv4.LocalAddr()); !errors.Is(err, udppool.ErrFamily) {
		t.Fatalf("Transport.Dial of IPv4 from an IPv6-only socket: %v, want ErrFamily", err)
	}
}

func tr6Dial(ctx context.Context, tr *udppool.Transport, dst net.Addr) (*quic.Conn, error) {
	return tr.Dial(ctx, dst, certs().ClientConfig("echo"), nil)
}
