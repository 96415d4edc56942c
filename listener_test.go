package udppool_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/quic-go/quic-go"
	"github.com/udppool/udppool"
)

// dialN completes n handshakes with the transport's port from fresh client
// sockets, without opening a stream, and returns the client connections
// with a function that closes them all.
func dialN(t *testing.T, tr *udppool.Transport, n int) ([]*quic.Conn, func()) {
	t.Helper()
	var conns []*quic.Conn
	var closers []func()
	for range n {
		cli := &quic.Transport{Conn: clientConn(t, v4)}
		closers = append(closers, func() { cli.Close(); cli.Conn.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
		conn, err := cli.Dial(ctx, udpAddr(v4, portOf(tr)), certs().ClientConfig("echo"), nil)
		cancel()
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		conns = append(conns, conn)
	}
	return conns, func() {
		for _, c := range conns {
			c.CloseWithError(0, "")
		}
		for _, c := range closers {
			c()
		}
	}
}

// TestCloseRacesAccept runs Accept in a loop against Close (or Shutdown) of a
// listener that has queued connections. Neither may block forever, Accept
// after Close returns quic.ErrServerClosed, every connection Accept returned
// is one that Shutdown sees (and here closes), and every connection ends up
// accepted by ln or, after Close, by the listener opened after it (the
// hand-off target of what ln had queued); a Shutdown keeps ln's
// connections, and its deadline (passed at once here) closes those ln did
// not take.
func TestCloseRacesAccept(t *testing.T) {
	needFamilies(t, v4)
	p := pool(t)
	tr := transport(t, p, "udp4", "127.0.0.1:0")
	for round := range 30 {
		ln, err := tr.Listen(certs().ServerConfig("echo"), nil)
		if err != nil {
			t.Fatal(err)
		}
		conns, closeAll := dialN(t, tr, 3)
		next, err := tr.Listen(certs().ServerConfig("echo"), nil)
		if err != nil {
			t.Fatal(err)
		}
		var (
			mu          sync.Mutex
			accepted    = map[*quic.Conn]bool{}
			acceptsDone = make(chan struct{})
		)
		go func() {
			defer close(acceptsDone)
			for {
				c, err := ln.Accept(context.Background())
				mu.Lock()
				if err == nil {
					accepted[c] = true
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
		stopped := make(chan error, 1)
		go func() {
			var err error
			if round%2 == 0 {
				err = ln.Close()
			} else {
				ctx, cancel := context.WithCancel(context.Background())
				cancel() // drain nothing: close what is left at once
				if err = ln.Shutdown(ctx); errors.Is(err, context.Canceled) {
					err = nil
				}
			}
			stopped <- err
		}()
		ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
		select {
		case err := <-stopped:
			if err != nil {
				t.Fatalf("round %d: closing: %v", round, err)
			}
		case <-ctx.Done():
			t.Fatalf("round %d: Close/Shutdown blocked against Accept", round)
		}
		select {
		case <-acceptsDone:
		case <-ctx.Done():
			t.Fatalf("round %d: Accept blocked after Close", round)
		}
		if _, err := ln.Accept(ctx); !errors.Is(err, quic.ErrServerClosed) {
			t.Fatalf("round %d: Accept after Close: %v", round, err)
		}
		// Whatever ln's Accept returned, it tracked in the same step: a
		// Shutdown (which here closes what is left at once) closed it.
		if round%2 == 1 {
			mu.Lock()
			for c := range accepted {
				select {
				case <-c.Context().Done():
				case <-ctx.Done():
					t.Fatalf("round %d: a connection Accept returned was left open by Shutdown", round)
				}
			}
			mu.Unlock()
		}
		if round%2 == 0 {
			// What ln did not take went to next.
			for len(accepted) < len(conns) {
				c, err := next.Accept(ctx)
				if err != nil {
					t.Fatalf("round %d: %d of %d connections accepted; next listener: %v", round, len(accepted), len(conns), err)
				}
				accepted[c] = true
			}
		} else {
			// What ln did not take was made with its configuration: the
			// drain, cut at once, closed it with the listener's code.
			took := map[string]bool{}
			for c := range accepted {
				took[c.RemoteAddr().String()] = true
			}
			for _, c := range conns {
				if took[c.LocalAddr().String()] {
					continue
				}
				select {
				case <-c.Context().Done():
				case <-ctx.Done():
					t.Fatalf("round %d: a connection neither accepted nor closed by the drain", round)
				}
				var ae *quic.ApplicationError
				if err := context.Cause(c.Context()); !errors.As(err, &ae) || !ae.Remote || ae.ErrorCode != 0 {
					t.Fatalf("round %d: connection not accepted, closed with %v; want the listener's code 0", round, err)
				}
			}
		}
		cancel()
		next.Close()
		closeAll()
	}
}

// TestListenRacesTransportClose: Listen on a Transport racing its Close
// (the last reference) either opens a listener that keeps the transport,
// or fails with net.ErrClosed; it never revives a transport that is being
// torn down, panics or deadlocks the pool.
func TestListenRacesTransportClose(t *testing.T) {
	needFamilies(t, v4)
	p := pool(t)
	var opened, refused int
	for range 200 {
		tr, err := p.Transport(context.Background(), "udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closed := make(chan struct{})
		go func() { tr.Close(); close(closed) }()
		ln, err := tr.Listen(certs().ServerConfig("echo"), nil)
		<-closed
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Listen racing Close: %v", err)
			}
			refused++
			continue
		}
		opened++
		// The listener keeps a working transport.
		if tag := handshakeNoEcho(t, ln); tag != nil {
			t.Fatal(tag)
		}
		ln.Close()
	}
	t.Logf("listeners opened %d, refused %d", opened, refused)
	if st := p.Stats(); len(st) != 0 {
		t.Fatalf("left behind: %+v", st)
	}
}

// handshakeNoEcho completes one handshake with ln's port and accepts it.
func handshakeNoEcho(t *testing.T, ln *udppool.Listener) error {
	t.Helper()
	cli := &quic.Transport{Conn: clientConn(t, v4)}
	defer cli.Conn.Close()
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
	defer cancel()
	conn, err := cli.Dial(ctx, ln.Addr(), certs().ClientConfig("echo"), nil)
	if err != nil {
		return err
	}
	defer conn.CloseWithError(0, "")
	srv, err := ln.Accept(ctx)
	if err != nil {
		return err
	}
	srv.CloseWithError(0, "")
	return nil
}

// TestPoolCloseRacesTransport: a Transport being created while Pool.Close
// runs either fails with ErrPoolClosed or, if it won, its Accept returns
// once the pool closes: a transport is never built on a socket that is
// already closed, where Accept would wait forever.
func TestPoolCloseRacesTransport(t *testing.T) {
	needFamilies(t, v4)
	for range 50 {
		p := udppool.New()
		closed := make(chan struct{})
		go func() { p.Close(); close(closed) }()
		tr, err := p.Transport(context.Background(), "udp4", "127.0.0.1:0")
		if err != nil {
			<-closed
			if !errors.Is(err, udppool.ErrPoolClosed) {
				t.Fatalf("Transport racing Pool.Close: %v", err)
			}
			continue
		}
		ln, err := tr.Listen(certs().ServerConfig("echo"), nil)
		<-closed
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
			if _, err := ln.Accept(ctx); !errors.Is(err, quic.ErrServerClosed) {
				t.Fatalf("Accept after Pool.Close: %v", err)
			}
			cancel()
			ln.Close()
		}
		tr.Close()
	}
}

// TestListenerQUICVersions: the QUIC versions of the listener's
// quic.Config reach version negotiation, which quic-go does before it asks
// for any per-connection configuration; listeners that disagree on them
// cannot share a transport, and invalid ones are refused.
func TestListenerQUICVersions(t *testing.T) {
	needFamilies(t, v4)
	p := pool(t)
	tr := transport(t, p, "udp4", "127.0.0.1:0")
	if _, err := tr.Listen(certs().ServerConfig("echo"), &quic.Config{Versions: []quic.Version{0x1234}}); err == nil {
		t.Fatal("listener with an invalid QUIC version opened")
	}
	ln, err := tr.Listen(certs().ServerConfig("echo"), &quic.Config{Versions: []quic.Version{quic.Version2}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := tr.Listen(certs().ServerConfig("echo"), &quic.Config{Versions: []quic.Version{quic.Version1}}); !errors.Is(err, udppool.ErrTransportConfig) {
		t.Fatalf("listener with other versions beside a running one: %v, want ErrTransportConfig", err)
	}
	dial := func(v quic.Version) error {
		cli := &quic.Transport{Conn: clientConn(t, v4)}
		defer cli.Conn.Close()
		defer cli.Close()
		ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
		defer cancel()
		conn, err := cli.Dial(ctx, ln.Addr(), certs().ClientConfig("echo"), &quic.Config{Versions: []quic.Version{v}})
		if err == nil {
			conn.CloseWithError(0, "")
		}
		return err
	}
	var vn *quic.VersionNegotiationError
	if err := dial(quic.Version1); !errors.As(err, &vn) {
		t.Fatalf("client offering only QUIC v1 to a v2 listener: %v, want version negotiation to fail", err)
	}
	if err := dial(quic.Version2); err != nil {
		t.Fatalf("client offering QUIC v2: %v", err)
	}
}

// TestPlainOrQUIC: a socket is served either by plain handles or by a QUIC
// transport, never both, since each datagram goes to one reader: a plain
// reader would take quic-go's packets, and quic-go a plain reader's.
func TestPlainOrQUIC(t *testing.T) {
	needFamilies(t, v4)
	p := pool(t)
	tr, _ := serve(t, p, "udp4", "127.0.0.1:0")
	addr := tr.LocalAddr().String()
	for range 2 { // the second time through the fast path, if it cached
		if _, err := p.ListenPacket(context.Background(), "udp4", addr); !errors.Is(err, udppool.ErrOwnedByTransport) {
			t.Fatalf("ListenPacket on a QUIC socket: %v, want ErrOwnedByTransport", err)
		}
	}
	c, err := p.ListenPacket(context.Background(), "udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := p.Transport(context.Background(), "udp4", c.LocalAddr().String()); !errors.Is(err, udppool.ErrHasConns) {
		t.Fatalf("Transport on a socket with plain handles: %v, want ErrHasConns", err)
	}
	// Once the plain handles are gone, the socket can serve QUIC.
	plainAddr := c.LocalAddr().String()
	c.Close()
	tr2, _ := serve(t, p, "udp4", plainAddr)
	if tag := handshake(t, v4, netip.AddrPortFrom(v4, portOf(tr2)), "echo"); tag != "srv:" {
		t.Fatalf("handshake: %q", tag)
	}
	for _, st := range p.Stats() {
		if st.Key.Addr.String() == plainAddr && (len(st.Listeners) != 1 || st.Listeners[0].Accepted != 1) {
			t.Fatalf("stats after one handshake: %+v", st)
		}
	}
}

// TestListenNoNextProtos: a listener without ALPN protocols could never
// complete a QUIC handshake, so Listen and ListenEarly refuse it with an
// error that names the key and wraps ErrNoNextProtos, and the Transport
// stays usable for a correct listener.
func TestListenNoNextProtos(t *testing.T) {
	needFamilies(t, v4)
	p := pool(t)
	tr := transport(t, p, "udp4", "127.0.0.1:0")
	for _, early := range []bool{false, true} {
		conf := certs().ServerConfig()
		listen := tr.Listen
		if early {
			listen = tr.ListenEarly
		}
		ln, err := listen(conf, nil)
		if err == nil {
			ln.Close()
			t.Fatalf("early=%v: listener without NextProtos opened", early)
		}
		var oe *net.OpError
		if !errors.Is(err, udppool.ErrNoNextProtos) || !errors.As(err, &oe) {
			t.Fatalf("early=%v: error %v (%T) is not a *net.OpError wrapping ErrNoNextProtos", early, err, err)
		}
		if want := tr.Keys()[0].String(); !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "NextProtos") {
			t.Fatalf("early=%v: error %q does not name NextProtos and the socket %s", early, err, want)
		}
	}
	if got := p.Stats()[0].Listeners; len(got) != 0 {
		t.Fatalf("refused listeners left stats: %+v", got)
	}
	tag := ""
	ln, err := tr.Listen(certs().ServerConfig("echo"), nil)
	if err != nil {
		t.Fatal(err)
	}
	wait := echoServer(ln, "ok:")
	tag = handshake(t, v4, netip.AddrPortFrom(v4, portOf(tr)), "echo")
	ln.Close()
	wait()
	if tag != "ok:" {
		t.Fatalf("handshake after refusals reached %q", tag)
	}
}
