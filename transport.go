package udppool

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync/atomic"

	"github.com/quic-go/quic-go"
)

// ErrTransportConfig reports a Transport request whose quic.Transport
// settings differ from those of the shared transport already serving the
// socket: quic-go allows one Transport per socket, so the first user's
// settings stay until the last user is gone.
var ErrTransportConfig = errors.New("conflicts with the settings of the shared QUIC transport")

// ErrFamily reports a destination of an address family that the socket
// does not serve, such as an IPv6 address dialled from an IPv4 socket.
var ErrFamily = errors.New("address family not served by the socket")

// A TransportOption configures the shared quic.Transport of a socket.
type TransportOption func(*transportOptions)

type transportOptions struct {
	settings *quic.Transport
}

// WithQUICTransport takes the settings of the shared quic.Transport
// (connection ID length or generator, stateless reset key, token key,
// tracer, ConnContext, ...) from tmpl, whose Conn must be nil. The first
// Transport request of a socket decides the settings; a later request that
// sets a field to a different value fails with ErrTransportConfig, so that
// two parts of a server never silently run with different settings. Fields
// a later request leaves zero are not compared. Functions compare equal
// only if they are the same function.
func WithQUICTransport(tmpl *quic.Transport) TransportOption {
	return func(o *transportOptions) { o.settings = tmpl }
}

// WithSplitStack makes the pool serve a "udp" wildcard Transport from two
// sockets, an IPv4 one and an IPv6-only one, instead of one dual-stack
// socket. It is the default on FreeBSD, OpenBSD, NetBSD and DragonFly, where
// dual-stack sockets and quic-go's packet-info replies to IPv4-mapped
// addresses do not mix, and on hosts that cannot bind dual-stack.
func WithSplitStack(on bool) Option {
	return func(o *options) { o.split = &on }
}

func (p *Pool) splitStack(st stack) bool {
	if p.opts.split != nil {
		return *p.opts.split
	}
	switch runtime.GOOS {
	case "freebsd", "openbsd", "netbsd", "dragonfly":
		return true
	}
	return !st.dualStack
}

// A Transport is one reference to the shared quic.Transport of a pooled
// socket (two sockets for a split-stack wildcard). Listeners opened on it
// are logical: several may be open at once on one quic-go listener, which
// makes reloads possible without closing the port. Close releases the
// reference; the quic.Transport and the socket close when the last
// Transport and Listener referring to them are closed, and with them every
// connection still open on them.
type Transport struct {
	key    Key
	parts  []*sharedTransport // one per socket
	closed atomic.Bool
	leak   *leakWatch // nil unless the pool reports leaks
}

// Transport returns a new reference to the shared quic.Transport serving
// network and address, creating the socket and the transport if needed.
// Networks and addresses are as for ListenPacket. A "udp" wildcard is
// served by one dual-stack socket, or by an IPv4 and an IPv6 socket where
// split-stack applies (see WithSplitStack).
//
// Each datagram goes to one reader, and quic-go must see them all, so a
// socket is served either by plain handles or by one QUIC transport: a
// Transport request for a socket that ListenPacket handles hold fails with
// ErrHasConns, and a ListenPacket of a socket that a Transport serves fails
// with ErrOwnedByTransport. Other traffic on a QUIC port goes through
// ReadNonQUICPacket and WriteTo.
func (p *Pool) Transport(ctx context.Context, network, address string, opts ...TransportOption) (*Transport, error) {
	var o transportOptions
	for _, opt := range opts {
		opt(&o)
	}
	t, err := p.transport(ctx, network, address, o)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			return nil, err
		}
		return nil, opError("transport", network, address, Key{}, err)
	}
	return t, nil
}

func (p *Pool) transport(ctx context.Context, network, address string, o transportOptions) (*Transport, error) {
	if o.settings != nil && o.settings.Conn != nil {
		return nil, fmt.Errorf("%w: the template's Conn must be nil", ErrTransportConfig)
	}
	k, _, err := p.parse(ctx, network, address)
	if err != nil {
		return nil, err
	}
	keys := []Key{k}
	st, err := p.hostStack() // probed by parse already
	if err != nil {
		return nil, err
	}
	if network == "udp" && k.Addr.Addr().IsUnspecified() && p.splitStack(st) {
		keys = []Key{
			{Network: "udp4", Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), k.Addr.Port())},
			{Network: "udp6", Addr: netip.AddrPortFrom(netip.IPv6Unspecified(), k.Addr.Port())},
		}
		if !st.ipv6 {
			keys = keys[:1] // a host without IPv6: serve what it has
		}
	}
	var t *Transport
	for attempt := 1; ; attempt++ {
		t = &Transport{key: k}
		k, err := t.acquireParts(ctx, p, keys, o.settings)
		if err == nil {
			break
		}
		t.Close()
		// The second socket of a split-stack port 0 request takes the
		// port the first one got; if another socket holds it in the other
		// family, try another port.
		if keys[0].Addr.Port() == 0 && len(keys) > 1 && errors.Is(err, errAddrInUse) && attempt < 8 {
			continue
		}
		return nil, opError("transport", network, address, k, err)
	}
	if len(t.parts) > 1 {
		t.key = Key{Network: "udp", Addr: netip.AddrPortFrom(netip.IPv6Unspecified(), t.parts[0].entry.key.Addr.Port())}
	} else {
		t.key = t.parts[0].entry.key
	}
	parts := t.parts
	t.leak = watch(p, t, "Transport", t.parts[0].entry.key, func() {
		for _, st := range parts {
			st.release()
		}
	})
	return t, nil
}

// acquireParts acquires the shared transport of every key into t.parts. On
// failure it returns the key that failed; the caller closes t.
func (t *Transport) acquireParts(ctx context.Context, p *Pool, keys []Key, settings *quic.Transport) (Key, error) {
	for _, k := range keys {
		fresh := false
		if k.Addr.Port() == 0 && len(t.parts) > 0 {
			// The port was chosen for the first socket: this one must be
			// as new as a port 0 socket, never joining a group.
			k.Addr = netip.AddrPortFrom(k.Addr.Addr(), t.parts[0].entry.key.Addr.Port())
			fresh = true
		}
		st, err := p.acquireTransport(ctx, k, settings, fresh)
		if err != nil {
			return k, err
		}
		t.parts = append(t.parts, st)
	}
	return Key{}, nil
}

// Keys returns the keys of the sockets serving t: one, or an IPv4 and an
// IPv6 key for a split-stack wildcard.
func (t *Transport) Keys() []Key {
	keys := make([]Key, len(t.parts))
	for i, st := range t.parts {
		keys[i] = st.entry.key
	}
	return keys
}

// LocalAddr returns the local address: the socket's, or the wildcard with
// the shared port for a split-stack transport.
func (t *Transport) LocalAddr() net.Addr {
	if len(t.parts) == 1 {
		return t.parts[0].conn.LocalAddr()
	}
	return &net.UDPAddr{Port: int(t.key.Addr.Port())}
}

// Close releases this reference. Listeners opened on t stay open; the
// shared transport closes with the last reference. Calls after the first
// return an error wrapping net.ErrClosed.
func (t *Transport) Close() error {
	if t.closed.Swap(true) {
		return &net.OpError{Op: "close", Net: "udp", Source: t.LocalAddr(), Err: net.ErrClosed}
	}
	if t.leak != nil {
		t.leak.closed.Store(true)
	}
	for _, st := range t.parts {
		st.release()
	}
	return nil
}

func (t *Transport) check(op string) error {
	if t.closed.Load() {
		return &net.OpError{Op: op, Net: "udp", Source: t.LocalAddr(), Err: net.ErrClosed}
	}
	return nil
}

// part returns the shared transport whose socket can reach addr, or the
// error for op if t is closed or none can.
func (t *Transport) part(op string, addr net.Addr) (*sharedTransport, error) {
	if err := t.check(op); err != nil {
		return nil, err
	}
	ip, err := destination(op, addr)
	if err != nil {
		return nil, err
	}
	for _, st := range t.parts {
		if st.entry.key.reachesFamily(ip.Is4()) {
			return st, nil
		}
	}
	return nil, &net.OpError{Op: op, Net: "udp", Source: t.LocalAddr(), Addr: addr, Err: fmt.Errorf("%w: socket %v cannot send to %v", ErrFamily, t.key, ip)}
}

// destination returns the IP address of a UDP destination, unmapped, or
// the *net.OpError of op for a destination nobody can send to.
func destination(op string, addr net.Addr) (netip.Addr, error) {
	ip, err := checkDestination(addr)
	if err != nil {
		// No Addr: net.OpError would call its String method, which a
		// nil pointer of another type may not survive.
		return netip.Addr{}, &net.OpError{Op: op, Net: "udp", Err: err}
	}
	return ip, nil
}

// checkDestination returns the IP address of a UDP destination, unmapped,
// or an error wrapping ErrMissingAddr or ErrNotUDPAddr.
func checkDestination(addr net.Addr) (netip.Addr, error) {
	ua, err := udpAddr(addr)
	if err != nil {
		return netip.Addr{}, err
	}
	ap := ua.AddrPort()
	switch {
	case !ap.Addr().IsValid():
		return netip.Addr{}, fmt.Errorf("%w: no valid IP address in %v", ErrMissingAddr, ua)
	case ap.Port() == 0:
		return netip.Addr{}, fmt.Errorf("%w: port 0 in %v", ErrMissingAddr, ua)
	}
	return ap.Addr().Unmap(), nil
}

// udpAddr returns addr as a *net.UDPAddr, or an error wrapping
// ErrMissingAddr or ErrNotUDPAddr.
func udpAddr(addr net.Addr) (*net.UDPAddr, error) {
	ua, ok := addr.(*net.UDPAddr)
	switch {
	case addr == nil:
		return nil, fmt.Errorf("%w: nil net.Addr", ErrMissingAddr)
	case !ok:
		return nil, fmt.Errorf("%w: %T %v", ErrNotUDPAddr, addr, addr)
	case ua == nil:
		return nil, fmt.Errorf("%w: nil *net.UDPAddr", ErrMissingAddr)
	}
	return ua, nil
}

// reachesFamily reports whether the socket of k can send to IPv4 (v4) or
// IPv6 addresses.
func (k Key) reachesFamily(v4 bool) bool {
	switch k.Network {
	case "udp":
		return true
	case "udp4":
		return v4
	default:
		return !v4
	}
}

// Dial dials addr through the shared transport whose socket serves addr's
// family, so that the connection leaves from the pooled port.
func (t *Transport) Dial(ctx context.Context, addr net.Addr, tlsConf *tls.Config, conf *quic.Config) (*quic.Conn, error) {
	st, err := t.part("dial", addr)
	if err != nil {
		return nil, err
	}
	conn, err := st.qt.Dial(ctx, addr, tlsConf, conf)
	st.noticeClosed(err)
	return conn, err
}

// DialEarly is like Dial but may send 0-RTT data.
func (t *Transport) DialEarly(ctx context.Context, addr net.Addr, tlsConf *tls.Config, conf *quic.Config) (*quic.Conn, error) {
	st, err := t.part("dial", addr)
	if err != nil {
		return nil, err
	}
	conn, err := st.qt.DialEarly(ctx, addr, tlsConf, conf)
	st.noticeClosed(err)
	return conn, err
}

// WriteTo sends a non-QUIC datagram from the pooled socket.
func (t *Transport) WriteTo(b []byte, addr net.Addr) (int, error) {
	st, err := t.part("write", addr)
	if err != nil {
		return 0, err
	}
	return st.qt.WriteTo(b, addr)
}

// ReadNonQUICPacket reads the next datagram on the port that is not a QUIC
// packet (quic-go's ReadNonQUICPacket), from any socket of t. Datagrams
// that arrive before the first call are dropped, as quic-go does.
func (t *Transport) ReadNonQUICPacket(ctx context.Context, b []byte) (int, net.Addr, error) {
	if err := t.check("read"); err != nil {
		return 0, nil, err
	}
	var chans [2]<-chan nonQUICPacket
	var stops [2]<-chan struct{}
	for i, st := range t.parts {
		chans[i], stops[i] = st.nonQUIC(), st.stopped
	}
	select {
	case pkt := <-chans[0]:
		return copy(b, pkt.data), pkt.addr, nil
	case pkt := <-chans[1]:
		return copy(b, pkt.data), pkt.addr, nil
	case <-stops[0]:
	case <-stops[1]:
	case <-ctx.Done():
		return 0, nil, ctx.Err()
	}
	return 0, nil, &net.OpError{Op: "read", Net: "udp", Source: t.LocalAddr(), Err: net.ErrClosed}
}
