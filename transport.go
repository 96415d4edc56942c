package udppool

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"runtime"
	"slices"
	"sync"
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
	settings   *quic.Transport
	sockets    int // WithSockets
	socketsSet bool
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
	parts  []*sharedTransport // one per socket, the sockets of a family in index order
	closed atomic.Bool
	leak   *leakWatch    // nil unless the pool reports leaks
	next   atomic.Uint32 // Dial's round robin over the sockets of a family
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
	if o.socketsSet {
		if err := p.checkSockets(k, o.sockets); err != nil {
			return nil, opError("transport", network, address, k, err)
		}
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
		k, err := t.acquireParts(ctx, p, keys, o)
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
	if t.split() {
		t.key = Key{Network: "udp", Addr: netip.AddrPortFrom(netip.IPv6Unspecified(), t.parts[0].entry.key.Addr.Port())}
	} else {
		t.key = t.parts[0].entry.key
	}
	parts := t.parts
	t.leak = watch(p, t, "Transport", t.parts[0].entry.key, func() { releaseParts(parts) })
	return t, nil
}

// acquireParts acquires the shared transport of every key into t.parts,
// and of every sibling socket of a key (WithSockets): the first socket's
// transport says how many the address has. On failure it returns the key
// that failed; the caller closes t.
func (t *Transport) acquireParts(ctx context.Context, p *Pool, keys []Key, o transportOptions) (Key, error) {
	for _, k := range keys {
		fresh := false
		if k.Addr.Port() == 0 && len(t.parts) > 0 {
			// The port was chosen for the first socket: this one must be
			// as new as a port 0 socket, never joining a group.
			k.Addr = netip.AddrPortFrom(k.Addr.Addr(), t.parts[0].entry.key.Addr.Port())
			fresh = true
		}
		want := 0
		if o.socketsSet {
			want = o.sockets
		}
		st, err := p.acquireTransport(ctx, k, o.settings, fresh, want)
		if err != nil {
			return k, err
		}
		t.parts = append(t.parts, st)
		n := st.sockets
		for j := 1; j < n; j++ {
			sk := st.entry.key
			sk.Socket = j
			sib, err := p.acquireTransport(ctx, sk, o.settings, false, n)
			if err != nil {
				return sk, err
			}
			t.parts = append(t.parts, sib)
		}
	}
	return Key{}, nil
}

// split reports whether t has sockets of two families (split-stack).
func (t *Transport) split() bool {
	return t.parts[0].entry.key.base() != t.parts[len(t.parts)-1].entry.key.base()
}

// Keys returns the keys of the sockets serving t: one, or an IPv4 and an
// IPv6 key for a split-stack wildcard, and with WithSockets(n) n of each,
// in socket index order.
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
	if !t.split() {
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
	releaseParts(t.parts)
	return nil
}

// releaseParts releases parts, siblings before the first socket of their
// address: a new Transport request for the address, which waits for the
// first socket's transport to close, then finds every sibling closing too.
func releaseParts(parts []*sharedTransport) {
	for _, st := range slices.Backward(parts) {
		st.release()
	}
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
	// The first family that reaches addr; among its sockets, round robin.
	for i, st := range t.parts {
		if !st.entry.key.reachesFamily(ip.Is4()) {
			continue
		}
		n := 1
		for i+n < len(t.parts) && t.parts[i+n].entry.key.base() == st.entry.key.base() {
			n++
		}
		if n > 1 {
			st = t.parts[i+int(t.next.Add(1)%uint32(n))]
		}
		return st, nil
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
	if len(t.parts) <= 2 {
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
	} else {
		// Several sockets per address: one case for each.
		cases := make([]reflect.SelectCase, 0, 2*len(t.parts)+1)
		for _, st := range t.parts {
			cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(st.nonQUIC())})
		}
		for _, st := range t.parts {
			cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(st.stopped)})
		}
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ctx.Done())})
		i, v, _ := reflect.Select(cases)
		switch {
		case i < len(t.parts):
			pkt := v.Interface().(nonQUICPacket)
			return copy(b, pkt.data), pkt.addr, nil
		case i == len(cases)-1:
			return 0, nil, ctx.Err()
		}
	}
	return 0, nil, &net.OpError{Op: "read", Net: "udp", Source: t.LocalAddr(), Err: net.ErrClosed}
}

// sharedTransport is the one quic.Transport of a pooled socket, shared by
// every Transport handle and Listener of that socket.
type sharedTransport struct {
	pool     *Pool
	entry    *entry
	conn     *Conn // quic-go's own handle: its deadlines are its own
	qt       *quic.Transport
	settings *quic.Transport // as requested by the first user; nil for defaults
	sockets  int             // sockets of the address (WithSockets), this one among them
	fwd      *forwardConn    // the reader quic-go reads through, if any

	// guarded by Pool.mu
	refs    int           // Transport handles and Listeners
	closing bool          // no new references
	done    chan struct{} // closed when fully shut down

	// stopped is closed when the transport can serve no more: shut down by
	// its last user, or its socket closed by Pool.Close or found dead.
	// Waiting Accepts and ReadNonQUICPackets return then.
	stopOnce  sync.Once
	stopped   chan struct{}
	stopCause error // why it stopped, if not by its last user; set before stopped closes

	// realMu serializes opening and closing the one quic-go listener, which
	// quic-go allows only after the previous one has fully closed.
	realMu     sync.Mutex
	real       *quic.EarlyListener
	acceptDone chan struct{}
	// versions are the QUIC versions the running quic-go listener offers
	// in version negotiation, which happens before any per-connection
	// configuration is asked for: every open listener must agree on them.
	versions []quic.Version

	mu        sync.Mutex
	listeners []*Listener        // open logical listeners, oldest first
	all       map[*Listener]bool // listeners holding a reference, open or draining
	epochs    uint64             // epochs handed out

	pumpOnce sync.Once
	packets  chan nonQUICPacket

	// refused counts handshaken connections the pool closed because no
	// listener could take them (none open, or its queue full); delivered
	// those a listener took.
	refused   atomic.Uint64
	delivered atomic.Uint64
}

type nonQUICPacket struct {
	data []byte
	addr net.Addr
}

// acquireTransport returns a new reference to the shared transport of the
// socket of k, creating both as needed. fresh is for the second socket of a
// split-stack port 0 Transport: it must be a new socket, never one the pool
// holds already. sockets is the number of sockets of k's address that the
// request wants (WithSockets), 0 for any.
func (p *Pool) acquireTransport(ctx context.Context, k Key, settings *quic.Transport, fresh bool, sockets int) (*sharedTransport, error) {
	for {
		c, err := p.acquire(ctx, k, acquireOpts{quic: true, fresh: fresh, sockets: max(sockets, 1)})
		if err != nil {
			return nil, err
		}
		e := c.entry
		p.mu.Lock()
		if p.closed.Load() || e.closing.Load() {
			// Closed by Pool.Close or found dead since the acquire: a
			// transport on it would never see a datagram.
			p.mu.Unlock()
			c.Close()
			if p.closed.Load() {
				return nil, ErrPoolClosed
			}
			continue
		}
		st := e.qt
		switch {
		case st != nil && st.closing:
			// Wait until the old transport has stopped reading: two
			// transports on one socket would split its datagrams.
			p.mu.Unlock()
			c.Close()
			select {
			case <-st.done:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		case st != nil:
			err := st.compatible(settings)
			if err == nil && sockets != 0 && sockets != st.sockets {
				err = fmt.Errorf("%w: %d sockets per address, the shared transport has %d (WithSockets)", ErrTransportConfig, sockets, st.sockets)
			}
			if err == nil {
				st.refs++
			}
			p.mu.Unlock()
			c.Close() // the shared transport holds its own handle
			if err != nil {
				return nil, err
			}
			return st, nil
		}
		// Claim the socket for QUIC, then make sure no plain handle holds
		// it: a plain reader would take datagrams from quic-go. The fast
		// path of ListenPacket does the same in the opposite order (count
		// its reference, then look at the claim), so one of two racing
		// acquires always sees the other.
		e.quic.Store(true)
		if e.refs.Load() > 1 {
			e.quic.Store(false)
			p.mu.Unlock()
			c.Close()
			return nil, ErrHasConns
		}
		st = &sharedTransport{
			pool: p, entry: e, conn: c, settings: settings, refs: 1, sockets: max(sockets, 1),
			done: make(chan struct{}), stopped: make(chan struct{}),
			all: make(map[*Listener]bool),
		}
		st.qt = st.newQUICTransport()
		e.qt = st
		p.mu.Unlock()
		return st, nil
	}
}

// newQUICTransport builds the quic.Transport on st.conn with the requested
// settings, chaining ConnContext to record which listener a handshake chose.
func (st *sharedTransport) newQUICTransport() *quic.Transport {
	qt := &quic.Transport{}
	if st.settings != nil {
		dst, src := reflect.ValueOf(qt).Elem(), reflect.ValueOf(st.settings).Elem()
		for i := range dst.NumField() {
			if dst.Type().Field(i).IsExported() {
				dst.Field(i).Set(src.Field(i))
			}
		}
	}
	qt.Conn = st.conn
	if u := st.pool.opts.upgrader; u != nil {
		u.setupTransport(qt, st)
	} else if st.sockets > 1 {
		st.pool.setupSteered(qt, st)
	}
	user := qt.ConnContext
	qt.ConnContext = func(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
		r := &route{st: st}
		// quic-go cancels the context it passes here when the
		// connection closes: a handshake that fails is settled then.
		context.AfterFunc(ctx, r.settle)
		if user != nil {
			var err error
			if ctx, err = user(ctx, info); err != nil {
				return ctx, err
			}
		}
		return context.WithValue(ctx, routeKey{}, r), nil
	}
	return qt
}

// compatible checks a later user's settings against the first user's.
// Pool.mu must be held.
func (st *sharedTransport) compatible(settings *quic.Transport) error {
	if settings == nil {
		return nil
	}
	want := reflect.ValueOf(settings).Elem()
	var have reflect.Value
	if st.settings != nil {
		have = reflect.ValueOf(st.settings).Elem()
	}
	for i := range want.NumField() {
		f := want.Type().Field(i)
		if !f.IsExported() || f.Name == "Conn" || want.Field(i).IsZero() {
			continue
		}
		if !have.IsValid() || !sameSetting(want.Field(i), have.Field(i)) {
			return fmt.Errorf("%w: %s", ErrTransportConfig, f.Name)
		}
	}
	return nil
}

func sameSetting(a, b reflect.Value) bool {
	switch a.Kind() {
	case reflect.Func:
		return !b.IsNil() && a.Pointer() == b.Pointer()
	case reflect.Pointer:
		return !b.IsNil() && reflect.DeepEqual(a.Elem().Interface(), b.Elem().Interface())
	}
	return reflect.DeepEqual(a.Interface(), b.Interface())
}

// halt marks the transport unusable, so that Accept returns instead of
// waiting for connections that cannot come. cause is nil when its last
// user shut it down.
func (st *sharedTransport) halt(cause error) {
	st.stopOnce.Do(func() {
		st.stopCause = cause
		close(st.stopped)
	})
}

// stopErr returns the error of an Accept on a halted transport, nil if it
// still runs.
func (st *sharedTransport) stopErr() error {
	select {
	case <-st.stopped:
	default:
		return nil
	}
	if st.stopCause != nil {
		return fmt.Errorf("%w: %w", quic.ErrServerClosed, st.stopCause)
	}
	return quic.ErrServerClosed
}

// ref adds a reference for a new Listener. It fails if the transport is
// shutting down: a Listen racing the last Close must not revive it.
func (st *sharedTransport) ref() bool {
	st.pool.mu.Lock()
	defer st.pool.mu.Unlock()
	if st.closing || st.refs <= 0 {
		return false
	}
	st.refs++
	return true
}

// release drops a reference and shuts the transport down with the last one.
func (st *sharedTransport) release() {
	p := st.pool
	p.mu.Lock()
	if st.refs <= 0 {
		p.mu.Unlock()
		return // a bug elsewhere; never drive the count negative
	}
	st.refs--
	if st.refs > 0 {
		p.mu.Unlock()
		return
	}
	st.closing = true
	p.mu.Unlock()

	st.halt(nil)
	st.closeReal()
	st.qt.Close() // stops its reader through st.conn's own deadline
	st.conn.Close()
	p.mu.Lock()
	st.detach()
	close(st.done)
	p.mu.Unlock()
}

// detach frees the socket for a new transport or plain handles. Pool.mu
// must be held.
func (st *sharedTransport) detach() {
	if st.entry.qt == st {
		st.entry.qt = nil
		st.entry.quic.Store(false)
	}
}

// failed handles quic-go's transport ending on its own (its reader hit an
// error it does not retry): the socket stays, and the next Transport
// request builds a new quic.Transport on it, while the holders of this one
// get the cause from Accept.
func (st *sharedTransport) failed(cause error) {
	p := st.pool
	p.mu.Lock()
	// Shut down by its last user, halted with its socket (Pool.Close, a
	// dead descriptor), or noticed already.
	known := st.closing || st.entry.qt != st || st.stopErr() != nil
	p.mu.Unlock()
	if known {
		return
	}
	st.pool.opts.log.Error("udppool: shared QUIC transport failed; the next Transport request builds a new one",
		keyAttr(st.entry.key), slog.Any("cause", cause))
	st.halt(fmt.Errorf("shared QUIC transport on %v failed: %w", st.entry.key, cause))
	p.mu.Lock()
	st.detach()
	p.mu.Unlock()
	// quic-go no longer reads: give its reference back now, so that the
	// socket is free for a new transport while this one's holders leave.
	st.conn.Close()
}

// closeReal closes the quic-go listener once no logical listener is left.
func (st *sharedTransport) closeReal() {
	st.realMu.Lock()
	defer st.realMu.Unlock()
	st.mu.Lock()
	real, done := st.real, st.acceptDone
	if len(st.listeners) > 0 || real == nil {
		st.mu.Unlock()
		return
	}
	st.real = nil
	st.mu.Unlock()
	// Outside st.mu: Close waits for handshakes in flight, whose TLS
	// callbacks take st.mu.
	real.Close()
	<-done
}

// addListener registers l and makes sure the quic-go listener runs.
func (st *sharedTransport) addListener(l *Listener) error {
	st.realMu.Lock()
	defer st.realMu.Unlock()
	st.mu.Lock()
	running := st.real != nil
	if running && !slices.Equal(versionsOf(l.quic), st.versions) {
		st.mu.Unlock()
		return fmt.Errorf("%w: quic.Config.Versions %v differ from %v, offered by the running listeners", ErrTransportConfig, versionsOf(l.quic), st.versions)
	}
	st.listeners = append(st.listeners, l)
	st.all[l] = true
	st.epochs++
	if l.epoch == 0 {
		l.epoch = st.epochs
	}
	st.mu.Unlock()
	st.pool.opts.log.Info("udppool: listener epoch opened", keyAttr(st.entry.key), epochAttr(l.epoch),
		slog.Any("protocols", l.protos))
	if running {
		return nil
	}
	tlsConf := &tls.Config{GetConfigForClient: st.tlsConfigFor}
	quicConf := &quic.Config{GetConfigForClient: st.quicConfigFor}
	if l.quic != nil {
		quicConf.Versions = l.quic.Versions
	}
	real, err := st.qt.ListenEarly(tlsConf, quicConf)
	if err != nil {
		st.removeListener(l)
		st.forget(l)
		return err
	}
	done := make(chan struct{})
	st.mu.Lock()
	st.real, st.acceptDone, st.versions = real, done, versionsOf(l.quic)
	st.mu.Unlock()
	go st.acceptLoop(real, done)
	return nil
}

// forget drops l from the listeners that Stats reports.
func (st *sharedTransport) forget(l *Listener) {
	st.mu.Lock()
	delete(st.all, l)
	st.mu.Unlock()
}

func (st *sharedTransport) removeListener(l *Listener) {
	st.mu.Lock()
	st.listeners = slices.DeleteFunc(st.listeners, func(o *Listener) bool { return o == l })
	st.mu.Unlock()
}

// pick returns the newest open listener that serves one of protos (any
// listener if protos is empty; a listener without protocols serves any).
// With fallback, it returns the newest listener when none matches, so that
// the TLS handshake fails with the proper no_application_protocol alert.
func (st *sharedTransport) pick(protos []string, fallback bool) *Listener {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.pickLocked(protos, fallback)
}

// pickLocked is pick with st.mu held.
func (st *sharedTransport) pickLocked(protos []string, fallback bool) *Listener {
	for _, l := range slices.Backward(st.listeners) {
		if l.serves(protos) {
			return l
		}
	}
	if fallback && len(st.listeners) > 0 {
		return st.listeners[len(st.listeners)-1]
	}
	return nil
}

// routeKey marks the per-connection record of the listener that its TLS
// handshake chose.
type routeKey struct{}

type route struct {
	l  atomic.Pointer[Listener]
	st *sharedTransport // the socket's transport that the connection lives on

	mu      sync.Mutex
	settled bool // delivered, refused or closed: no longer in l's handshakes
}

// tlsConfigFor gives a new handshake the TLS configuration of the newest
// listener serving one of the client's ALPN protocols, and remembers it.
func (st *sharedTransport) tlsConfigFor(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	r, _ := hello.Context().Value(routeKey{}).(*route)
	l := st.choose(hello, r)
	if l == nil {
		return nil, errNoListener
	}
	if l.tls.GetConfigForClient != nil {
		conf, err := l.tls.GetConfigForClient(hello)
		if err != nil {
			return nil, err
		}
		if conf != nil {
			return boundConfig(conf, l.ticketTag), nil
		}
	}
	return l.tls, nil
}

var errNoListener = errors.New("udppool: no open listener")

// quicConfigFor gives a new connection the QUIC configuration of the newest
// open listener.
func (st *sharedTransport) quicConfigFor(info *quic.ClientInfo) (*quic.Config, error) {
	l := st.pick(nil, false)
	if l == nil {
		return nil, errNoListener // quic-go refuses the connection
	}
	conf := l.quic
	if conf != nil && conf.GetConfigForClient != nil {
		return conf.GetConfigForClient(info)
	}
	if conf == nil {
		conf = &quic.Config{}
	}
	return conf, nil
}

// versionsOf returns the QUIC versions conf asks for; nil means quic-go's
// default.
func versionsOf(conf *quic.Config) []quic.Version {
	if conf == nil || len(conf.Versions) == 0 {
		return nil
	}
	return conf.Versions
}

// noticeClosed handles an error of quic-go's transport that says it has
// closed: if the pool did not close it, it failed on its own (a transport
// that only dials has no accept loop to notice).
func (st *sharedTransport) noticeClosed(err error) {
	if errors.Is(err, quic.ErrTransportClosed) {
		st.failed(err)
	}
}

func (st *sharedTransport) acceptLoop(real *quic.EarlyListener, done chan<- struct{}) {
	defer close(done)
	for {
		conn, err := real.Accept(context.Background())
		if err != nil {
			st.mu.Lock()
			ours := st.real != real // closeReal clears st.real first
			st.mu.Unlock()
			if !ours {
				st.failed(err)
			}
			return
		}
		var l *Listener
		if r, ok := conn.Context().Value(routeKey{}).(*route); ok {
			l = r.l.Load()
		}
		st.deliver(conn, l)
	}
}

// deliver hands conn to l, or, if l is nil or has closed meanwhile, to the
// newest open listener serving the negotiated protocol; without one it
// closes conn. A (non-early) Listener gets conn once its handshake is
// complete.
func (st *sharedTransport) deliver(conn *quic.Conn, l *Listener) {
	for {
		if l == nil {
			l = st.pick(negotiated(conn), false)
		}
		if l == nil {
			st.refused.Add(1)
			conn.CloseWithError(st.refusalCode(conn))
			settle(conn)
			return
		}
		if !l.early && !handshakeComplete(conn) {
			go func() {
				select {
				case <-conn.HandshakeComplete():
					st.deliver(conn, l)
				case <-conn.Context().Done():
				}
			}()
			return
		}
		if l.push(conn, st) {
			st.delivered.Add(1)
			settle(conn)
			return
		}
		l = nil
	}
}

func handshakeComplete(conn *quic.Conn) bool {
	select {
	case <-conn.HandshakeComplete():
		return true
	default:
		return false
	}
}

func negotiated(conn *quic.Conn) []string {
	if p := conn.ConnectionState().TLS.NegotiatedProtocol; p != "" {
		return []string{p}
	}
	return nil
}

// nonQUIC starts, once, the goroutine that moves quic-go's non-QUIC
// datagrams into a channel that Transport handles can select on.
func (st *sharedTransport) nonQUIC() <-chan nonQUICPacket {
	st.pumpOnce.Do(func() {
		st.packets = make(chan nonQUICPacket, 64)
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			<-st.stopped
			cancel()
		}()
		go func() {
			buf := make([]byte, 1<<16)
			for {
				n, addr, err := st.qt.ReadNonQUICPacket(ctx, buf)
				if err != nil {
					return
				}
				select {
				case st.packets <- nonQUICPacket{data: slices.Clone(buf[:n]), addr: addr}:
				case <-st.stopped:
					return
				}
			}
		}()
	})
	return st.packets
}
