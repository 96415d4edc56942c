// Command reload demonstrates listener reloads on a pooled QUIC transport:
// while IPv4 and IPv6 clients keep handshaking, the server replaces its
// listener (and TLS configuration) every few milliseconds, and not one
// handshake fails, because the socket never closes and every handshake is
// handed to the newest listener.
//
//	go run ./examples/reload [-duration 5s] [-clients 4] [-reload 20ms] [-split]
//
// It exits with status 1 if any handshake or echo failed, if a served
// address family had no successful handshake, or if the pool opened more
// sockets than the transport needs.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/udppool/udppool"
	"github.com/udppool/udppool/udppooltest/testca"
)

// alpn is the application protocol of the echo service; the pool routes
// handshakes among listeners by it.
const alpn = "udppool-echo"

// dialTimeout bounds one client round trip. Loopback handshakes take
// milliseconds, so hitting it means a handshake was lost, not slow.
const dialTimeout = 5 * time.Second

func main() {
	var cfg config
	flag.StringVar(&cfg.listen, "listen", ":0", "UDP address the server listens on (network \"udp\")")
	flag.DurationVar(&cfg.duration, "duration", 5*time.Second, "how long the clients run")
	flag.IntVar(&cfg.clients, "clients", 4, "concurrent clients per address family")
	flag.DurationVar(&cfg.reload, "reload", 20*time.Millisecond, "interval between listener reloads (0: never)")
	flag.BoolVar(&cfg.split, "split", false, "serve a wildcard from separate IPv4 and IPv6 sockets")
	flag.Parse()

	// Ctrl-C ends the run early but still prints the results.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	res, err := run(ctx, cfg, os.Stdout)
	stop()
	if err != nil {
		log.Fatal(err)
	}
	if err := res.check(); err != nil {
		fmt.Println("FAIL:", err)
		os.Exit(1)
	}
	fmt.Println("ok")
}

type config struct {
	listen   string
	duration time.Duration
	clients  int
	reload   time.Duration
	split    bool
}

// family is one address family the clients use, with its counters.
type family struct {
	name   string     // "IPv4" or "IPv6"
	dst    netip.Addr // server address the clients dial
	local  netip.Addr // address the client sockets bind
	ok     atomic.Int64
	failed atomic.Int64 // handshakes that did not complete
	echo   atomic.Int64 // round trips that failed after the handshake
}

// result is what a run observed.
type result struct {
	families []*family
	reloads  int
	sockets  int // distinct sockets seen in the pool during the run
	want     int // sockets the transport needs: 1, or 2 for split-stack
}

// check returns why the run failed, or nil.
func (r *result) check() error {
	var errs []error
	for _, f := range r.families {
		if n := f.failed.Load(); n > 0 {
			errs = append(errs, fmt.Errorf("%d %s handshakes failed", n, f.name))
		}
		if n := f.echo.Load(); n > 0 {
			errs = append(errs, fmt.Errorf("%d %s echoes failed", n, f.name))
		}
		if f.ok.Load() == 0 {
			errs = append(errs, fmt.Errorf("no %s handshake succeeded", f.name))
		}
	}
	if len(r.families) == 0 {
		errs = append(errs, errors.New("no address family to test"))
	}
	if r.sockets != r.want {
		errs = append(errs, fmt.Errorf("%d sockets opened, want %d", r.sockets, r.want))
	}
	return errors.Join(errs...)
}

// print writes the results as a table.
func (r *result) print(w io.Writer) {
	fmt.Fprintf(w, "%-20s", "")
	for _, f := range r.families {
		fmt.Fprintf(w, "%8s", f.name)
	}
	fmt.Fprintln(w)
	row := func(label string, get func(*family) int64) {
		fmt.Fprintf(w, "%-20s", label)
		for _, f := range r.families {
			fmt.Fprintf(w, "%8d", get(f))
		}
		fmt.Fprintln(w)
	}
	row("handshakes ok", func(f *family) int64 { return f.ok.Load() })
	row("handshakes failed", func(f *family) int64 { return f.failed.Load() })
	row("echoes failed", func(f *family) int64 { return f.echo.Load() })
	fmt.Fprintf(w, "%-20s%8d\n", "reloads", r.reloads)
	fmt.Fprintf(w, "%-20s%8d (want %d)\n", "sockets opened", r.sockets, r.want)
}

// run serves, reloads and runs the clients for cfg.duration (or until ctx
// ends), then closes everything and prints the results to out.
func run(ctx context.Context, cfg config, out io.Writer) (*result, error) {
	var popts []udppool.Option
	if cfg.split {
		// Only when asked: false would override the platform default.
		popts = append(popts, udppool.WithSplitStack(true))
	}
	pool := udppool.New(popts...)
	defer pool.Close()

	tr, err := pool.Transport(ctx, "udp", cfg.listen)
	if err != nil {
		return nil, err
	}
	// The clients trust one throw-away CA (testca, since this is a
	// demonstration, not a server to deploy); every reload presents a new
	// certificate from it in a new tls.Config, as a real reload would.
	ca, err := testca.NewCA()
	if err != nil {
		tr.Close()
		return nil, err
	}
	srv := &server{tr: tr, ca: ca, seen: make(map[socketID]bool)}
	if err := srv.reload(); err != nil {
		tr.Close()
		return nil, err
	}
	res := &result{families: families(tr.Keys()), want: len(tr.Keys())}
	fmt.Fprintf(out, "server on %s, %d clients per family (%s), reload every %v, for %v\n",
		keyList(tr.Keys()), cfg.clients, familyNames(res.families), cfg.reload, cfg.duration)

	// The clients run for cfg.duration; the reloads run until they are done.
	clientCtx, cancel := context.WithTimeout(ctx, cfg.duration)
	defer cancel()
	var clients sync.WaitGroup
	var errLog errorLog
	for _, f := range res.families {
		for range cfg.clients {
			clients.Go(func() { f.client(clientCtx, ca, netip.AddrPortFrom(f.dst, port(tr)), &errLog) })
		}
	}
	clientsDone := make(chan struct{})
	go func() {
		clients.Wait()
		close(clientsDone)
	}()

	reloadErr := srv.reloadEvery(cfg.reload, clientsDone, pool)
	<-clientsDone
	srv.sample(pool)

	// Shut down: no new connections, then the transport, which closes any
	// connection a client left open; then wait for the handlers.
	srv.close()
	tr.Close()
	srv.wg.Wait()

	res.reloads = srv.reloads
	res.sockets = len(srv.seen)
	res.print(out)
	errLog.print(out)
	return res, reloadErr
}

// server is the echo service: the current listener of a pooled transport
// and every goroutine serving connections of this and earlier listeners.
type server struct {
	tr      *udppool.Transport
	ca      *testca.CA
	ln      *udppool.Listener // current
	reloads int
	wg      sync.WaitGroup // accept loops and connection handlers

	seen map[socketID]bool // sockets seen in the pool
}

// socketID tells sockets apart: a socket closed and bound again under the
// same key has a new opening time.
type socketID struct {
	key    udppool.Key
	opened time.Time
}

// reload opens a listener with a new TLS configuration and only then closes
// the old one, so that there is never a moment without a listener. The old
// listener's connections stay open and keep being served.
func (s *server) reload() error {
	cert, err := s.ca.Issue(testca.Leaf{Names: []string{"localhost", "127.0.0.1", "::1"}})
	if err != nil {
		return err
	}
	tlsConf := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{alpn}, MinVersion: tls.VersionTLS13}
	ln, err := s.tr.Listen(tlsConf, &quic.Config{HandshakeIdleTimeout: dialTimeout})
	if err != nil {
		return err
	}
	s.wg.Go(func() { s.accept(ln) })
	if s.ln != nil {
		s.ln.Close()
		s.reloads++
	}
	s.ln = ln
	return nil
}

// reloadEvery reloads at each tick (never, if every is not positive) until
// done is closed, sampling the pool's sockets as it goes. It stops at the
// first failed reload.
func (s *server) reloadEvery(every time.Duration, done <-chan struct{}, pool *udppool.Pool) error {
	var tick <-chan time.Time // nil: never fires
	if every > 0 {
		t := time.NewTicker(every)
		defer t.Stop()
		tick = t.C
	}
	for {
		s.sample(pool)
		select {
		case <-done:
			return nil
		case <-tick:
			if err := s.reload(); err != nil {
				return fmt.Errorf("reload %d: %w", s.reloads+1, err)
			}
		}
	}
}

// sample records the sockets the pool holds now.
func (s *server) sample(pool *udppool.Pool) {
	for _, st := range pool.Stats() {
		s.seen[socketID{st.Key, st.Opened}] = true
	}
}

func (s *server) close() {
	if s.ln != nil {
		s.ln.Close()
	}
}

// accept serves the connections of one listener until it is closed.
func (s *server) accept(ln *udppool.Listener) {
	for {
		conn, err := ln.Accept(context.Background())
		if err != nil {
			return // closed by a reload; its connections live on
		}
		s.wg.Go(func() { s.serve(conn) })
	}
}

// serve echoes every stream of conn until the connection closes.
func (s *server) serve(conn *quic.Conn) {
	for {
		str, err := conn.AcceptStream(context.Background())
		if err != nil {
			return
		}
		s.wg.Go(func() {
			io.Copy(str, str) // until the client's FIN or the connection ends
			str.Close()
		})
	}
}

// client runs round trips until ctx ends, from one socket of its own.
func (f *family) client(ctx context.Context, ca *testca.CA, dst netip.AddrPort, errLog *errorLog) {
	uc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(f.local, 0)))
	if err != nil {
		f.failed.Add(1)
		errLog.add(f.name, "client socket", err)
		return
	}
	qt := &quic.Transport{Conn: uc}
	defer func() {
		qt.Close()
		uc.Close() // quic-go closes only sockets it opened itself
	}()
	tlsConf := &tls.Config{RootCAs: ca.Roots(), ServerName: "localhost", NextProtos: []string{alpn}, MinVersion: tls.VersionTLS13}
	addr := net.UDPAddrFromAddrPort(dst)
	for i := 0; ctx.Err() == nil; i++ {
		f.roundTrip(qt, addr, tlsConf, fmt.Sprintf("%s round trip %d", f.name, i), errLog)
	}
}

// roundTrip handshakes, sends msg on a stream, checks the echo and closes
// the connection. It does not take the run's context: a round trip started
// before the end runs to completion instead of counting as a failure.
func (f *family) roundTrip(qt *quic.Transport, addr net.Addr, tlsConf *tls.Config, msg string, errLog *errorLog) {
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	conn, err := qt.Dial(ctx, addr, tlsConf, &quic.Config{HandshakeIdleTimeout: dialTimeout})
	if err != nil {
		f.failed.Add(1)
		errLog.add(f.name, "handshake", err)
		return
	}
	defer conn.CloseWithError(0, "done")
	if err := echo(ctx, conn, msg); err != nil {
		f.echo.Add(1)
		errLog.add(f.name, "echo", err)
		return
	}
	f.ok.Add(1)
}

// echo sends msg on a new stream, closes the sending side and expects msg
// back.
func echo(ctx context.Context, conn *quic.Conn, msg string) error {
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok {
		str.SetDeadline(d)
	}
	if _, err := io.WriteString(str, msg); err != nil {
		return err
	}
	str.Close() // FIN: the server's copy ends
	got, err := io.ReadAll(str)
	if err != nil {
		return err
	}
	if string(got) != msg {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// errorLog keeps the first few errors, for the report.
type errorLog struct {
	mu    sync.Mutex
	lines []string
	more  int
}

func (l *errorLog) add(fam, what string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) < 5 {
		l.lines = append(l.lines, fmt.Sprintf("%s %s: %v", fam, what, err))
	} else {
		l.more++
	}
}

func (l *errorLog) print(w io.Writer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		fmt.Fprintln(w, "error:", line)
	}
	if l.more > 0 {
		fmt.Fprintf(w, "error: ... and %d more\n", l.more)
	}
}

// families returns the address families that both the server's sockets
// and this host serve, with the address to dial for each: the socket's own
// address, or loopback for a wildcard.
func families(keys []udppool.Key) []*family {
	var v4, v6 netip.Addr
	for _, k := range keys {
		a := k.Addr.Addr()
		switch {
		case k.Network == "udp" && a.IsUnspecified(): // dual-stack wildcard
			v4, v6 = netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()
		case a.Is4() && a.IsUnspecified():
			v4 = netip.MustParseAddr("127.0.0.1")
		case a.Is4():
			v4 = a
		case a.IsUnspecified():
			v6 = netip.IPv6Loopback()
		default:
			v6 = a
		}
	}
	var fams []*family
	if v4.IsValid() && canBind(localFor(v4)) {
		fams = append(fams, &family{name: "IPv4", dst: v4, local: localFor(v4)})
	}
	if v6.IsValid() && canBind(localFor(v6)) {
		fams = append(fams, &family{name: "IPv6", dst: v6, local: localFor(v6)})
	}
	return fams
}

// canBind reports whether a client socket can bind local, so that a host
// without the family (no ::1, say) skips it instead of failing every
// request. (Not golang.org/x/net/nettest, which links the testing package
// into the program.)
func canBind(local netip.Addr) bool {
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// localFor returns the address a client socket binds to reach dst: the
// loopback of its family for a loopback server, else the family's wildcard.
func localFor(dst netip.Addr) netip.Addr {
	switch {
	case dst.IsLoopback():
		return dst
	case dst.Is4():
		return netip.IPv4Unspecified()
	default:
		return netip.IPv6Unspecified()
	}
}

func port(tr *udppool.Transport) uint16 {
	return uint16(tr.LocalAddr().(*net.UDPAddr).Port)
}

func keyList(keys []udppool.Key) string {
	s := make([]string, len(keys))
	for i, k := range keys {
		s[i] = k.String()
	}
	return strings.Join(s, " + ")
}

func familyNames(fams []*family) string {
	names := make([]string, len(fams))
	for i, f := range fams {
		names[i] = f.name
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}
