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
	qc      *quic.Conn
	srv     *http3.Server
	serving chan struct{} // closed once srv serves qc
	request chan struct{} // closed when qc's first request reaches the handler

	requestOnce sync.Once
	goAwayOnce  sync.Once
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
	c := &conn{qc: qc, serving: make(chan struct{}), request: make(chan struct{})}
	handler := s.Handler
	if handler == nil {
		handler = http.DefaultServeMux
	}
	c.srv = &http3.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c.requestOnce.Do(func() { close(c.request) })
			handler.ServeHTTP(w, r)
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
// must not block. A connection that has not yet carried a request keeps it
// back until its first request arrives, for a few round trips at most: it
// is most likely a client's new connection to retry a request that an
// older generation rejected, and quic-go's client retries only once.
func (g *generation) goAway(qc *quic.Conn) {
	c := g.conn(qc)
	c.goAwayOnce.Do(func() {
		wait := firstRequestWait(qc, g.s.grace())
		g.s.running.Go(func() {
			select {
			case <-c.serving:
			case <-qc.Context().Done():
				return
			}
			t := time.NewTimer(wait)
			defer t.Stop()
			select {
			case <-c.request:
			case <-t.C:
			case <-qc.Context().Done():
				return
			}
			// Shutdown returns once the connection has ended: the client
			// closed it, or the drain's deadline did.
			c.srv.Shutdown(context.Background())
		})
	})
}

// minFirstRequestWait is the least time a new connection of a retired
// generation is given to send its first request; round trips on a loopback
// or a LAN are far shorter than the time a busy client may take to send it.
const minFirstRequestWait = 100 * time.Millisecond

// firstRequestWait is how long a connection that has carried no request
// yet keeps its GOAWAY back: a few of its probe timeouts (RFC 9002,
// section 6.2.1), within a quarter of the grace period.
func firstRequestWait(qc *quic.Conn, grace time.Duration) time.Duration {
	st := qc.ConnectionStats()
	pto := st.SmoothedRTT + max(4*st.MeanDeviation, time.Millisecond)
	return min(max(4*pto, minFirstRequestWait), grace/4)
}
