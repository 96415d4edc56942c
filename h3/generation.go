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

// A generation is one listener of a Server and the connections it accepted.
type generation struct {
	s  *Server
	ln *udppool.Listener

	mu    sync.Mutex
	conns map[*quic.Conn]*conn
}

// A conn is one connection with an http3.Server of its own, so that its
// GOAWAY can be timed apart from the other connections of its generation.
type conn struct {
	qc         *quic.Conn
	srv        *http3.Server
	serving    chan struct{} // closed once srv serves qc
	goAwayOnce sync.Once

	mu     sync.Mutex
	served bool          // a request has reached the handler
	active int           // requests in the handler
	wake   chan struct{} // closed by the next request, if set
}

// handle runs a request through h, counting it and waking a GOAWAY that
// waits for it.
func (c *conn) handle(h http.Handler, w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	c.served = true
	c.active++
	if c.wake != nil {
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
}

// nextRequest returns nil if a request is in the handler, or else a
// channel that the next request closes and whether the connection has
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
func (g *generation) serve() {
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
func (g *generation) conn(qc *quic.Conn) *conn {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c := g.conns[qc]; c != nil {
		return c
	}
	s := g.s
	c := &conn{qc: qc, serving: make(chan struct{})}
	handler := s.Handler
	if handler == nil {
		handler = http.DefaultServeMux
	}
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

// retire drains the generation: a GOAWAY on every connection, and those
// left closed when ctx ends. It returns once every connection has ended
// and reports to Server.Drained.
func (g *generation) retire(ctx context.Context) {
	ds, _ := g.ln.Drain(ctx, g.goAway)
	if g.s.Drained != nil {
		g.s.Drained(ds)
	}
}

// goAway sends qc's GOAWAY, on a goroutine of its own: udppool's Drain
// must not block. A GOAWAY rejects the requests it overtakes, which the
// client must then send again on a new connection, so it picks its
// moment. While a request is in the handler, it goes out at once: the
// client waits for the response, and the GOAWAY is on its way before the
// response is complete. On an idle connection it waits for the next
// request for two of the connection's probe timeouts (RFC 9002, section
// 6.2.1): a client sending back to back sends it by then, and a client
// following RFC 9114 closes an idle connection as soon as the GOAWAY
// comes. A connection that has not yet carried a request waits longer (a
// few probe timeouts, 100 ms at least): it is most likely one that a
// client opened to retry a request an older generation rejected, and a
// GOAWAY now would reject it again, which quic-go's client does not retry.
// Either wait is within a quarter of the grace period.
func (g *generation) goAway(qc *quic.Conn) {
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
			// Shutdown returns once the connection has ended: the client
			// closed it, or the drain's deadline did.
			c.srv.Shutdown(context.Background())
		})
	})
}

// minFirstRequestWait is the least time a new connection of a retired
// generation is given to send its first request before its GOAWAY goes out
// anyway; round trips on a loopback or a LAN are far shorter than the time
// a busy client may take to send it.
const minFirstRequestWait = 100 * time.Millisecond

// requestWait is how long an idle connection keeps its GOAWAY back waiting
// for a request (see goAway).
func requestWait(qc *quic.Conn, served bool, grace time.Duration) time.Duration {
	st := qc.ConnectionStats()
	pto := st.SmoothedRTT + max(4*st.MeanDeviation, time.Millisecond)
	wait := 2 * pto
	if !served {
		wait = max(4*pto, minFirstRequestWait)
	}
	return min(wait, grace/4)
}
