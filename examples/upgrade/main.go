// Command upgrade is an HTTP/3 server, with HTTPS over TCP (HTTP/1.1 and
// HTTP/2, announcing HTTP/3 by Alt-Svc) on the same port, that upgrades
// itself without dropping a connection: on SIGHUP it starts
// os.Executable() (typically a new build of itself) as its successor,
// hands the UDP and TCP sockets over, lets its own connections finish
// within -drain, and exits 0.
//
//	go build -o /tmp/h3up ./examples/upgrade && /tmp/h3up -listen :4433
//	curl -k https://localhost:4433/                # pid N gen 1 (TCP)
//	kill -HUP <pid>                                # ready ... pid M gen 2
//	curl --http3-only -k https://localhost:4433/   # pid M gen 2 (where curl has HTTP/3)
//
// -sockets N serves the UDP address from N sockets, each with its own QUIC
// transport, steered by connection ID (udppool.WithSockets); -server-id
// HEX puts a fleet's QUIC-LB server ID into every connection ID. Both hold
// across upgrades: give the successor the same flags (os.Executable() is
// started with this process's arguments).
//
// Each response names the serving process and its generation. Every
// generation prints a line starting with "ready" when it serves, to the
// same output, and one starting with "exit" when it leaves. SIGINT and
// SIGTERM drain and exit the same way, without a successor. Signals during
// a drain change nothing (a SIGHUP is refused with a line saying so), and
// a SIGHUP during an upgrade is refused. If the successor dies while this
// process drains, this process serves new connections again, on both
// protocols, and says so in a line starting with "resumed"; its drain goes
// on.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/udppool/udppool"
	"github.com/udppool/udppool/h3"
)

func main() {
	listen := flag.String("listen", ":4433", "UDP address to serve on (network \"udp\")")
	certFile := flag.String("cert", "", "certificate `file` (PEM); a self-signed one if empty")
	keyFile := flag.String("key", "", "private key `file` (PEM) of -cert")
	drain := flag.Duration("drain", 30*time.Second, "grace period of the old process after an upgrade")
	pidFile := flag.String("pidfile", "", "keep a PID `file` naming the serving process (for systemd's PIDFile=)")
	serverID := flag.String("server-id", "", "this host's QUIC-LB server ID, 1-7 octets in `hex` (config rotation 0), carried in every connection ID for a fleet's load balancer")
	sockets := flag.Int("sockets", 1, "serve the UDP address from `N` sockets, each with its own QUIC transport, so that receiving scales over N cores")
	flag.Parse()
	if err := run(*listen, *certFile, *keyFile, *pidFile, *serverID, *sockets, *drain); err != nil {
		log.Fatalf("pid %d: %v", os.Getpid(), err)
	}
}

func run(listen, certFile, keyFile, pidFile, serverID string, sockets int, drain time.Duration) error {
	// The Upgrader comes first: in a successor it receives the
	// predecessor's sockets, which the pool then binds into or takes over.
	// As PID 1 of a container, NewUpgrader stays as the parent of the
	// generations and never returns; under systemd it tells the notify
	// socket which process serves.
	opts := []udppool.UpgradeOption{udppool.WithUpgradeLogger(slog.New(slog.NewTextHandler(os.Stderr, nil)))}
	if pidFile != "" {
		opts = append(opts, udppool.WithPIDFile(pidFile))
	}
	if serverID != "" {
		id, err := hex.DecodeString(serverID)
		if err != nil {
			return fmt.Errorf("-server-id %q: %w", serverID, err)
		}
		sid, err := udppool.NewServerID(0, id)
		if err != nil {
			return fmt.Errorf("-server-id: %w", err)
		}
		opts = append(opts, udppool.WithServerID(sid))
	}
	upg, err := udppool.NewUpgrader(opts...)
	if err != nil {
		return err
	}
	cert, err := certificate(certFile, keyFile)
	if err != nil {
		return err
	}
	pid, gen := os.Getpid(), upg.Generation()
	pool := udppool.New(udppool.WithUpgrader(upg))
	tr, err := pool.Transport(context.Background(), "udp", listen, udppool.WithSockets(sockets))
	if err != nil {
		return err
	}
	// HTTPS over TCP on the same port, in the same hand-over: browsers
	// come this way first and learn of HTTP/3 from Alt-Svc.
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return err
	}
	f := &frontends{
		upg:     upg,
		tr:      tr,
		tcpAddr: net.JoinHostPort(host, strconv.Itoa(tr.LocalAddr().(*net.UDPAddr).Port)),
		cert:    cert,
		hello: func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "pid %d gen %d\n", pid, gen)
		},
		drain:   drain,
		retired: make(chan udppool.DrainStats),
	}
	cur, err := f.serve()
	if err != nil {
		return err
	}
	if err := upg.Ready(); err != nil {
		return err
	}
	fmt.Printf("ready https://%s/ pid %d gen %d\n", tr.LocalAddr(), pid, gen)

	// The signals stay caught until this process exits: one that came
	// during the drain would otherwise kill it (the default action).
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	exit := upg.Exit()
	var resumed <-chan struct{} // set while a successor serves
	var total udppool.DrainStats
	for cur != nil || f.draining > 0 {
		select {
		case sig := <-sigs:
			switch {
			case cur == nil && sig == syscall.SIGHUP:
				fmt.Printf("upgrade refused pid %d gen %d: draining\n", pid, gen)
			case cur == nil:
				fmt.Printf("%v pid %d gen %d: the drain finishes first\n", sig, pid, gen)
			case sig == syscall.SIGHUP:
				go func() {
					// A failed successor changes nothing here: serve on.
					err := upg.Upgrade(context.Background())
					switch {
					case errors.Is(err, udppool.ErrUpgradeInProgress):
						fmt.Printf("upgrade refused pid %d gen %d: an upgrade is in progress\n", pid, gen)
					case err != nil:
						fmt.Printf("upgrade failed pid %d gen %d: %v\n", pid, gen, err)
					}
				}()
			default: // SIGINT, SIGTERM: drain without a successor
				fmt.Printf("draining pid %d gen %d\n", pid, gen)
				f.retire(cur)
				cur, exit = nil, nil
			}
		case <-exit: // the successor takes every new connection
			fmt.Printf("draining pid %d gen %d\n", pid, gen)
			f.retire(cur)
			cur, exit, resumed = nil, nil, upg.Resumed()
		case <-resumed:
			// The successor died: new connections come here again. The
			// drain of the connections retired at the hand-over goes on.
			if cur, err = f.serve(); err != nil {
				fmt.Printf("resume failed pid %d gen %d: %v\n", pid, gen, err)
				resumed = nil
				continue
			}
			fmt.Printf("resumed https://%s/ pid %d gen %d: the successor exited\n", tr.LocalAddr(), pid, gen)
			exit, resumed = upg.Exit(), nil
		case ds := <-f.retired:
			f.draining--
			total.Conns += ds.Conns
			total.EndedByDeadline += ds.EndedByDeadline
		}
	}
	tr.Close()
	if err := upg.Stop(); err != nil && !errors.Is(err, udppool.ErrUpgraderStopped) {
		return err
	}
	fmt.Printf("exit pid %d gen %d: %d of %d connections closed at the deadline\n",
		pid, gen, total.EndedByDeadline, total.Conns)
	return nil
}

// frontends starts and retires the servers of the port: HTTP/3 on the
// pooled transport and HTTPS over TCP on the Upgrader's listener, once at
// the start and again each time this process takes new connections back
// from a successor that died.
type frontends struct {
	upg      *udppool.Upgrader
	tr       *udppool.Transport
	tcpAddr  string
	cert     tls.Certificate
	hello    http.HandlerFunc
	drain    time.Duration
	retired  chan udppool.DrainStats // one value per retire, when its drain ends
	draining int                     // retires whose drain has not ended
}

// A front is one start of the servers.
type front struct {
	h3      *h3.Server
	https   *http.Server
	served  chan error
	drained chan udppool.DrainStats
}

func (f *frontends) serve() (*front, error) {
	tl, err := f.upg.Listen(context.Background(), "tcp", f.tcpAddr)
	if err != nil {
		return nil, err
	}
	fr := &front{served: make(chan error, 1), drained: make(chan udppool.DrainStats, 1)}
	fr.h3 = &h3.Server{
		Transport: f.tr,
		Handler:   f.hello,
		Grace:     f.drain,
		Drained:   func(ds udppool.DrainStats) { fr.drained <- ds },
	}
	if err := fr.h3.Reload(&tls.Config{Certificates: []tls.Certificate{f.cert}}, nil); err != nil {
		tl.Close()
		return nil, err
	}
	fr.https = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fr.h3.SetQUICHeaders(w.Header())
			f.hello(w, r)
		}),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{f.cert}},
	}
	go func() { fr.served <- fr.https.ServeTLS(tl, "", "") }()
	return fr, nil
}

// retire drains fr in the background within the grace period: a GOAWAY
// to every HTTP/3 connection and Shutdown of the HTTPS server, which
// closes its listener (a successor accepts on its own copy) and lets
// requests in flight finish. Connections still open when the grace period
// ends are closed.
func (f *frontends) retire(fr *front) {
	f.draining++
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), f.drain)
		defer cancel()
		var wg sync.WaitGroup
		wg.Go(func() { fr.h3.Shutdown(ctx) })
		wg.Go(func() {
			if err := fr.https.Shutdown(ctx); err != nil {
				fr.https.Close() // the grace period is over
			}
		})
		wg.Wait()
		<-fr.served
		f.retired <- <-fr.drained
	}()
}

// certificate loads the PEM pair, or makes a self-signed certificate for
// localhost, 127.0.0.1 and ::1 (a new key in each generation: clients of
// the demonstration skip verification).
func certificate(certFile, keyFile string) (tls.Certificate, error) {
	if certFile != "" || keyFile != "" {
		if certFile == "" || keyFile == "" {
			return tls.Certificate{}, errors.New("-cert and -key go together")
		}
		return tls.LoadX509KeyPair(certFile, keyFile)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{ // no SerialNumber: crypto/x509 makes a random one
		NotBefore:   time.Now().Add(-time.Minute),
		NotAfter:    time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
