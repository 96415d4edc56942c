// Command http3 serves HTTP/3 from a pooled UDP socket and, with -reload,
// replaces its listener, certificate and http3.Server at an interval
// without closing the port or cutting requests in flight.
//
//	go run ./examples/http3 -listen :4433 -reload 500ms
//
// It serves the certificate and key of -cert and -key (PEM files, read
// anew at each reload, so a renewed certificate is picked up), or else a
// self-signed certificate for localhost that is made afresh at each start
// and reload: try it with an HTTP/3 client such as curl --http3-only -k
// https://localhost:4433/. On SIGINT or SIGTERM it stops gracefully and
// prints the connections it served per address family.
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
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/udppool/udppool"
)

// shutdownGrace is how long requests in flight may take to finish at exit
// before their connections are closed.
const shutdownGrace = 5 * time.Second

func main() {
	o := options{out: os.Stdout}
	flag.StringVar(&o.listen, "listen", ":4433", "UDP address to serve on (network \"udp\")")
	flag.DurationVar(&o.reload, "reload", 0, "re-create the listener at this interval (0: never)")
	flag.DurationVar(&o.duration, "duration", 0, "stop after this long (0: run until interrupted)")
	flag.StringVar(&o.certFile, "cert", "", "PEM certificate chain file (default: a self-signed certificate for localhost)")
	flag.StringVar(&o.keyFile, "key", "", "PEM private key file for -cert")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o)
	stop()
	if err != nil {
		log.Fatal(err)
	}
}

type options struct {
	listen   string
	reload   time.Duration
	duration time.Duration
	certFile string // with keyFile: PEM files, read at each reload
	keyFile  string
	out      io.Writer

	// Hooks for tests; nil in the command.
	ready   func(port int)                  // called once serving
	newCert func() (tls.Certificate, error) // default: certSource(certFile, keyFile)
	handler http.Handler                    // default: hello
}

// run serves until ctx ends (or o.duration passes), then shuts down and
// prints a summary to o.out.
func run(ctx context.Context, o options) error {
	if o.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}
	if o.newCert == nil {
		var err error
		if o.newCert, err = certSource(o.certFile, o.keyFile); err != nil {
			return err
		}
	}
	if o.handler == nil {
		o.handler = http.HandlerFunc(hello)
	}

	pool := udppool.New()
	defer pool.Close()
	tr, err := pool.Transport(ctx, "udp", o.listen)
	if err != nil {
		return err
	}
	defer tr.Close()

	s := &site{tr: tr, newCert: o.newCert, handler: o.handler, servers: make(map[*http3.Server]bool)}
	if err := s.reload(); err != nil {
		return err
	}
	port := tr.LocalAddr().(*net.UDPAddr).Port
	// The key hash lets a browser trust the self-signed certificates:
	// chromium --origin-to-force-quic-on=localhost:4433 --ignore-certificate-errors-spki-list=HASH
	fmt.Fprintf(o.out, "ready https://%s/ (socket %s, spki %s)\n", urlHost(o.listen, port), keyList(tr.Keys()), s.spki)
	if o.ready != nil {
		o.ready(port)
	}

	var tick <-chan time.Time // nil: never fires
	if o.reload > 0 {
		t := time.NewTicker(o.reload)
		defer t.Stop()
		tick = t.C
	}
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick:
			// A failed reload keeps the current listener serving.
			if err := s.reload(); err != nil {
				fmt.Fprintf(o.out, "reload failed: %v\n", err)
			}
		}
	}

	fmt.Fprintf(o.out, "stopping: %v\n", context.Cause(ctx))
	s.shutdown()
	fmt.Fprintf(o.out, "%-20s %d\n", "connections IPv4", s.conns[ipv4].Load())
	fmt.Fprintf(o.out, "%-20s %d\n", "connections IPv6", s.conns[ipv6].Load())
	fmt.Fprintf(o.out, "%-20s %d\n", "reloads", s.reloads)
	return nil
}

// Address families, as indices of site.conns.
const (
	ipv4 = iota
	ipv6
)

// familyOf classifies a peer address; IPv4 clients of a dual-stack socket
// appear as IPv4-mapped IPv6 addresses.
func familyOf(a netip.Addr) int {
	if a.Unmap().Is4() {
		return ipv4
	}
	return ipv6
}

// site is the HTTP/3 service: one http3.Server per listener generation, all
// on one pooled transport.
type site struct {
	tr      *udppool.Transport
	newCert func() (tls.Certificate, error)
	handler http.Handler

	conns [2]atomic.Int64 // connections served, by family

	// Used by the goroutine of run only.
	ln      *udppool.Listener // current
	srv     *http3.Server     // current
	spki    string            // hash of the current certificate's key
	reloads int
	wg      sync.WaitGroup // ServeListener calls and drains

	mu      sync.Mutex
	servers map[*http3.Server]bool // generations that still have connections
}

// reload starts a new generation: a fresh certificate and tls.Config, a
// new listener and a new http3.Server on it; only then does it stop the
// old listener. New handshakes go to the newest listener from the moment it
// opens, and the port stays bound throughout. The old http3.Server keeps
// serving the connections it already has; once the last of them has
// closed, it is dropped.
func (s *site) reload() error {
	cert, err := s.newCert()
	if err != nil {
		return err
	}
	if s.spki, err = spkiHash(cert); err != nil {
		return err
	}
	// ConfigureTLSConfig sets the h3 ALPN, by which the pool routes
	// handshakes to this listener.
	tlsConf := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	ln, err := s.tr.Listen(http3.ConfigureTLSConfig(tlsConf), nil)
	if err != nil {
		return err
	}
	srv := &http3.Server{Handler: s.handler, ConnContext: s.count}
	s.wg.Go(func() {
		// After the listener closes this returns http.ErrServerClosed,
		// but the server still serves the connections it accepted.
		if err := srv.ServeListener(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Printf("serving HTTP/3: %v", err)
		}
	})
	s.mu.Lock()
	s.servers[srv] = true
	s.mu.Unlock()
	if old, oldSrv := s.ln, s.srv; old != nil {
		// Stop the old listener, not its server: closing the server
		// would abort its requests in flight. Shutdown returns once
		// the old generation's connections have all closed (its
		// clients leave, or the exit closes them), and only then is
		// its server dropped.
		s.wg.Go(func() {
			old.Shutdown(context.Background())
			s.mu.Lock()
			delete(s.servers, oldSrv)
			s.mu.Unlock()
			oldSrv.Close()
		})
		s.reloads++
	}
	s.ln, s.srv = ln, srv
	return nil
}

// count is the servers' ConnContext: it runs once per connection, so it
// counts handshakes rather than requests.
func (s *site) count(ctx context.Context, c *quic.Conn) context.Context {
	if a, ok := c.RemoteAddr().(*net.UDPAddr); ok {
		s.conns[familyOf(a.AddrPort().Addr())].Add(1)
	}
	return ctx
}

// shutdown stops new connections, then lets every generation's server
// finish its requests (up to shutdownGrace) and close its connections.
func (s *site) shutdown() {
	s.ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	var wg sync.WaitGroup
	s.mu.Lock()
	for srv := range s.servers {
		wg.Go(func() { srv.Shutdown(ctx) })
	}
	s.mu.Unlock()
	wg.Wait()
	s.wg.Wait()
}

// hello answers every request, naming the client's address family.
func hello(w http.ResponseWriter, r *http.Request) {
	fam := "IPv6"
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil && familyOf(ap.Addr()) == ipv4 {
		fam = "IPv4"
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "hello from udppool over HTTP/3, %s\n", fam)
}

// urlHost returns the host:port for the URL of the listen address: the
// host as given, or localhost for a wildcard.
func urlHost(listen string, port int) string {
	host, _, err := net.SplitHostPort(listen)
	if err != nil || host == "" {
		host = "localhost"
	} else if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
		host = "localhost"
	}
	return net.JoinHostPort(host, fmt.Sprint(port))
}

func keyList(keys []udppool.Key) string {
	s := make([]string, len(keys))
	for i, k := range keys {
		s[i] = k.String()
	}
	return strings.Join(s, " + ")
}
