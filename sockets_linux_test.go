package udppool

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/net/bpf"
	"golang.org/x/net/nettest"

	"github.com/udppool/udppool/internal/steer"
)

// socketOf returns the index of the server socket that conn lives on.
func socketOf(conn *quic.Conn) int {
	if r, ok := conn.Context().Value(routeKey{}).(*route); ok && r.st != nil {
		return r.st.entry.key.Socket
	}
	return -1
}

// serveSockets accepts on ln and answers each stream with "pid P sock S".
func serveSockets(t *testing.T, ln *Listener) {
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			answer := fmt.Sprintf("pid %d sock %d", os.Getpid(), socketOf(conn))
			go serveConn(conn, func() string { return answer })
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
}

func socketsListener(t *testing.T, tr *Transport) *Listener {
	t.Helper()
	ln, err := tr.Listen(&tls.Config{Certificates: []tls.Certificate{testServerCert(t)}, NextProtos: []string{testALPN}},
		&quic.Config{MaxIdleTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// TestWithSocketsErrors: counts out of range, conflicting counts, and
// systems of binding where the kernel cannot steer are typed errors that
// name the network and address.
func TestWithSocketsErrors(t *testing.T) {
	ctx := context.Background()
	p := newPool(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	for _, n := range []int{0, -1, MaxSockets + 1} {
		_, err := p.Transport(ctx, "udp4", addr, WithSockets(n))
		var e *Error
		if !errors.Is(err, ErrSocketCount) || !errors.As(err, &e) || e.Net != "udp4" || e.Addr != addr {
			t.Errorf("WithSockets(%d): %v, want an *Error naming udp4 %s wrapping ErrSocketCount", n, err, addr)
		}
	}
	if _, err := p.Transport(ctx, "udp4", "127.0.0.1:0", WithSockets(2)); !errors.Is(err, ErrNoSteering) || !strings.Contains(err.Error(), "127.0.0.1:0") {
		t.Errorf("port 0 with 2 sockets: %v, want ErrNoSteering naming the address", err)
	}
	noReuse := newPool(t, WithReusePort(false))
	if _, err := noReuse.Transport(ctx, "udp4", addr, WithSockets(2)); !errors.Is(err, ErrNoSteering) {
		t.Errorf("WithReusePort(false) with 2 sockets: %v, want ErrNoSteering", err)
	}
	if _, err := noReuse.Transport(ctx, "udp4", addr, WithSockets(1)); err != nil {
		t.Errorf("WithReusePort(false) with 1 socket: %v", err)
	}
	noReuse.Close()

	inherit := New(WithUpgrader(newTestUpgrader(t, WithInheritance(true))))
	if _, err := inherit.Transport(ctx, "udp4", addr, WithSockets(2)); !errors.Is(err, ErrNoSteering) {
		t.Errorf("an Upgrader WithInheritance(true) with 2 sockets: %v, want ErrNoSteering", err)
	}
	inherit.Close()

	tr, err := p.Transport(ctx, "udp4", addr, WithSockets(3))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for _, n := range []int{1, 2, 4} {
		if _, err := p.Transport(ctx, "udp4", addr, WithSockets(n)); !errors.Is(err, ErrTransportConfig) {
			t.Errorf("WithSockets(%d) beside 3: %v, want ErrTransportConfig", n, err)
		}
	}
	same, err := p.Transport(ctx, "udp", addr) // no WithSockets: shares the 3
	if err != nil {
		t.Fatal(err)
	}
	if got := len(same.Keys()); got != 3 {
		t.Errorf("a Transport without WithSockets has %d keys, want the 3 of the shared transport", got)
	}
	same.Close()
	if _, err := p.ListenPacket(ctx, "udp4", addr); !errors.Is(err, ErrOwnedByTransport) {
		t.Errorf("ListenPacket of a socket of 3: %v, want ErrOwnedByTransport", err)
	}
}

// TestWithSocketsKeysStats: Keys and Stats list each socket, Key.String
// marks the siblings, sibling keys do not overlap, and Close releases
// every socket and descriptor.
func TestWithSocketsKeysStats(t *testing.T) {
	ctx := context.Background()
	fds := openFDs(t)
	p := New()
	port := freePort(t)
	tr, err := p.Transport(ctx, "udp", fmt.Sprintf("[::1]:%d", port), WithSockets(4))
	if err != nil {
		t.Fatal(err)
	}
	keys := tr.Keys()
	if len(keys) != 4 {
		t.Fatalf("Keys: %v, want 4", keys)
	}
	for i, k := range keys {
		want := fmt.Sprintf("udp6 [::1]:%d", port)
		if i > 0 {
			want += fmt.Sprintf(" #%d", i)
		}
		if k.Socket != i || k.String() != want {
			t.Errorf("key %d: %q (socket %d), want %q", i, k, k.Socket, want)
		}
		if i > 0 && (k.overlaps(keys[0]) || keys[0].overlaps(k)) {
			t.Errorf("%v overlaps its sibling %v", k, keys[0])
		}
	}
	if la := tr.LocalAddr().(*net.UDPAddr); la.Port != int(port) || !la.IP.Equal(net.IPv6loopback) {
		t.Errorf("LocalAddr %v", la)
	}
	st := p.Stats()
	if len(st) != 4 {
		t.Fatalf("Stats: %d sockets, want 4", len(st))
	}
	for i, s := range st {
		if s.Key != keys[i] || s.Refs != 1 {
			t.Errorf("Stats[%d]: %v refs %d, want %v refs 1", i, s.Key, s.Refs, keys[i])
		}
	}
	ln := socketsListener(t, tr)
	serveSockets(t, ln)
	qctx, cancel := context.WithTimeout(ctx, testTimeout)
	defer cancel()
	if a, err := requestAddr(qctx, fmt.Sprintf("[::1]:%d", port)); err != nil || !strings.HasPrefix(a, "pid ") {
		t.Errorf("request: %q, %v", a, err)
	}
	ln.Close()
	tr.Close()
	if st := p.Stats(); len(st) != 0 {
		t.Errorf("after Close: %d sockets in Stats", len(st))
	}
	p.Close()
	if n := openFDs(t); n > fds {
		t.Errorf("%d descriptors open after Close, %d before", n, fds)
	}
}

// TestWithSocketsProbe: the sockets of a Transport find their member
// indexes by probe; a foreign same-user SO_REUSEPORT socket already in
// the group makes the Transport fail with ErrForeignSocket naming it.
func TestWithSocketsProbe(t *testing.T) {
	ctx := context.Background()
	p := newPool(t)
	port := freePort(t)
	tr, err := p.Transport(ctx, "udp4", fmt.Sprintf("127.0.0.1:%d", port), WithSockets(3))
	if err != nil {
		t.Fatal(err)
	}
	g := p.group(tr.Keys()[0])
	ms := g.snapshot()
	for i, m := range ms {
		if m.Foreign || m.Gen != poolGen || int(m.Socket) != i {
			t.Errorf("member %d: %+v, want socket %d", i, m, i)
		}
	}
	tr.Close()

	foreign := foreignReusePort(t, "udp4", fmt.Sprintf("127.0.0.1:%d", port))
	ino := inodeOf(t, foreign)
	_, err = p.Transport(ctx, "udp4", fmt.Sprintf("127.0.0.1:%d", port), WithSockets(2))
	if !errors.Is(err, ErrForeignSocket) || !strings.Contains(err.Error(), fmt.Sprintf("inode %d", ino)) {
		t.Errorf("beside a foreign socket: %v, want ErrForeignSocket naming inode %d", err, ino)
	}
	if st := p.Stats(); len(st) != 0 {
		t.Errorf("after the refusal: %d sockets held", len(st))
	}
}

// rebindConn is a client's net.PacketConn behind a NAT that changes its
// port: rebind moves it to a new socket, and the old one's datagrams are
// lost, as a NAT drops them.
type rebindConn struct {
	mu  sync.Mutex
	cur *net.UDPConn
	ip  net.IP
}

func newRebindConn(t *testing.T, ip net.IP) *rebindConn {
	uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip})
	if err != nil {
		t.Fatal(err)
	}
	return &rebindConn{cur: uc, ip: ip}
}

func (c *rebindConn) conn() *net.UDPConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

func (c *rebindConn) rebind() error {
	uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: c.ip})
	if err != nil {
		return err
	}
	c.mu.Lock()
	old := c.cur
	c.cur = uc
	c.mu.Unlock()
	return old.Close()
}

func (c *rebindConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		cur := c.conn()
		n, addr, err := cur.ReadFrom(b)
		if err != nil && c.conn() != cur {
			continue // rebound: read the new socket
		}
		return n, addr, err
	}
}

func (c *rebindConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	return c.conn().WriteTo(b, addr)
}
func (c *rebindConn) SetReadBuffer(n int) error          { return c.conn().SetReadBuffer(n) }
func (c *rebindConn) SetWriteBuffer(n int) error         { return c.conn().SetWriteBuffer(n) }
func (c *rebindConn) Close() error                       { return c.conn().Close() }
func (c *rebindConn) LocalAddr() net.Addr                { return c.conn().LocalAddr() }
func (c *rebindConn) SetDeadline(t time.Time) error      { return c.conn().SetDeadline(t) }
func (c *rebindConn) SetReadDeadline(t time.Time) error  { return c.conn().SetReadDeadline(t) }
func (c *rebindConn) SetWriteDeadline(t time.Time) error { return c.conn().SetWriteDeadline(t) }

// migrationFigures are what TestSocketsMigration counts.
type migrationFigures struct {
	conns, migrations, failures atomic.Int64
	perSocket                   []uint64
	rerouted                    uint64
}

// A migrant is a client connection that changes its path.
type migrant struct {
	rc      *rebindConn
	tr      *quic.Transport
	conn    *quic.Conn
	first   string // the answer before the move
	closers []func() error
}

// dialMigrant connects to server and makes a request.
func dialMigrant(ctx context.Context, t *testing.T, server *net.UDPAddr) (*migrant, error) {
	m := &migrant{rc: newRebindConn(t, server.IP)}
	m.tr = &quic.Transport{Conn: m.rc}
	m.closers = append(m.closers, m.rc.Close, m.tr.Close)
	conn, err := m.tr.Dial(ctx, server, upgradeClientTLS, &quic.Config{MaxIdleTimeout: 30 * time.Second})
	if err != nil {
		return m, fmt.Errorf("dial: %w", err)
	}
	m.conn = conn
	if m.first, err = request(ctx, conn); err != nil {
		return m, fmt.Errorf("request before moving: %w", err)
	}
	return m, nil
}

// move changes m's path: NAT rebinding (the same connection from a new
// port, unannounced) if rebind is set, else quic-go's path migration (a
// new path probed, then switched to).
func (m *migrant) move(ctx context.Context, rebind bool) error {
	if rebind {
		return m.rc.rebind()
	}
	uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: m.rc.ip})
	if err != nil {
		return err
	}
	ptr := &quic.Transport{Conn: uc}
	m.closers = append(m.closers, uc.Close, ptr.Close)
	path, err := m.conn.AddPath(ptr)
	if err != nil {
		return fmt.Errorf("AddPath: %w", err)
	}
	if err := path.Probe(ctx); err != nil {
		return fmt.Errorf("Probe: %w", err)
	}
	return path.Switch()
}

// check makes n requests, whose answers must begin with want.
func (m *migrant) check(ctx context.Context, n int, want string) error {
	for j := range n {
		a, err := request(ctx, m.conn)
		if err != nil || !strings.HasPrefix(a, want) {
			return fmt.Errorf("request %d after moving: %q, %v; want %q", j, a, err, want)
		}
	}
	return nil
}

func (m *migrant) close() {
	if m.conn != nil {
		m.conn.CloseWithError(0, "") // over its path, while it is open
	}
	for _, c := range slices.Backward(m.closers) {
		c()
	}
}

// migrate runs conns connections to server, each making a request, then
// changing its path (NAT rebinding for even ones, quic-go's path migration
// for odd ones) and making three more on the same connection.
func migrate(t *testing.T, server *net.UDPAddr, conns int, f *migrationFigures) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for i := range conns {
		wg.Go(func() {
			m, err := dialMigrant(ctx, t, server)
			defer m.close()
			if err == nil {
				f.conns.Add(1)
				err = m.move(ctx, i%2 == 0)
			}
			if err == nil {
				f.migrations.Add(1)
				err = m.check(ctx, 3, m.first)
			}
			if err != nil {
				f.failures.Add(1)
				t.Logf("connection %d: %v", i, err)
			}
		})
	}
	wg.Wait()
}

// TestSocketsMigration: clients of a Transport with N sockets change their
// port (NAT rebinding, and quic-go's path migration) in the middle of a
// connection. With the kernel steering by connection ID, every connection
// survives and almost nothing is rerouted in process; with the kernel's
// hash instead of the program (steering wrong), migrations land on
// another socket (rerouted > 0) and still every connection survives.
func TestSocketsMigration(t *testing.T) {
	for _, fam := range []string{"IPv4", "IPv6"} {
		for _, n := range []int{2, 4} {
			for _, mode := range []string{"steered", "hashed"} {
				t.Run(fmt.Sprintf("%s/N=%d/%s", fam, n, mode), func(t *testing.T) {
					ip := "127.0.0.1"
					if fam == "IPv6" {
						if !nettest.SupportsIPv6() {
							t.Skip("no IPv6 loopback")
						}
						ip = "::1"
					}
					p := newPool(t)
					server := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(ip), freePort(t)))
					tr, err := p.Transport(context.Background(), "udp", server.String(), WithSockets(n))
					if err != nil {
						t.Fatal(err)
					}
					defer tr.Close()
					if mode == "hashed" {
						// Every datagram by the kernel's hash of its 4-tuple.
						raw := p.entries[tr.Keys()[0]].sock.raw
						if err := steer.Attach(raw, []bpf.Instruction{bpf.RetConstant{Val: steer.NoSocket}}); err != nil {
							t.Fatal(err)
						}
					}
					serveSockets(t, socketsListener(t, tr))
					const conns = 32
					var f migrationFigures
					migrate(t, server, conns, &f)
					for _, s := range p.Stats() {
						f.perSocket = append(f.perSocket, s.ConnsDelivered)
						f.rerouted += s.Rerouted
					}
					t.Logf("%s N=%d %s: connections %d, migrations %d, failures %d, rerouted datagrams %d, connections per socket %v",
						fam, n, mode, f.conns.Load(), f.migrations.Load(), f.failures.Load(), f.rerouted, f.perSocket)
					if f.failures.Load() != 0 || f.conns.Load() != conns || f.migrations.Load() != conns {
						t.Errorf("%d failures, %d connections, %d migrations; want 0, %d, %d", f.failures.Load(), f.conns.Load(), f.migrations.Load(), conns, conns)
					}
					spread := 0
					for _, c := range f.perSocket {
						if c > 0 {
							spread++
						}
					}
					switch mode {
					case "steered":
						if spread < 2 {
							t.Errorf("connections on %d of %d sockets: new handshakes not spread", spread, n)
						}
						if f.rerouted > conns/4 {
							t.Errorf("%d datagrams rerouted in process while the kernel steers", f.rerouted)
						}
					case "hashed":
						if f.rerouted == 0 {
							t.Errorf("no datagram landed on another socket: the test proves nothing")
						}
					}
				})
			}
		}
	}
}

// TestWithSocketsDialNonQUIC: a Transport of several sockets dials from
// each in turn (the replies, steered by the client's own connection IDs,
// reach the socket that dialled), and reads non-QUIC datagrams from any.
func TestWithSocketsDialNonQUIC(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	sp := newPool(t)
	server := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t)))
	str, err := sp.Transport(ctx, "udp4", server.String())
	if err != nil {
		t.Fatal(err)
	}
	defer str.Close()
	serveSockets(t, socketsListener(t, str))

	cp := newPool(t)
	client := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	ctr, err := cp.Transport(ctx, "udp4", client, WithSockets(3))
	if err != nil {
		t.Fatal(err)
	}
	defer ctr.Close()
	for i := range 6 {
		conn, err := ctr.Dial(ctx, server, upgradeClientTLS, &quic.Config{MaxIdleTimeout: 30 * time.Second})
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		a, err := request(ctx, conn)
		conn.CloseWithError(0, "")
		if err != nil {
			t.Fatalf("request %d from the transport of 3 sockets: %q, %v", i, a, err)
		}
	}
	dialled := 0
	for _, s := range cp.Stats() {
		if s.Rerouted != 0 {
			t.Errorf("%v: %d datagrams rerouted", s.Key, s.Rerouted)
		}
		cp.mu.Lock()
		if st := cp.entries[s.Key].qt; st != nil && st.fwd.reading.Load() {
			dialled++ // quic-go reads it: it was dialled from
		}
		cp.mu.Unlock()
	}
	if dialled != 3 {
		t.Errorf("%d of 3 sockets dialled from", dialled)
	}

	tx, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(client)))
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	got := make(chan string, 1)
	go func() {
		buf := make([]byte, 64)
		n, _, err := ctr.ReadNonQUICPacket(ctx, buf)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(buf[:n])
	}()
	for {
		tx.Write([]byte("\x00not quic")) // until the reader has started
		select {
		case s := <-got:
			if s != "\x00not quic" {
				t.Errorf("ReadNonQUICPacket: %q", s)
			}
			return
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("no non-QUIC datagram read")
		}
	}
}
