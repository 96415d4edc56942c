// Command upgrade is an HTTP/3 server that upgrades itself without
// dropping a connection: on SIGHUP it starts os.Executable() (typically a
// new build of itself) as its successor, hands the port over, lets its own
// connections finish within -drain, and exits 0.
//
//	go build -o /tmp/h3up ./examples/upgrade && /tmp/h3up -listen :4433
//	curl --http3-only -k https://localhost:4433/   # pid N gen 1
//	kill -HUP <pid>                                # ready ... pid M gen 2
//	curl --http3-only -k https://localhost:4433/   # pid M gen 2
//
// Each response names the serving process and its generation. Every
// generation prints a line starting with "ready" when it serves, to the
// same output, and "exit" when it leaves.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/quic-go/quic-go/http3"

	"github.com/udppool/udppool"
	"github.com/udppool/udppool/udppooltest"
)

func main() {
	listen := flag.String("listen", ":4433", "UDP address to serve on (network \"udp\")")
	certFile := flag.String("cert", "", "certificate `file` (PEM); a generated one if empty")
	keyFile := flag.String("key", "", "private key `file` (PEM)")
	drain := flag.Duration("drain", 30*time.Second, "grace period of the old process after an upgrade")
	flag.Parse()
	if err := run(*listen, *certFile, *keyFile, *drain); err != nil {
		log.Fatalf("pid %d: %v", os.Getpid(), err)
	}
}

func run(listen, certFile, keyFile string, drain time.Duration) error {
	cert, err := certificate(certFile, keyFile)
	if err != nil {
		return err
	}
	// The Upgrader comes first: in a successor it receives the
	// predecessor's sockets, which the pool then binds into or takes over.
	upg, err := udppool.NewUpgrader()
	if err != nil {
		return err
	}
	pid, gen := os.Getpid(), upg.Generation()
	pool := udppool.New(udppool.WithUpgrader(upg))
	tr, err := pool.Transport(context.Background(), "udp", listen)
	if err != nil {
		return err
	}
	tlsConf := http3.ConfigureTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}})
	ln, err := tr.ListenEarly(tlsConf, nil)
	if err != nil {
		return err
	}
	srv := &http3.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "pid %d gen %d\n", pid, gen)
	})}
	served := make(chan error, 1)
	go func() { served <- srv.ServeListener(ln) }()
	if err := upg.Ready(); err != nil {
		return err
	}
	fmt.Printf("ready https://%s/ pid %d gen %d\n", tr.LocalAddr(), pid, gen)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	upgraded := make(chan error, 1)
wait:
	for {
		select {
		case sig := <-sigs:
			if sig != syscall.SIGHUP {
				break wait
			}
			go func() { upgraded <- upg.Upgrade(context.Background()) }()
		case err := <-upgraded:
			// A failed successor changes nothing here: serve on.
			if err != nil {
				fmt.Printf("upgrade failed pid %d gen %d: %v\n", pid, gen, err)
			}
		case <-upg.Exit():
			break wait
		case err := <-served:
			return err
		}
	}
	signal.Stop(sigs)
	// GOAWAY to every client, then wait for requests in flight; a client
	// that keeps a connection open past the grace period is cut off.
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	err = srv.Shutdown(ctx)
	cancel()
	if errors.Is(err, context.DeadlineExceeded) {
		srv.Close()
	}
	lerr := ln.Close()
	<-served
	tr.Close()
	if serr := upg.Stop(); serr != nil && !errors.Is(serr, udppool.ErrUpgraderStopped) {
		return serr
	}
	if lerr != nil && !errors.Is(lerr, net.ErrClosed) {
		return lerr
	}
	fmt.Printf("exit pid %d gen %d (drained: %t)\n", pid, gen, err == nil)
	return nil
}

// certificate loads the PEM pair, or makes one for localhost from a new
// test CA (each generation its own: clients of the demonstration skip
// verification).
func certificate(certFile, keyFile string) (tls.Certificate, error) {
	if certFile != "" || keyFile != "" {
		return tls.LoadX509KeyPair(certFile, keyFile)
	}
	ca, err := udppooltest.NewCA()
	if err != nil {
		return tls.Certificate{}, err
	}
	return ca.Issue(udppooltest.Leaf{Names: []string{"localhost", "127.0.0.1", "::1"}})
}
