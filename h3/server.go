// Package h3 serves HTTP/3 on a pooled udppool.Transport and reloads its
// TLS and QUIC configuration without closing the port or losing a request.
//
// Each Reload opens a new epoch: a logical listener with the new
// configuration, which takes every new handshake from then on. The
// epoch it replaces is retired: each of its connections gets a GOAWAY
// frame, requests in flight finish, and clients that follow RFC 9114 close
// their connections as soon as nothing is left on them (quic-go's client
// does so at once when idle). Connections still open when the grace period
// ends are closed with H3_NO_ERROR.
//
// Requests that a GOAWAY overtakes are refused with H3_REQUEST_REJECTED
// before the handler sees them, which tells the client that it may send
// them again on a new connection (quic-go's http3.Transport does, once).
// So that few are, and none twice, each connection has an http3.Server of
// its own and gets its GOAWAY while a request is in the handler (at once
// if one is, else with the connection's next request, or after a few
// round trips without one: 100 ms at least, a second on a connection that
// has not yet carried a request), and that request's response waits until
// the GOAWAY has a few milliseconds' lead: the client reads the GOAWAY
// first, closes the connection after the response, and sends its next
// request on a new connection, where it was never rejected.
package h3

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/udppool/udppool"
)

// DefaultGrace is the grace period of a retired epoch when
// Server.Grace is zero.
const DefaultGrace = 30 * time.Second

// A Server serves HTTP/3 on a pooled Transport, one epoch per Reload.
// Set its fields before the first Reload and do not change them after.
type Server struct {
	// Transport is the pooled transport to serve on. The Server opens
	// listeners on it and never closes it. A Transport of several sockets
	// per address (udppool.WithSockets, for servers that outgrow one
	// socket's receive loop) is served as one: its listeners take the
	// connections of every socket.
	Transport *udppool.Transport

	// Handler answers requests; nil means http.DefaultServeMux. A Reload
	// with WithHandler replaces it for the connections of that epoch
	// and later ones, while the connections of retired epochs keep
	// the handler they were served with until they have drained.
	Handler http.Handler

	// Grace bounds the drain of a retired epoch: connections still
	// open when it has passed since the Reload that retired them are
	// closed with H3_NO_ERROR, and requests still running on them are
	// lost. Zero means DefaultGrace.
	Grace time.Duration

	// Port is the UDP port that SetQUICHeaders announces; zero means the
	// Transport's.
	Port int

	// Drained, if not nil, is called on a goroutine of its own when a
	// retired epoch's connections have all ended, with how they did.
	Drained func(udppool.DrainStats)

	// The settings of every connection, as in http3.Server.
	MaxHeaderBytes     int
	IdleTimeout        time.Duration
	EnableDatagrams    bool
	AdditionalSettings map[uint64]uint64
	ConnContext        func(ctx context.Context, c *quic.Conn) context.Context
	Logger             *slog.Logger

	reloadMu sync.Mutex   // one Reload at a time
	handler  http.Handler // guarded by reloadMu; the latest WithHandler's

	mu      sync.Mutex
	cur     *epoch // serving new connections; nil before the first Reload and after Shutdown
	closed  bool
	stop    context.Context // ends every drain at once
	cutAll  context.CancelFunc
	running sync.WaitGroup // epochs, their connections and drains
}

// A ReloadOption changes what a Reload's epoch serves besides its
// TLS and QUIC configuration.
type ReloadOption func(*reloadOptions)

type reloadOptions struct {
	handler http.Handler
}

// WithHandler makes the new epoch, and those of later Reloads that do
// not name one, answer requests with h instead of Server.Handler, so that
// a configuration reload can change routes as well as certificates.
// Requests on connections of the epochs it retires keep their
// handler while they drain. A nil h is ignored.
func WithHandler(h http.Handler) ReloadOption {
	return func(o *reloadOptions) { o.handler = h }
}

// Reload starts serving with tlsConf and quicConf (nil for quic-go's
// defaults): the first call starts the Server, every later one replaces the
// current epoch. It returns once new handshakes go to the new
// epoch; the one it replaced drains in the background (see Grace and
// Drained). If it fails, the current epoch keeps serving.
//
// tlsConf is configured for HTTP/3 as http3.ConfigureTLSConfig does. With
// quicConf.Allow0RTT, connections are served from their first flight (see
// udppool's ListenEarly). WithHandler changes the handler too; the
// Server's other fields must not change after the first Reload.
func (s *Server) Reload(tlsConf *tls.Config, quicConf *quic.Config, opts ...ReloadOption) error {
	if s.Transport == nil {
		return errors.New("h3: Server.Transport not set")
	}
	if tlsConf == nil {
		return errors.New("h3: Reload with a nil tls.Config")
	}
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	if s.isClosed() {
		return http.ErrServerClosed
	}
	tlsConf = http3.ConfigureTLSConfig(tlsConf)
	if s.EnableDatagrams {
		if quicConf == nil {
			quicConf = &quic.Config{}
		} else {
			quicConf = quicConf.Clone()
		}
		quicConf.EnableDatagrams = true
	}
	var ln *udppool.Listener
	var err error
	if quicConf != nil && quicConf.Allow0RTT {
		ln, err = s.Transport.ListenEarly(tlsConf, quicConf)
	} else {
		ln, err = s.Transport.Listen(tlsConf, quicConf)
	}
	if err != nil {
		return fmt.Errorf("h3: reload: %w", err)
	}
	var o reloadOptions
	for _, opt := range opts {
		opt(&o)
	}
	handler := http.Handler(http.DefaultServeMux)
	for _, h := range []http.Handler{s.Handler, s.handler, o.handler} { // the last set wins
		if h != nil {
			handler = h
		}
	}
	g := &epoch{s: s, ln: ln, handler: handler, conns: make(map[*quic.Conn]*conn)}

	s.mu.Lock()
	if s.closed { // Shutdown or Close came in between
		s.mu.Unlock()
		ln.Close()
		return http.ErrServerClosed
	}
	if s.stop == nil {
		s.stop, s.cutAll = context.WithCancel(context.Background())
	}
	old := s.cur
	s.cur = g
	if o.handler != nil {
		s.handler = o.handler
	}
	s.running.Go(g.serve)
	if old != nil {
		ctx, cancel := context.WithTimeout(s.stop, s.grace())
		s.running.Go(func() {
			defer cancel()
			old.retire(ctx)
		})
	}
	s.mu.Unlock()
	return nil
}

func (s *Server) grace() time.Duration {
	if s.Grace > 0 {
		return s.Grace
	}
	return DefaultGrace
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Shutdown retires the current epoch as a Reload would, without a
// successor, and waits until every epoch has drained or ctx ends. It
// then closes the connections left, with H3_NO_ERROR, and returns ctx's
// error. Epochs retired earlier keep their own grace periods within
// ctx. After Shutdown, Reload fails with http.ErrServerClosed.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	cur := s.cur
	s.cur = nil
	if s.stop == nil { // never served
		s.mu.Unlock()
		return nil
	}
	if cur != nil {
		cctx, cancel := context.WithCancel(ctx)
		stop := context.AfterFunc(s.stop, cancel)
		s.running.Go(func() {
			defer cancel()
			defer stop()
			cur.retire(cctx)
		})
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.running.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.cutAll()
		<-done
		return ctx.Err()
	}
}

// Close closes every connection at once, with H3_NO_ERROR, and waits until
// the Server's goroutines have ended. Requests in flight are lost: use
// Shutdown to let them finish.
func (s *Server) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// SetQUICHeaders adds the Alt-Svc header that announces HTTP/3 on the
// Server's port to hdr, for responses sent over TCP, as
// http3.Server.SetQUICHeaders does. It fails with http3.ErrNoAltSvcPort
// while the Server is not serving.
func (s *Server) SetQUICHeaders(hdr http.Header) error {
	s.mu.Lock()
	serving := s.cur != nil
	s.mu.Unlock()
	if !serving {
		return http3.ErrNoAltSvcPort
	}
	port := s.Port
	if port == 0 {
		a, ok := s.Transport.LocalAddr().(*net.UDPAddr)
		if !ok {
			return http3.ErrNoAltSvcPort
		}
		port = a.Port
	}
	hdr.Add("Alt-Svc", fmt.Sprintf(`%s=":%d"; ma=2592000`, http3.NextProtoH3, port))
	return nil
}
