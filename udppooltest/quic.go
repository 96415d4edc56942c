package udppooltest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/udppool/udppool"
)

// ALPN is the protocol that QUICPair's server and client negotiate unless
// WithALPN says otherwise.
const ALPN = "udppooltest"

// A Pair is a QUIC server on a pooled Transport and a client connected to
// it, made by QUICPair. Everything in it is closed at cleanup (a pool given
// by WithPool is left to its owner).
type Pair struct {
	// Pool is the pool of the server's socket: the one given by WithPool,
	// or a fresh one from the Pool function, checked for leaks.
	Pool *udppool.Pool
	// Transport is the server's pooled Transport, and Listener the logical
	// listener on it (udppool's Listen: connections are delivered once
	// their handshake has completed).
	Transport *udppool.Transport
	Listener  *udppool.Listener
	// Server is the connection the Listener accepted from Client.
	Server *quic.Conn
	// Client is the client's connection. The client side is plain
	// quic-go, not pooled, so that a bug in udppool cannot hide itself by
	// being on both sides.
	Client *quic.Conn
	// ClientTransport is the client's quic.Transport, on ClientConn; it
	// can dial more connections to Addr.
	ClientTransport *quic.Transport
	// ClientConn is the client's UDP socket, a plain *net.UDPConn on the
	// client's address of the pair's family with an ephemeral port.
	ClientConn *net.UDPConn
	// Addr is the address that Client dialled.
	Addr netip.AddrPort
	// Certs are the certificates of the server; Certs.ClientConfig(ALPN)
	// configures more clients.
	Certs *Certs
}

// A PairOption configures QUICPair.
type PairOption func(*pairConfig)

type pairConfig struct {
	network       string
	lnNet, lnAddr string
	pool          *udppool.Pool
	host          *SimHost
	echo          bool
	alpn          string
	quic          *quic.Config
}

// WithNetwork chooses the family of the pair: "udp4" (127.0.0.1, or the
// veth IPv4 addresses of a SimHost), "udp6" (::1, or the veth IPv6
// addresses), or "udp" (the default: IPv4 if the machine or SimHost has
// it, else IPv6). On loopback the test is skipped if the machine lacks the
// family; on a SimHost asking for a family its kind lacks fails the test.
func WithNetwork(network string) PairOption {
	return func(c *pairConfig) { c.network = network }
}

// WithListenAddr makes the server's Transport listen on network and
// address, as given to (*udppool.Pool).Transport, instead of on the
// server's address of the pair's family with port 0. For example
// WithListenAddr("udp", ":0") serves the dual-stack (or split-stack)
// wildcard. The client still dials the server's address of the pair's
// family, at the port the Transport got.
func WithListenAddr(network, address string) PairOption {
	return func(c *pairConfig) { c.lnNet, c.lnAddr = network, address }
}

// WithPool makes the server take its Transport from p (for example a pool
// with udppool.WithSplitStack) instead of from a fresh pool. QUICPair then
// leaves the leak check to the test: make p with Pool, or call NoLeaks. With WithHost, p
// must not have been used outside the server machine, since a pool learns
// which families its host has on first use.
func WithPool(p *udppool.Pool) PairOption {
	return func(c *pairConfig) { c.pool = p }
}

// WithHost puts the pair on a simulated host: the server's socket is
// created in the server machine, the client's in the client machine, and
// the client dials across the veth link.
func WithHost(h *SimHost) PairOption {
	return func(c *pairConfig) { c.host = h }
}

// WithEcho makes the server echo every stream: Echo runs on Pair.Server, so
// that RoundTrip on Pair.Client returns its message. Without it, streams
// are left to the test, which serves them on Pair.Server.
func WithEcho() PairOption {
	return func(c *pairConfig) { c.echo = true }
}

// WithALPN sets the protocol negotiated by the pair (default ALPN).
func WithALPN(proto string) PairOption {
	return func(c *pairConfig) { c.alpn = proto }
}

// WithQUICConfig sets the quic.Config of both sides (each gets a copy), for
// example to enable datagrams. The default is quic-go's.
func WithQUICConfig(conf *quic.Config) PairOption {
	return func(c *pairConfig) { c.quic = conf }
}

func (c *pairConfig) quicConfig() *quic.Config {
	if c.quic == nil {
		return nil
	}
	return c.quic.Clone()
}

// QUICPair starts a QUIC server on a pooled Transport and connects a client
// to it: on loopback by default, on a SimHost with WithHost. It returns once
// the handshake has completed and the server has accepted the connection.
// At cleanup it closes both connections, the listener and both transports;
// with a fresh pool (no WithPool) it then checks for leaks as Pool does.
//
// The server listens on its address of the pair's family (see WithNetwork)
// with an ephemeral port, unless WithListenAddr says otherwise, and
// presents certificates from TLS, which the client verifies. Handshake and
// accept are bounded by Timeout.
func QUICPair(t testing.TB, opts ...PairOption) *Pair {
	t.Helper()
	c := pairConfig{network: "udp", alpn: ALPN}
	for _, o := range opts {
		o(&c)
	}
	var srvIP, cliIP netip.Addr
	if c.host != nil {
		var err error
		if srvIP, cliIP, err = c.host.addrs(c.network); err != nil {
			t.Fatalf("udppooltest: QUICPair: %v", err)
		}
	} else {
		srvIP = loopbackIP(t, c.network)
		cliIP = srvIP
	}
	inServer, inClient := func(fn func() error) error { return fn() }, func(fn func() error) error { return fn() }
	if c.host != nil {
		inServer, inClient = c.host.InServer, c.host.InClient
	}
	if c.lnNet == "" {
		c.lnNet, c.lnAddr = networkOf(srvIP), netip.AddrPortFrom(srvIP, 0).String()
	}

	pr := &Pair{Pool: c.pool, Certs: TLS(t)}
	if pr.Pool == nil {
		pr.Pool = Pool(t) // first, so that its leak check runs last
	}
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()

	err := inServer(func() error {
		var err error
		pr.Transport, err = pr.Pool.Transport(ctx, c.lnNet, c.lnAddr)
		return err
	})
	if err != nil {
		t.Fatalf("udppooltest: QUICPair: server transport on %s %q: %v", c.lnNet, c.lnAddr, err)
	}
	t.Cleanup(func() { pr.Transport.Close() })
	pr.Listener, err = pr.Transport.Listen(pr.Certs.ServerConfig(c.alpn), c.quicConfig())
	if err != nil {
		t.Fatalf("udppooltest: QUICPair: listening on %v: %v", pr.Transport.LocalAddr(), err)
	}
	t.Cleanup(func() { pr.Listener.Close() })
	port := pr.Transport.LocalAddr().(*net.UDPAddr).Port
	pr.Addr = netip.AddrPortFrom(srvIP, uint16(port))

	err = inClient(func() error {
		var err error
		pr.ClientConn, err = net.ListenUDP(networkOf(cliIP), net.UDPAddrFromAddrPort(netip.AddrPortFrom(cliIP, 0)))
		return err
	})
	if err != nil {
		t.Fatalf("udppooltest: QUICPair: client socket on %v: %v", cliIP, err)
	}
	t.Cleanup(func() { pr.ClientConn.Close() })
	pr.ClientTransport = &quic.Transport{Conn: pr.ClientConn}
	t.Cleanup(func() { pr.ClientTransport.Close() })

	pr.Client, err = pr.ClientTransport.Dial(ctx, net.UDPAddrFromAddrPort(pr.Addr), pr.Certs.ClientConfig(c.alpn), c.quicConfig())
	if err != nil {
		t.Fatalf("udppooltest: QUICPair: dialling %v from %v: %v", pr.Addr, pr.ClientConn.LocalAddr(), err)
	}
	t.Cleanup(func() { pr.Client.CloseWithError(0, "") })
	pr.Server, err = pr.Listener.Accept(ctx)
	if err != nil {
		t.Fatalf("udppooltest: QUICPair: accepting the client's connection on %v: %v", pr.Addr, err)
	}
	t.Cleanup(func() { pr.Server.CloseWithError(0, "") })
	if c.echo {
		Echo(t, pr.Server)
	}
	return pr
}

// Echo serves conn with the echo protocol until conn closes: for every
// stream the peer opens, it writes back everything it reads, and closes its
// side of the stream once the peer has closed its own. At cleanup Echo
// closes conn and waits (up to Timeout) for its goroutines to end.
//
// Echo accepts every stream of conn, so the test must not accept any itself.
func Echo(t testing.TB, conn *quic.Conn) {
	t.Helper()
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			s, err := conn.AcceptStream(context.Background())
			if err != nil {
				return // conn closed
			}
			wg.Go(func() {
				if _, err := io.Copy(s, s); err != nil {
					s.CancelRead(0)
					s.CancelWrite(0)
					return
				}
				s.Close()
			})
		}
	})
	t.Cleanup(func() {
		conn.CloseWithError(0, "")
		done := make(chan struct{})
		go func() {
			wg.Wait()
			close(done)
		}()
		timer := time.NewTimer(Timeout)
		defer timer.Stop()
		select {
		case <-done:
		case <-timer.C:
			t.Errorf("udppooltest: Echo: the goroutines serving %v did not end within %v of closing it", conn.RemoteAddr(), Timeout)
		}
	})
}

// RoundTrip opens a stream on conn, writes msg, closes its sending side
// and returns everything the peer writes back until the peer closes its
// side: with a server running Echo, msg itself. The whole exchange is
// bounded by Timeout; any error fails the test.
func RoundTrip(t testing.TB, conn *quic.Conn, msg []byte) []byte {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	s, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatalf("udppooltest: RoundTrip: opening a stream to %v: %v", conn.RemoteAddr(), err)
	}
	s.SetDeadline(deadline)
	fail := func(step string, err error) {
		t.Helper()
		s.CancelRead(0)
		s.CancelWrite(0)
		t.Fatalf("udppooltest: RoundTrip: %s on stream %d to %v: %v", step, s.StreamID(), conn.RemoteAddr(), err)
	}
	if _, err := s.Write(msg); err != nil {
		fail("writing", err)
	}
	if err := s.Close(); err != nil {
		fail("closing the sending side", err)
	}
	reply, err := io.ReadAll(s)
	if err != nil {
		fail(fmt.Sprintf("reading the reply (%d bytes so far)", len(reply)), err)
	}
	return reply
}
