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

	"github.com/quic-go/quic-go"
)

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

	epoch uint64 // the listeners of a socket are numbered from 1

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
// Without any (and without a GetConfigForClient that may supply them) no
// QUIC handshake could complete, so Listen fails with a *net.OpError
// wrapping ErrNoNextProtos.
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
	if len(tlsConf.NextProtos) == 0 && tlsConf.GetConfigForClient == nil {
		return nil, &net.OpError{Op: "listen", Net: "udp", Source: t.LocalAddr(), Err: fmt.Errorf("%w (socket %v)", ErrNoNextProtos, t.key)}
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
	stopped := make([]<-chan struct{}, max(len(l.t.parts), 2))
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
		if len(stopped) == 2 {
			select {
			case <-avail:
			case <-done:
			case <-stopped[0]:
			case <-stopped[1]:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			continue
		}
		// Several sockets per address: a case for each.
		cases := []reflect.SelectCase{
			{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ctx.Done())},
			{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(avail)},
			{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(done)},
		}
		for _, ch := range stopped {
			cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ch)})
		}
		if i, _, _ := reflect.Select(cases); i == 0 {
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
			l.log().Info("udppool: listener epoch drained", keyAttr(l.t.key), epochAttr(l.epoch))
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
	l.log().Info("udppool: listener epoch retired", keyAttr(l.t.key), epochAttr(l.epoch),
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

// ListenerStats describes one epoch of listeners on a socket.
type ListenerStats struct {
	Epoch     uint64   // listeners of a socket are numbered from 1
	Accepting bool     // false once closed, while its connections drain
	Conns     int      // connections it accepted that are still open
	Accepted  uint64   // connections it ever accepted
	Protocols []string // its ALPN protocols

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
			Epoch: l.epoch, Accepting: !l.closed, Conns: len(l.conns), Accepted: l.accepted, Protocols: l.protos,
			EndedByThemselves: l.ended[endedByThemselves],
			EndedByGoAway:     l.ended[endedByGoAway],
			EndedByDeadline:   l.ended[endedByDeadline],
		})
		l.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b ListenerStats) int { return cmp.Compare(a.Epoch, b.Epoch) })
	return out
}
