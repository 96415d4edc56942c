package udppool

import (
	"context"
	"log/slog"
	"maps"
	"slices"
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
		if l.serves(protos) && (newest == nil || l.gen > newest.gen) {
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

// DrainStats says how the connections that a listener had when its drain
// began ended. Each of them is counted in exactly one of the three ways.
type DrainStats struct {
	Generation uint64
	// Conns counts the connections open when the drain began.
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
// deadline. It stops deliveries to l as Close does, then calls goAway, if
// not nil, once for each connection l accepted that is still open: goAway
// asks the connection to go in the words of its protocol (for HTTP/3, a
// GOAWAY frame), and must not block. Drain returns when every connection
// has closed, or when ctx ends: it then closes the remaining ones with l's
// close code (see WithCloseCode), and reports ctx's error. Either way it
// returns only once all of l's connections have ended, and says how they
// did. Until it returns, l keeps the shared transport (and so the port and
// its connections) open even if no other user is left. Other listeners of
// the Transport and their connections are not touched.
//
// Connections l has not yet accepted go to the newest listener left, as
// with Close. Drain may be called after Close, and more than once; each
// call counts the connections open when it began.
func (l *Listener) Drain(ctx context.Context, goAway func(*quic.Conn)) (DrainStats, error) {
	l.stop()
	l.mu.Lock()
	ds := DrainStats{Generation: l.gen, Conns: len(l.conns)}
	before := l.ended
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
	// Outside l.mu: goAway may be slow, or end the connection at once,
	// whose bookkeeping takes l.mu.
	for _, c := range asked {
		goAway(c)
	}

	var err error
	select {
	case <-l.drained:
	case <-ctx.Done():
		err = ctx.Err()
		l.mu.Lock()
		left := slices.Collect(maps.Keys(l.conns))
		for _, c := range left {
			l.conns[c] = endedByDeadline
		}
		l.mu.Unlock()
		for _, c := range left {
			c.CloseWithError(l.closeCode, l.closeReason)
		}
		// CloseWithError returns once the connection has closed; its
		// bookkeeping follows on a goroutine of its own.
		<-l.drained
	}
	l.mu.Lock()
	ds.EndedByThemselves = int(l.ended[endedByThemselves] - before[endedByThemselves])
	ds.EndedByGoAway = int(l.ended[endedByGoAway] - before[endedByGoAway])
	ds.EndedByDeadline = int(l.ended[endedByDeadline] - before[endedByDeadline])
	l.mu.Unlock()
	l.log().Info("udppool: listener generation drain ended", keyAttr(l.t.key), genAttr(l.gen),
		slog.Int("conns", ds.Conns), slog.Int("ended_by_themselves", ds.EndedByThemselves),
		slog.Int("ended_by_goaway", ds.EndedByGoAway), slog.Int("ended_by_deadline", ds.EndedByDeadline))
	l.release()
	return ds, err
}
