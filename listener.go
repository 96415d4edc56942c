package udppool

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/quic-go/quic-go"
)

// sharedTransport is the one quic.Transport of a pooled socket, shared by
// every Transport handle and Listener of that socket.
type sharedTransport struct {
	pool     *Pool
	entry    *entry
	conn     *Conn // quic-go's own handle: its deadlines are its own
	qt       *quic.Transport
	settings *quic.Transport // as requested by the first user; nil for defaults

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
	gens      uint64             // generations handed out

	pumpOnce sync.Once
	packets  chan nonQUICPacket

	// refused counts handshaken connections the pool closed because no
	// listener could take them (none open, or its queue full).
	refused atomic.Uint64
}

type nonQUICPacket struct {
	data []byte
	addr net.Addr
}

// acquireTransport returns a new reference to the shared transport of the
// socket of k, creating both as needed. fresh is for the second socket of a
// split-stack port 0 Transport: it must be a new socket, never one the pool
// holds already.
func (p *Pool) acquireTransport(ctx context.Context, k Key, settings *quic.Transport, fresh bool) (*sharedTransport, error) {
	for {
		c, err := p.acquire(ctx, k, acquireOpts{quic: true, fresh: fresh})
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
			pool: p, entry: e, conn: c, settings: settings, refs: 1,
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
	}
	user := qt.ConnContext
	qt.ConnContext = func(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
		r := new(route)
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
	st.gens++
	if l.gen == 0 {
		l.gen = st.gens
	}
	st.mu.Unlock()
	st.pool.opts.log.Info("udppool: listener generation opened", keyAttr(st.entry.key), genAttr(l.gen),
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
	l atomic.Pointer[Listener]

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

// A Listener is a logical QUIC listener on a pooled Transport. Several may be
// open on one Transport at once: each new handshake uses the TLS
// configuration of the newest open listener that serves one of the client's
// ALPN protocols, and is delivered to that listener. The QUIC configuration
// (quic.Config) of a new connection is the newest open listener's whatever
// its protocols, because quic-go asks for it before the ClientHello names
// any: listeners of different protocols on one Transport should agree on
// settings such as EnableDatagrams. Closing a Listener
// stops its deliveries only: connections it accepted stay open, and
// handshakes it had not yet delivered go to the newest listener left.
//
// A Listener satisfies http3.QUICListener, so (*http3.Server).ServeListener
// serves HTTP/3 on it.
type Listener struct {
	t      *Transport
	early  bool
	tls    *tls.Config
	quic   *quic.Config
	protos []string

	gen uint64 // generation: the listeners of a socket are numbered from 1

	closeCode   quic.ApplicationErrorCode // see WithCloseCode
	closeReason string
	ticketTag   []byte // marks its TLS sessions (see bindSessions)

	mu       sync.Mutex
	closed   bool          // no more deliveries
	released bool          // references to the transports dropped
	done     chan struct{} // closed with closed
	// queue holds connections delivered and not yet accepted. Accept takes
	// one and starts tracking it in one step under mu, so that a Close or
	// Shutdown never misses a connection between the two.
	queue    []accepted
	avail    chan struct{}         // closed and replaced when queue grows
	conns    map[*quic.Conn]ending // accepted and still open
	accepted uint64                // connections ever accepted
	ended    [endings]uint64       // connections accepted and ended, by how
	drained  chan struct{}         // closed when conns empties after closed

	// A draining listener still takes the connections whose handshake
	// began with its configuration (see Drain).
	draining bool
	cut      bool             // the drain's deadline has passed
	goAway   func(*quic.Conn) // the drain's, for connections it accepts
	inflight int              // handshakes that chose l, not yet delivered
}

type accepted struct {
	conn *quic.Conn
	from *sharedTransport
}

// acceptQueueLen bounds the connections waiting in a Listener for Accept.
// Beyond it new connections are refused, as quic-go refuses them when its
// own accept queue is full.
const acceptQueueLen = 256

// Listen opens a logical listener that delivers connections once their
// handshake has completed. tlsConf must list the listener's ALPN protocols in
// NextProtos; they route connections among the listeners of the Transport.
func (t *Transport) Listen(tlsConf *tls.Config, conf *quic.Config, opts ...ListenOption) (*Listener, error) {
	return t.listen(tlsConf, conf, false, opts)
}

// ListenEarly is like Listen but delivers connections before the handshake
// completes, as quic-go's ListenEarly does (0.5-RTT and, with
// conf.Allow0RTT, 0-RTT data).
func (t *Transport) ListenEarly(tlsConf *tls.Config, conf *quic.Config, opts ...ListenOption) (*Listener, error) {
	return t.listen(tlsConf, conf, true, opts)
}

func (t *Transport) listen(tlsConf *tls.Config, conf *quic.Config, early bool, opts []ListenOption) (*Listener, error) {
	if err := t.check("listen"); err != nil {
		return nil, err
	}
	if tlsConf == nil {
		return nil, &net.OpError{Op: "listen", Net: "udp", Source: t.LocalAddr(), Err: errors.New("tls.Config not set")}
	}
	// A copy of its own, whose sessions resume only with its TLS identity
	// (see bindSessions).
	ticketTag := ticketTag(tlsConf, randomTicketTag())
	tlsConf = tlsConf.Clone()
	bindSessions(tlsConf, ticketTag)
	l := &Listener{
		t: t, early: early, tls: tlsConf, quic: conf, protos: slices.Clone(tlsConf.NextProtos), ticketTag: ticketTag,
		done: make(chan struct{}), avail: make(chan struct{}),
		conns: make(map[*quic.Conn]ending), drained: make(chan struct{}),
	}
	var o listenOptions
	for _, opt := range opts {
		opt(&o)
	}
	l.closeCode, l.closeReason = defaultCloseCode(l.protos), "listener retired"
	if o.closeCode != nil {
		l.closeCode, l.closeReason = *o.closeCode, o.closeReason
	}
	for i, st := range t.parts {
		var err error
		if !st.ref() {
			err = net.ErrClosed
		} else if err = st.addListener(l); err != nil {
			st.release()
		}
		if err != nil {
			for _, prev := range t.parts[:i] {
				prev.removeListener(l)
				prev.forget(l)
				prev.closeReal()
				prev.release()
			}
			return nil, &net.OpError{Op: "listen", Net: "udp", Source: t.LocalAddr(), Err: err}
		}
	}
	return l, nil
}

// serves reports whether l takes a connection offering protos.
func (l *Listener) serves(protos []string) bool {
	if len(l.protos) == 0 || len(protos) == 0 {
		return true
	}
	for _, p := range protos {
		if slices.Contains(l.protos, p) {
			return true
		}
	}
	return false
}

// push queues conn for Accept; false if l is closed. A draining listener
// takes conn, and one past its drain's deadline closes it.
func (l *Listener) push(conn *quic.Conn, from *sharedTransport) bool {
	l.mu.Lock()
	if l.cut {
		l.mu.Unlock()
		from.refused.Add(1)
		conn.CloseWithError(l.closeCode, l.closeReason)
		return true
	}
	if l.closed && !l.draining {
		l.mu.Unlock()
		return false
	}
	if len(l.queue) >= acceptQueueLen {
		l.mu.Unlock()
		from.refused.Add(1)
		conn.CloseWithError(l.closeCode, "accept queue full")
		return true
	}
	l.queue = append(l.queue, accepted{conn, from})
	l.signal()
	l.mu.Unlock()
	return true
}

// signal wakes the Accepts waiting on l. l.mu must be held.
func (l *Listener) signal() {
	close(l.avail)
	l.avail = make(chan struct{})
}

// Accept returns the next connection delivered to l. After Close it returns
// quic.ErrServerClosed, as quic-go's listeners do, and never a connection;
// during a Drain it still returns the connections whose handshake began
// with l's configuration, until none is left to come. If the shared
// transport stopped (its socket closed by Pool.Close or found dead, or
// quic-go's transport failed), the error wraps quic.ErrServerClosed and the
// cause.
func (l *Listener) Accept(ctx context.Context) (*quic.Conn, error) {
	var stopped [2]<-chan struct{}
	for i, st := range l.t.parts {
		stopped[i] = st.stopped
	}
	for {
		l.mu.Lock()
		if l.closed && !l.delivering() {
			l.mu.Unlock()
			return nil, quic.ErrServerClosed
		}
		for _, st := range l.t.parts {
			if err := st.stopErr(); err != nil {
				l.mu.Unlock()
				return nil, err
			}
		}
		if len(l.queue) > 0 {
			a := l.queue[0]
			l.queue[0] = accepted{}
			l.queue = l.queue[1:]
			l.track(a.conn)
			goAway := l.goAway
			l.mu.Unlock()
			a.from.handshakeDone(a.conn)
			if goAway != nil {
				goAway(a.conn) // accepted during a drain: asked to go at once
			}
			return a.conn, nil
		}
		avail, done := l.avail, l.done
		if l.closed {
			done = nil // a draining listener's, closed: avail tells when deliveries end
		}
		l.mu.Unlock()
		select {
		case <-avail:
		case <-done:
		case <-stopped[0]:
		case <-stopped[1]:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (l *Listener) log() *slog.Logger { return l.t.parts[0].pool.opts.log }

// Addr returns the local address of the Transport.
func (l *Listener) Addr() net.Addr { return l.t.LocalAddr() }

// track counts an accepted connection until it closes, for Shutdown and
// Stats. l.mu must be held.
func (l *Listener) track(conn *quic.Conn) {
	l.conns[conn] = endedByThemselves
	if l.goAway != nil {
		l.conns[conn] = endedByGoAway
	}
	l.accepted++
	// The function runs on a goroutine of its own, also when conn has
	// closed already, so it may take l.mu.
	context.AfterFunc(conn.Context(), func() {
		l.mu.Lock()
		l.ended[l.conns[conn]]++
		delete(l.conns, conn)
		l.checkDrained()
		gone := l.released && len(l.conns) == 0
		l.mu.Unlock()
		if gone {
			l.forget()
		}
	})
}

// forget drops l from Stats once it neither accepts nor has connections.
func (l *Listener) forget() {
	for _, st := range l.t.parts {
		st.forget(l)
	}
}

// checkDrained signals Shutdown once a stopped listener has no connection
// left. l.mu must be held.
func (l *Listener) checkDrained() {
	if l.closed && len(l.conns) == 0 && !l.delivering() {
		select {
		case <-l.drained:
		default:
			close(l.drained)
			l.log().Info("udppool: listener generation drained", keyAttr(l.t.key), genAttr(l.gen))
		}
	}
}

// Close stops deliveries to l. Connections it accepted stay open;
// connections delivered but not yet accepted go to the newest listener left
// that serves their protocol, or are closed. If l was the last listener and
// its Transport was closed, the shared transport closes, and with it every
// connection: use Shutdown to let them finish first. Calls after the first
// return an error wrapping net.ErrClosed.
func (l *Listener) Close() error {
	if !l.stop() {
		return &net.OpError{Op: "close", Net: "udp", Source: l.Addr(), Err: net.ErrClosed}
	}
	l.release()
	return nil
}

// Shutdown stops deliveries to l as Close does, then waits until every
// connection l accepted has closed, or until ctx ends; it then closes the
// remaining ones with l's close code (see WithCloseCode) and returns ctx's
// error. It is Drain without asking the connections to go.
func (l *Listener) Shutdown(ctx context.Context) error {
	_, err := l.Drain(ctx, nil)
	return err
}

// stop ends deliveries to l and hands connections not yet accepted to the
// newest listener left. It reports whether this call stopped l.
func (l *Listener) stop() bool {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return false
	}
	l.closed = true
	close(l.done)
	l.checkDrained()
	var pending []accepted
	if !l.draining { // a draining listener serves what it has
		pending = l.queue
		l.queue = nil
	}
	conns := len(l.conns)
	l.mu.Unlock()
	l.log().Info("udppool: listener generation retired", keyAttr(l.t.key), genAttr(l.gen),
		slog.Int("conns", conns))
	for _, st := range l.t.parts {
		st.removeListener(l)
	}
	for _, a := range pending {
		a.from.deliver(a.conn, nil)
	}
	for _, st := range l.t.parts {
		st.closeReal()
	}
	return true
}

// release drops l's references to the shared transports, once.
func (l *Listener) release() {
	l.mu.Lock()
	released := l.released
	l.released = true
	drained := len(l.conns) == 0
	l.mu.Unlock()
	if released {
		return
	}
	if drained {
		l.forget()
	}
	for _, st := range l.t.parts {
		st.release()
	}
}

// ListenerStats describes one generation of listeners on a socket.
type ListenerStats struct {
	Generation uint64   // listeners of a socket are numbered from 1
	Accepting  bool     // false once closed, while its connections drain
	Conns      int      // connections it accepted that are still open
	Accepted   uint64   // connections it ever accepted
	Protocols  []string // its ALPN protocols

	// How the connections it accepted have ended so far (see DrainStats):
	// closed without being asked, closed after a drain asked them to go,
	// or closed by the pool when a drain's deadline came.
	EndedByThemselves uint64
	EndedByGoAway     uint64
	EndedByDeadline   uint64
}

// stats describes the listeners of st that accept or still have
// connections, oldest first.
func (st *sharedTransport) stats() []ListenerStats {
	st.mu.Lock()
	defer st.mu.Unlock()
	out := make([]ListenerStats, 0, len(st.all))
	for l := range st.all {
		l.mu.Lock()
		out = append(out, ListenerStats{
			Generation: l.gen, Accepting: !l.closed, Conns: len(l.conns), Accepted: l.accepted, Protocols: l.protos,
			EndedByThemselves: l.ended[endedByThemselves],
			EndedByGoAway:     l.ended[endedByGoAway],
			EndedByDeadline:   l.ended[endedByDeadline],
		})
		l.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b ListenerStats) int { return cmp.Compare(a.Generation, b.Generation) })
	return out
}
