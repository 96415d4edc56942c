package udppool_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/quic-go/quic-go"
	"github.com/udppool/udppool"
)

// byeServer accepts connections on ln until it is closed; goAway tells a
// connection to go with "bye" on a unidirectional stream, as a protocol's
// GOAWAY would.
func byeServer(ln *udppool.Listener) (goAway func(*quic.Conn), wait func()) {
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			if _, err := ln.Accept(context.Background()); err != nil {
				return
			}
		}
	})
	goAway = func(c *quic.Conn) {
		wg.Go(func() {
			s, err := c.OpenUniStream()
			if err != nil {
				return
			}
			s.Write([]byte("bye"))
			s.Close()
		})
	}
	return goAway, wg.Wait
}

// byeClient dials dst speaking proto. A polite client closes its connection
// (with code 7) when the server says "bye"; a stubborn one ignores it.
func byeClient(t *testing.T, ctx context.Context, dst netip.AddrPort, proto string, polite bool) *quic.Conn {
	t.Helper()
	uc := clientConn(t, dst.Addr())
	tr := &quic.Transport{Conn: uc}
	t.Cleanup(func() { tr.Close(); uc.Close() })
	conn, err := tr.Dial(ctx, net.UDPAddrFromAddrPort(dst), certs().ClientConfig(proto), &quic.Config{HandshakeIdleTimeout: quicTimeout})
	if err != nil {
		t.Fatalf("dial %v: %v", dst, err)
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	if polite {
		go func() {
			s, err := conn.AcceptUniStream(context.Background())
			if err != nil {
				return
			}
			if b, _ := io.ReadAll(s); string(b) == "bye" {
				conn.CloseWithError(7, "leaving as asked")
			}
		}()
	}
	return conn
}

func stats(t *testing.T, p *udppool.Pool, gen uint64) udppool.ListenerStats {
	t.Helper()
	for _, l := range listenerStats(t, p) {
		if l.Epoch == gen {
			return l
		}
	}
	return udppool.ListenerStats{Epoch: gen}
}

// TestDrainEndings: a drain counts, in its result and in Stats, the
// connections that left by themselves, those that left when asked, and
// those it closed at its deadline, with the close code of the listener's
// protocol or the one it was given.
func TestDrainEndings(t *testing.T) {
	needFamilies(t, v4)
	for _, tc := range []struct {
		proto string
		opts  []udppool.ListenOption
		code  quic.ApplicationErrorCode
	}{
		{proto: "bye", code: 0},
		{proto: "h3", code: 0x100}, // H3_NO_ERROR
		{proto: "bye", opts: []udppool.ListenOption{udppool.WithCloseCode(0x42, "reloaded")}, code: 0x42},
	} {
		t.Run(fmt.Sprintf("%s/%#x", tc.proto, tc.code), func(t *testing.T) {
			p := pool(t)
			tr, err := p.Transport(context.Background(), "udp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			ln, err := tr.Listen(certs().ServerConfig(tc.proto), nil, tc.opts...)
			if err != nil {
				t.Fatal(err)
			}
			goAway, wait := byeServer(ln)
			defer wait()
			dst := netip.AddrPortFrom(v4, portOf(tr))
			ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
			defer cancel()

			early := byeClient(t, ctx, dst, tc.proto, true)
			polite := byeClient(t, ctx, dst, tc.proto, true)
			stubborn := byeClient(t, ctx, dst, tc.proto, false)
			waitFor(t, "three connections accepted", func() bool { return stats(t, p, 1).Conns == 3 })
			early.CloseWithError(0, "done early")
			waitFor(t, "the early client's connection to end", func() bool { return stats(t, p, 1).EndedByThemselves == 1 })

			// The test ends the drain's grace period itself, once the
			// polite client has left: no timing assumption.
			grace, endGrace := context.WithCancel(ctx)
			defer endGrace()
			type result struct {
				ds  udppool.DrainStats
				err error
			}
			done := make(chan result, 1)
			go func() {
				ds, err := ln.Drain(grace, goAway)
				done <- result{ds, err}
			}()
			select {
			case <-polite.Context().Done():
			case <-ctx.Done():
				t.Fatal("the polite client was not asked to go")
			}
			waitFor(t, "the polite client's connection to end", func() bool { return stats(t, p, 1).EndedByGoAway == 1 })
			if st := stats(t, p, 1); st.Accepting || st.Conns != 1 || st.EndedByThemselves != 1 || st.EndedByDeadline != 0 {
				t.Fatalf("while draining: %+v", st)
			}
			select {
			case r := <-done:
				t.Fatalf("Drain returned with a connection open: %+v, %v", r.ds, r.err)
			default:
			}
			endGrace()
			r := <-done
			if !errors.Is(r.err, context.Canceled) {
				t.Errorf("Drain past its deadline: %v", r.err)
			}
			want := udppool.DrainStats{Epoch: 1, Conns: 2, EndedByGoAway: 1, EndedByDeadline: 1}
			if r.ds != want {
				t.Errorf("Drain = %+v, want %+v", r.ds, want)
			}
			<-stubborn.Context().Done() // Drain returns once every connection has ended
			var ae *quic.ApplicationError
			if err := context.Cause(stubborn.Context()); !errors.As(err, &ae) || !ae.Remote || ae.ErrorCode != tc.code {
				t.Errorf("stubborn connection closed with %v, want the server's application error %#x", err, tc.code)
			}
			if len(p.Stats()[0].Listeners) != 0 {
				t.Errorf("drained epoch still listed: %+v", p.Stats()[0].Listeners)
			}
		})
	}
}

// TestDrainWithoutConnections returns at once, and again after Close.
func TestDrainWithoutConnections(t *testing.T) {
	needFamilies(t, v4)
	p := pool(t)
	_, ln := serve(t, p, "udp4", "127.0.0.1:0")
	for range 2 {
		ds, err := ln.Drain(context.Background(), func(*quic.Conn) { t.Error("goAway called without connections") })
		if err != nil || ds != (udppool.DrainStats{Epoch: 1}) {
			t.Fatalf("Drain of an idle listener: %+v, %v", ds, err)
		}
	}
}
