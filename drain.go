package udppool

import (
	"context"
	"crypto/tls"
	"log/slog"
	"strings"

	"github.com/quic-go/quic-go"
)

// A ListenOption configures a Listener.
type ListenOption func(*listenOptions)

type listenOptions struct {
	closeCode   *quic.ApplicationErrorCode
	closeReason string
}

// WithCloseCode sets the application error code and reason with which the
// pool closes the listener's connections: those still open when a drain's
// grace period ends, and handshakes that no listener could take any more.
// Without it the code is that of the listener's protocol meaning "no error":
// H3_NO_ERROR (0x100) for a listener whose ALPN protocols are all HTTP/3,
// 0 otherwise.
func WithCloseCode(code quic.ApplicationErrorCode, reason string) ListenOption {
	return func(o *listenOptions) {
		o.closeCode = &code
		o.closeReason = reason
	}
}

// h3NoError is HTTP/3's "no error" (RFC 9114, section 8.1).
const h3NoError quic.ApplicationErrorCode = 0x100

// defaultCloseCode is the "no error" code of an application protocol, as
// far as the pool knows it.
func defaultCloseCode(protos []string) quic.ApplicationErrorCode {
	if len(protos) == 0 {
		return 0
	}
	for _, p := range protos {
		if p != "h3" && !strings.HasPrefix(p, "h3-") {
			return 0
		}
	}
	return h3NoError
}

// refusalCode returns the code that closes a connection no listener takes:
// that of the newest listener, open or draining, serving its protocol, or
// the protocol's default.
func (st *sharedTransport) refusalCode(conn *quic.Conn) (quic.ApplicationErrorCode, string) {
	protos := negotiated(conn)
	st.mu.Lock()
	var newest *Listener
	for l := range st.all {
		if l.serves(protos) && (newest == nil || l.epoch > newest.epoch) {
			newest = l
		}
	}
	st.mu.Unlock()
	if newest != nil {
		return newest.closeCode, "no listener"
	}
	return defaultCloseCode(protos), "no listener"
}

// How a connection that a listener accepted ended, as counted in
// ListenerStats and DrainStats. Until it ends, a connection holds the way
// it will be counted if it ends now.
type ending uint8

const (
	endedByThemselves ending = iota
	endedByGoAway
	endedByDeadline
	endings
)

// DrainStats says how the connections of a listener ended during its
// drain: those open when it began, and those it accepted meanwhile (see
// Drain). Each of them is counted in exactly one of the three ways.
type DrainStats struct {
	Epoch uint64
	// Conns counts the connections of the drain.
	Conns int
	// EndedByThemselves counts connections that closed before the drain
	// asked them to go: closed by the peer, or timed out.
	EndedByThemselves int
	// EndedByGoAway counts connections that closed after the drain asked
	// them to go (for HTTP/3, a GOAWAY frame) and before its deadline,
	// whoever closed them.
	EndedByGoAway int
	// EndedByDeadline counts connections still open when the drain's
	// context ended, which the pool then closed with the listener's close
	// code (see WithCloseCode).
	EndedByDeadline int
}

// Drain retires l and waits until its connections have ended, within a
// deadline. It stops l taking new handshakes, which go to the newest
// listener left, then calls goAway, if not nil, once for each connection l
// accepted that is still open: goAway asks the connection to go in the
// words of its protocol (for HTTP/3, a GOAWAY frame), and must not block.
// Connections whose handshake began with l's configuration before the
// drain, and which l had not yet accepted, are still l's: Accept returns
// them during the drain, and goAway is called for each as Accept returns
// it. So no connection made with l's configuration (its certificate, its
// client CAs) outlives the drain.
//
// Drain returns when every connection has ended, or when ctx ends: it then
// closes the remaining ones, and any that would still come, with l's close
// code (see WithCloseCode), and reports ctx's error. Either way it returns
// only once all of l's connections have ended, and says how they did.
// Until it returns, l keeps the shared transport (and so the port and its
// connections) open even if no other user is left. Other listeners of the
// Transport and their connections are not touched.
//
// Drain may be called after Close, and more than once; each call counts
// the connections that ended while it ran. After Close, connections not yet
// accepted have gone to the newest listener already.
func (l *Listener) Drain(ctx context.Context, goAway func(*quic.Conn)) (DrainStats, error) {
	l.mu.Lock()
	before := l.ended
	if !l.closed {
		l.draining = true
	}
	if l.goAway == nil {
		l.goAway = goAway
	}
	l.mu.Unlock()
	l.stop()
	l.mu.Lock()
	var asked []*quic.Conn
	if goAway != nil {
		for c, e := range l.conns {
			if e == endedByThemselves {
				l.conns[c] = endedByGoAway
				asked = append(asked, c)
			}
		}
	}
	l.mu.Unlock()
	// Outside l.mu: goAway may end the connection at once, whose
	// bookkeeping takes l.mu.
	for _, c := range asked {
		goAway(c)
	}

	var err error
	select {
	case <-l.drained:
	case <-ctx.Done():
		err = ctx.Err()
		l.mu.Lock()
		l.cut = true
		var left []*quic.Conn
		for c := range l.conns {
			// One that has ended already, its bookkeeping still to come,
			// ended before the deadline.
			if c.Context().Err() == nil {
				l.conns[c] = endedByDeadline
				left = append(left, c)
			}
		}
		queued := l.queue
		l.queue = nil
		l.signal()
		l.checkDrained()
		l.mu.Unlock()
		for _, a := range queued {
			a.from.refused.Add(1)
			a.conn.CloseWithError(l.closeCode, l.closeReason)
		}
		for _, c := range left {
			c.CloseWithError(l.closeCode, l.closeReason)
		}
		// CloseWithError returns once the connection has closed; its
		// bookkeeping follows on a goroutine of its own.
		<-l.drained
	}
	l.mu.Lock()
	ds := DrainStats{
		Epoch:             l.epoch,
		EndedByThemselves: int(l.ended[endedByThemselves] - before[endedByThemselves]),
		EndedByGoAway:     int(l.ended[endedByGoAway] - before[endedByGoAway]),
		EndedByDeadline:   int(l.ended[endedByDeadline] - before[endedByDeadline]),
	}
	l.mu.Unlock()
	ds.Conns = ds.EndedByThemselves + ds.EndedByGoAway + ds.EndedByDeadline
	l.log().Info("udppool: listener epoch drain ended", keyAttr(l.t.key), epochAttr(l.epoch),
		slog.Int("conns", ds.Conns), slog.Int("ended_by_themselves", ds.EndedByThemselves),
		slog.Int("ended_by_goaway", ds.EndedByGoAway), slog.Int("ended_by_deadline", ds.EndedByDeadline))
	l.release()
	return ds, err
}

// delivering reports whether a draining listener may still get
// connections: queued, or with a handshake in flight. l.mu must be held.
func (l *Listener) delivering() bool {
	return l.draining && !l.cut && (len(l.queue) > 0 || l.inflight > 0)
}

// choose picks the listener whose configuration a new handshake uses and
// counts the handshake as in flight to it, under the same lock as the
// removal of a listener being drained: a Drain that finds no handshake in
// flight has none to wait for.
func (st *sharedTransport) choose(hello *tls.ClientHelloInfo, r *route) *Listener {
	if r != nil {
		if l := r.l.Load(); l != nil {
			return l // asked again for the same handshake
		}
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	l := st.pickLocked(hello.SupportedProtos, true)
	if l != nil && r != nil {
		r.mu.Lock()
		if !r.settled { // else the connection closed meanwhile
			r.l.Store(l)
			l.mu.Lock()
			l.inflight++
			l.mu.Unlock()
		}
		r.mu.Unlock()
	}
	return l
}

// settle ends the handshake of conn for the listener it chose: conn was
// delivered or refused.
func settle(conn *quic.Conn) {
	if r, ok := conn.Context().Value(routeKey{}).(*route); ok {
		r.settle()
	}
}

func (r *route) settle() {
	r.mu.Lock()
	settled := r.settled
	r.settled = true
	r.mu.Unlock()
	l := r.l.Load()
	if settled || l == nil {
		return
	}
	l.mu.Lock()
	l.inflight--
	l.signal()
	l.checkDrained()
	l.mu.Unlock()
}
