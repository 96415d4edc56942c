package udppool_test

import (
	"context"
	"crypto/tls"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/quic-go/quic-go/http3"
	"github.com/udppool/udppool"
)

// An HTTP/3 server that upgrades itself on SIGHUP (see examples/upgrade).
// It has no output: it serves until a successor has taken over.
func ExampleUpgrader() {
	upg, err := udppool.NewUpgrader() // in a successor: receives the predecessor's sockets
	if err != nil {
		log.Fatal(err)
	}
	pool := udppool.New(udppool.WithUpgrader(upg))
	tr, err := pool.Transport(context.Background(), "udp", ":443")
	if err != nil {
		log.Fatal(err)
	}
	ln, err := tr.ListenEarly(http3.ConfigureTLSConfig(&tls.Config{Certificates: certificates}), nil)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http3.Server{Handler: handler}
	go srv.ServeListener(ln)
	upg.Ready() // from now on this process takes every new handshake

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			// Starts os.Executable() with the same arguments and waits
			// for its Ready; if it fails, this process serves on.
			if err := upg.Upgrade(context.Background()); err != nil {
				log.Print(err)
			}
		}
	}()

	<-upg.Exit() // a successor took over
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	srv.Shutdown(ctx) // GOAWAY, let requests finish
	cancel()
	ln.Close()
	tr.Close()
	upg.Stop() // close the sockets, tell the successor
}

// The server's certificates and handler, as an application has them.
var (
	certificates []tls.Certificate
	handler      http.Handler = http.NotFoundHandler()
)
