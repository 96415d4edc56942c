// Command http3 serves HTTP/3 from a pooled UDP socket with package h3 and
// reloads its certificate without closing the port or losing a request:
// on SIGHUP, and with -reload at an interval.
//
//	go run ./examples/http3 -listen :4433 -cert cert.pem -key key.pem -reload 1m -drain 10s
//
// Each reload reads -cert and -key (PEM) from disk again, so a renewed
// certificate is picked up; without them it makes a new self-signed
// certificate for localhost, for the same key. The connections of
// the replaced certificate get a GOAWAY and those still open after -drain
// are closed. Try it with an HTTP/3 client such as curl --http3-only -k
// https://localhost:4433/. On SIGINT or SIGTERM it stops gracefully and
// prints the connections it served per address family.
package main

import (
	"context"
	"crypto/tls"
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
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/udppool/udppool"
	"github.com/udppool/udppool/h3"
)

// shutdownGrace is how long requests in flight may take to finish at exit
// before their connections are closed.
const shutdownGrace = 5 * time.Second

func main() {
	o := options{out: os.Stdout}
	flag.StringVar(&o.listen, "listen", ":4433", "UDP address to serve on (network \"udp\")")
	flag.StringVar(&o.certFile, "cert", "", "PEM certificate chain, read again at each reload (default: self-signed)")
	flag.StringVar(&o.keyFile, "key", "", "PEM private key of -cert")
	flag.DurationVar(&o.reload, "reload", 0, "also reload at this interval (0: on SIGHUP only)")
	flag.DurationVar(&o.drain, "drain", 10*time.Second, "grace period of the connections of a replaced certificate")
	flag.DurationVar(&o.duration, "duration", 0, "stop after this long (0: run until interrupted)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	o.hup = hup
	err := run(ctx, o)
	stop()
	if err != nil {
		log.Fatal(err)
	}
}

type options struct {
	listen            string
	certFile, keyFile string
	reload            time.Duration
	drain             time.Duration
	duration          time.Duration
	out               io.Writer
	hup               <-chan os.Signal // reload requests

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

	var conns [2]atomic.Int64 // by family
	srv := &h3.Server{
		Transport: tr,
		Handler:   o.handler,
		Grace:     o.drain,
		// Called once per connection: it counts handshakes, not requests.
		ConnContext: func(ctx context.Context, c *quic.Conn) context.Context {
			if a, ok := c.RemoteAddr().(*net.UDPAddr); ok {
				conns[familyOf(a.AddrPort().Addr())].Add(1)
			}
			return ctx
		},
		Drained: func(ds udppool.DrainStats) {
			fmt.Fprintf(o.out, "epoch %d drained: %d connections, %d ended by themselves, %d on GOAWAY, %d at the deadline\n",
				ds.Epoch, ds.Conns, ds.EndedByThemselves, ds.EndedByGoAway, ds.EndedByDeadline)
		},
	}
	cert, err := o.newCert()
	if err != nil {
		return err
	}
	spki, err := spkiHash(cert)
	if err != nil {
		return err
	}
	if err := srv.Reload(serverConfig(cert), nil); err != nil {
		return err
	}
	port := tr.LocalAddr().(*net.UDPAddr).Port
	// The key hash lets a browser trust a self-signed certificate:
	// chromium --origin-to-force-quic-on=localhost:4433 --ignore-certificate-errors-spki-list=HASH
	fmt.Fprintf(o.out, "ready https://%s/ (socket %s, spki %s)\n", urlHost(o.listen, port), keyList(tr.Keys()), spki)
	if o.ready != nil {
		o.ready(port)
	}

	var tick <-chan time.Time // nil: never fires
	if o.reload > 0 {
		t := time.NewTicker(o.reload)
		defer t.Stop()
		tick = t.C
	}
	reloads := 0
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick:
		case <-o.hup:
		}
		// A failed reload keeps the current certificate serving.
		cert, err := o.newCert()
		if err == nil {
			err = srv.Reload(serverConfig(cert), nil)
		}
		if err != nil {
			fmt.Fprintf(o.out, "reload failed: %v\n", err)
			continue
		}
		reloads++
	}

	fmt.Fprintf(o.out, "stopping: %v\n", context.Cause(ctx))
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		fmt.Fprintf(o.out, "shutdown: %v\n", err)
	}
	fmt.Fprintf(o.out, "%-20s %d\n", "connections IPv4", conns[ipv4].Load())
	fmt.Fprintf(o.out, "%-20s %d\n", "connections IPv6", conns[ipv6].Load())
	fmt.Fprintf(o.out, "%-20s %d\n", "reloads", reloads)
	return nil
}

// serverConfig is the TLS configuration of an epoch.
func serverConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
}

// Address families, as indices of the connection counts.
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
