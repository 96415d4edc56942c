// Package benchcases holds the benchmarks of udppool as plain functions, so
// that both `go test -bench` (the root package's bench_test.go) and the
// side-by-side comparison program (examples/bench) run exactly the same
// code. It lives beside the program rather than under internal/, so that the
// program can be copied and run outside this module.
package benchcases

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/udppool/udppool"
	"github.com/udppool/udppool/udppooltest/testca"
)

var ctx = context.Background()

func fatal(b *testing.B, err error) {
	b.Helper()
	if err != nil {
		b.Fatal(err)
	}
}

// keys acquires n sockets on 127.0.0.1 and returns their addresses; the
// caller closes the handles.
func keys(b *testing.B, p *udppool.Pool, n int) ([]string, []*udppool.Conn) {
	addrs := make([]string, n)
	held := make([]*udppool.Conn, n)
	for i := range held {
		c, err := p.ListenPacket(ctx, "udp4", "127.0.0.1:0")
		fatal(b, err)
		held[i], addrs[i] = c, c.LocalAddr().String()
	}
	return addrs, held
}

func closeAll(cs []*udppool.Conn) {
	for _, c := range cs {
		c.Close()
	}
}

// AcquireRelease acquires and releases a handle to a socket the pool
// already holds, cycling through a hot set of 10 keys while live keys are
// held in all: it shows how the pool's own cost grows with its size.
func AcquireRelease(live int) func(b *testing.B) {
	return acquireRelease(live, min(live, 10))
}

// AcquireReleaseCycle is AcquireRelease cycling through every live key, so
// that with many keys it also measures the CPU cache misses of touching
// each key's memory once per round.
func AcquireReleaseCycle(live int) func(b *testing.B) {
	return acquireRelease(live, live)
}

func acquireRelease(live, hot int) func(b *testing.B) {
	return func(b *testing.B) {
		p := udppool.New()
		defer p.Close()
		addrs, held := keys(b, p, live)
		defer closeAll(held)
		addrs = addrs[:hot]
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			c, err := p.ListenPacket(ctx, "udp4", addrs[i%len(addrs)])
			if err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
		b.StopTimer() // closing thousands of sockets is not part of it
	}
}

// AcquireReleaseParallel is AcquireRelease on every core at once, each
// goroutine cycling through 64 live keys from its own starting point.
func AcquireReleaseParallel(b *testing.B) {
	p := udppool.New()
	defer p.Close()
	addrs, held := keys(b, p, 64)
	defer closeAll(held)
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(next.Add(17))
		for pb.Next() {
			c, err := p.ListenPacket(ctx, "udp4", addrs[i%len(addrs)])
			if err != nil {
				b.Error(err)
				return
			}
			c.Close()
			i++
		}
	})
	b.StopTimer()
}

// FirstAcquire binds a new socket through the pool and releases it.
func FirstAcquire(b *testing.B) {
	p := udppool.New()
	defer p.Close()
	b.ReportAllocs()
	for range b.N {
		c, err := p.ListenPacket(ctx, "udp4", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// ListenPacketBaseline binds and closes a socket with the net package.
func ListenPacketBaseline(b *testing.B) {
	b.ReportAllocs()
	for range b.N {
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// packetConn is what the datagram benchmarks need of a socket.
type packetConn interface {
	net.PacketConn
	ReadMsgUDP(b, oob []byte) (n, oobn, flags int, addr *net.UDPAddr, err error)
	WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error)
}

// Datagrams sends a datagram to itself and reads it back, through a pooled
// handle or the raw socket, with ReadFrom/WriteTo or the Msg variants.
func Datagrams(pooled, msg bool) func(b *testing.B) {
	return func(b *testing.B) {
		var c packetConn
		if pooled {
			p := udppool.New()
			defer p.Close()
			h, err := p.ListenPacket(ctx, "udp4", "127.0.0.1:0")
			fatal(b, err)
			defer h.Close()
			c = h
		} else {
			uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			fatal(b, err)
			defer uc.Close()
			c = uc
		}
		dst := c.LocalAddr().(*net.UDPAddr)
		buf := make([]byte, 1200)
		b.SetBytes(int64(len(buf)))
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			var err error
			if msg {
				if _, _, err = c.WriteMsgUDP(buf, nil, dst); err == nil {
					_, _, _, _, err = c.ReadMsgUDP(buf, nil)
				}
			} else {
				if _, err = c.WriteTo(buf, dst); err == nil {
					_, _, err = c.ReadFrom(buf)
				}
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	}
}

// Variant names a way of handing a socket to quic-go.
type Variant string

const (
	Pooled  Variant = "pooled"  // a pooled udppool.Transport
	Raw     Variant = "raw"     // a *net.UDPConn
	Wrapper Variant = "wrapper" // a net.PacketConn wrapper without OOB methods
)

// plainWrapper hides every method of *net.UDPConn but net.PacketConn's, as
// many servers' wrappers do: quic-go then loses batching, GSO, ECN and
// packet info.
type plainWrapper struct{ net.PacketConn }

// BulkSize is what one iteration of QUICBulk transfers.
const BulkSize = 32 << 20

// QUICBulk transfers BulkSize bytes per iteration over a quic-go stream on
// loopback, with both ends on sockets of the given variant.
func QUICBulk(v Variant) func(b *testing.B) {
	return func(b *testing.B) {
		ca, err := testca.NewCA()
		fatal(b, err)
		certs := ca.Server(b)
		p := udppool.New()
		defer p.Close()
		srvLn, srvClose := quicEnd(b, p, v, true, certs.ServerConfig("bench"))
		defer srvClose()
		cli, cliClose := quicEnd(b, p, v, false, nil)
		defer cliClose()

		done := make(chan error, 1)
		go func() {
			conn, err := srvLn.Accept(ctx)
			if err != nil {
				done <- err
				return
			}
			for {
				s, err := conn.AcceptStream(ctx)
				if err != nil {
					done <- nil // the client closed the connection
					return
				}
				// Acknowledge the whole transfer so the client's timing
				// covers delivery, not just buffering.
				if _, err := io.Copy(io.Discard, s); err != nil {
					done <- err
					return
				}
				s.Write([]byte("k"))
				s.Close()
			}
		}()
		srvAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(srvLn.Addr().(*net.UDPAddr).Port))
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		conn, err := cli.Dial(dctx, net.UDPAddrFromAddrPort(srvAddr), certs.ClientConfig("bench"), nil)
		fatal(b, err)
		chunk := make([]byte, 64<<10)
		b.SetBytes(BulkSize)
		b.ResetTimer()
		for range b.N {
			s, err := conn.OpenStreamSync(ctx)
			fatal(b, err)
			for sent := 0; sent < BulkSize; sent += len(chunk) {
				if _, err := s.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
			s.Close() // ends the sending side only
			if ack, err := io.ReadAll(s); err != nil || string(ack) != "k" {
				b.Fatalf("transfer not acknowledged: %q, %v", ack, err)
			}
		}
		b.StopTimer()
		conn.CloseWithError(0, "")
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		runtime.GC()
	}
}

// dialer and acceptor are the two ends QUICBulk needs, whatever the variant.
type dialer interface {
	Dial(context.Context, net.Addr, *tls.Config, *quic.Config) (*quic.Conn, error)
}

type acceptor interface {
	Accept(context.Context) (*quic.Conn, error)
	Addr() net.Addr
}

// quicEnd returns one end of a QUIC transfer: a listener (server) or a
// dialer on a socket of variant v.
func quicEnd(b *testing.B, p *udppool.Pool, v Variant, server bool, tlsConf *tls.Config) (end interface {
	acceptor
	dialer
}, closeFn func()) {
	if v == Pooled {
		tr, err := p.Transport(ctx, "udp4", "127.0.0.1:0")
		fatal(b, err)
		e := &pooledEnd{tr: tr}
		if server {
			e.ln, err = tr.Listen(tlsConf, nil)
			fatal(b, err)
		}
		return e, e.close
	}
	uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	fatal(b, err)
	var pc net.PacketConn = uc
	if v == Wrapper {
		pc = plainWrapper{uc}
	}
	e := &rawEnd{tr: &quic.Transport{Conn: pc}}
	if server {
		e.ln, err = e.tr.Listen(tlsConf, nil)
		fatal(b, err)
	}
	return e, func() { e.close(); uc.Close() }
}

type pooledEnd struct {
	tr *udppool.Transport
	ln *udppool.Listener
}

func (e *pooledEnd) Accept(c context.Context) (*quic.Conn, error) { return e.ln.Accept(c) }
func (e *pooledEnd) Addr() net.Addr                               { return e.tr.LocalAddr() }
func (e *pooledEnd) Dial(c context.Context, a net.Addr, t *tls.Config, q *quic.Config) (*quic.Conn, error) {
	return e.tr.Dial(c, a, t, q)
}
func (e *pooledEnd) close() {
	if e.ln != nil {
		e.ln.Close()
	}
	e.tr.Close()
}

type rawEnd struct {
	tr *quic.Transport
	ln *quic.Listener
}

func (e *rawEnd) Accept(c context.Context) (*quic.Conn, error) { return e.ln.Accept(c) }
func (e *rawEnd) Addr() net.Addr                               { return e.tr.Conn.LocalAddr() }
func (e *rawEnd) Dial(c context.Context, a net.Addr, t *tls.Config, q *quic.Config) (*quic.Conn, error) {
	return e.tr.Dial(c, a, t, q)
}
func (e *rawEnd) close() {
	if e.ln != nil {
		e.ln.Close()
	}
	e.tr.Close()
}

// Name formats a benchmark name with its parameter.
func Name(base string, arg any) string { return fmt.Sprintf("%s/%v", base, arg) }
