package h3

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/udppool/udppool"
)

// An epoch is one listener of a Server and the connections it accepted.
type epoch struct {
	s       *Server
	ln      *udppool.Listener
	handler http.Handler // never nil

	mu    sync.Mutex
	conns map[*quic.Conn]*conn
}

// A conn is one connection with an http3.Server of its own, so that its
// GOAWAY can be timed apart from the other connections of its epoch.
type conn struct {
	qc         *quic.Conn
	srv        *http3.Server
	serving    chan struct{} // closed once srv serves qc
	goAwayOnce sync.Once

	mu       sync.Mutex
	served   bool          // a request has reached the handler
	active   int           // requests in the handler
	wake     chan struct{} // closed by the next request, if set
	goAwayAt time.Time     // when the GOAWAY was sent
}

// handle runs a request through h, counting it and waking a GOAWAY that
// waits for it. A request that wakes the GOAWAY, or that the GOAWAY found
// in the handler, keeps its response back until the GOAWAY has had a
// moment's lead (see goAwayLead), so that it reaches the client first.
func (c *conn) handle(h http.Handler, w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	c.served = true
	c.active++
	woke := c.wake != nil
	if woke {
		close(c.wake)
		c.wake = nil
	}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.active--
		c.mu.Unlock()
	}()
	h.ServeHTTP(w, r)
	c.mu.Lock()
	at := c.goAwayAt
	c.mu.Unlock()
	var hold time.Duration
	switch {
	case !at.IsZero():
		hold = goAwayLead(c.qc) - time.Since(at)
	case woke: // the GOAWAY is on its way
		hold = goAwayLead(c.qc)
	}
	if hold > 0 {
		t := time.NewTimer(hold)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
		}
	}
}

// minGoAwayLead is the least head start a GOAWAY gets over the response of
// the request that woke it: time for the goroutines of the server to send
// it and of the client to read it, on a busy machine.
const minGoAwayLead = 5 * time.Millisecond

// goAwayLead is how long the response of the request that woke a GOAWAY
// is kept back. A client that reads the response, then opens its next
// request before it has read the GOAWAY, has that request rejected (and
// sends it again), or, with quic-go v0.65's client if the GOAWAY is read
// just as the request is opened, lost: that client closes a connection
// without requests when a GOAWAY comes, and does not count a request
// until just after it was opened. A client that has read the GOAWAY
// before the response closes the connection after the response and sends
// its next request on a new one, which costs nothing.
func goAwayLead(qc *quic.Conn) time.Duration {
	return max(qc.ConnectionStats().SmoothedRTT, minGoAwayLead)
}

// nextRequest returns nil if a request is in the handler, or else a
// channel that the next request closes, and whether the connection has
// carried a request before.
func (c *conn) nextRequest() (next <-chan struct{}, served bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.active > 0 {
		return nil, true
	}
	if c.wake == nil {
		c.wake = make(chan struct{})
	}
	return c.wake, c.served
}

// serve accepts connections until the listener is retired.
func (g *epoch) serve() {
	for {
		qc, err := g.ln.Accept(context.Background())
		if err != nil {
			return
		}
		c := g.conn(qc)
		g.s.running.Go(func() {
			if err := c.srv.ServeQUICConn(qc); err != nil && !errors.Is(err, http.ErrServerClosed) && g.s.Logger != nil {
				g.s.Logger.Debug("h3: serving a connection failed", "remote", qc.RemoteAddr(), "error", err)
			}
			// ServeQUICConn returns when the connection has closed, or if
			// it could not start (its control stream): never leave a
			// connection open without a server.
			qc.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeNoError), "")
			g.mu.Lock()
			delete(g.conns, qc)
			g.mu.Unlock()
		})
	}
}

// conn returns the record of qc, making it if needed: a drain may ask a
// connection to go before the accept loop has got to it.
func (g *epoch) conn(qc *quic.Conn) *conn {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c := g.conns[qc]; c != nil {
		return c
	}
	s := g.s
	c := &conn{qc: qc, serving: make(chan struct{})}
	handler := g.handler
	c.srv = &http3.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c.handle(handler, w, r)
		}),
		MaxHeaderBytes:     s.MaxHeaderBytes,
		IdleTimeout:        s.IdleTimeout,
		EnableDatagrams:    s.EnableDatagrams,
		AdditionalSettings: s.AdditionalSettings,
		Logger:             s.Logger,
		ConnContext: func(ctx context.Context, qc *quic.Conn) context.Context {
			// http3.Server calls this once it serves qc: only from then
			// on does its Shutdown send a GOAWAY on qc.
			close(c.serving)
			if s.ConnContext != nil {
				return s.ConnContext(ctx, qc)
			}
			return ctx
		},
	}
	g.conns[qc] = c
	return c
}

// retire drains the epoch: a GOAWAY on every connection, and those
// left closed when ctx ends. It returns once every connection has ended
// and reports to Server.Drained.
func (g *epoch) retire(ctx context.Context) {
	ds, _ := g.ln.Drain(ctx, g.goAway)
	if g.s.Drained != nil {
		g.s.Drained(ds)
	}
}

// goAway sends qc's GOAWAY, on a goroutine of its own: udppool's Drain
// must not block. It picks its moment. While a request is in the handler,
// the GOAWAY goes out at once: the client is waiting for the response and
// opens no request meanwhile, and it closes the connection once the
// response is complete (which handle keeps back until the GOAWAY is
// ahead). On an idle connection it waits for the next
// request (see requestWait) and goes out then, or at the end of the wait,
// when a client following RFC 9114 closes the idle connection at once. A GOAWAY that arrives while the
// client opens a request is what costs requests: the server rejects the
// request, and quic-go's client sends it again on a new connection, but
// only once, so a retry that a GOAWAY overtook in turn (the new
// connection is one of an epoch that a reload retires just then) would
// be lost; and quic-go v0.65's client closes a connection that has no
// request open when a GOAWAY comes, including one it has just opened and
// not yet counted, which fails that request. Waiting for the request
// avoids both in a client that sends back to back.
func (g *epoch) goAway(qc *quic.Conn) {
	c := g.conn(qc)
	c.goAwayOnce.Do(func() {
		g.s.running.Go(func() {
			select {
			case <-c.serving:
			case <-qc.Context().Done():
				return
			}
			if next, served := c.nextRequest(); next != nil {
				t := time.NewTimer(requestWait(qc, served, g.s.grace()))
				defer t.Stop()
				select {
				case <-next:
				case <-t.C:
				case <-qc.Context().Done():
					return
				}
			}
			c.mu.Lock()
			c.goAwayAt = time.Now()
			c.mu.Unlock()
			// Shutdown returns once the connection has ended: the client
			// closed it, or the drain's deadline did.
			c.srv.Shutdown(context.Background())
		})
	})
}

// The least time an idle connection of a retired epoch is given to
// send its next request before its GOAWAY goes out anyway; round trips on a
// loopback or a LAN are far shorter than the time a busy client may take
// to send it. A connection that has carried no request yet is given more:
// it is most likely one that a client opened to send again a request that
// an older epoch rejected, which must not be rejected twice.
const (
	minRequestWait      = 100 * time.Millisecond
	minFirstRequestWait = time.Second
)

// requestWait is how long an idle connection keeps its GOAWAY back waiting
// for a request (see goAway): a few of its probe timeouts (RFC 9002,
// section 6.2.1), at least the minimum, at most a quarter of the grace
// period.
func requestWait(qc *quic.Conn, served bool, grace time.Duration) time.Duration {
	st := qc.ConnectionStats()
	pto := st.SmoothedRTT + max(4*st.MeanDeviation, time.Millisecond)
	least := minFirstRequestWait
	if served {
		least = minRequestWait
	}
	return min(max(4*pto, least), grace/4)
}
