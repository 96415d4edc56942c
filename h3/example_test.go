package h3_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/quic-go/quic-go/http3"

	"github.com/udppool/udppool"
	"github.com/udppool/udppool/h3"
	"github.com/udppool/udppool/udppooltest"
)

// A reload with a new certificate under a client that keeps its
// connection: the connection of the old certificate is asked to go (a
// GOAWAY), the client leaves at once, and its next request is served with
// the new certificate.
func ExampleServer_Reload() {
	pool := udppool.New()
	defer pool.Close()
	ctx := context.Background()

	ca, err := udppooltest.NewCA()
	if err != nil {
		log.Fatal(err)
	}
	certificate := func(name string) *tls.Config {
		cert, err := ca.Issue(udppooltest.Leaf{Names: []string{"127.0.0.1", name}})
		if err != nil {
			log.Fatal(err)
		}
		return &tls.Config{Certificates: []tls.Certificate{cert}}
	}

	tr, err := pool.Transport(ctx, "udp4", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()
	drained := make(chan udppool.DrainStats, 1)
	srv := &h3.Server{
		Transport: tr,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, "hello")
		}),
		Grace:   10 * time.Second, // connections of a replaced certificate end by then
		Drained: func(ds udppool.DrainStats) { drained <- ds },
	}
	if err := srv.Reload(certificate("first.example"), nil); err != nil {
		log.Fatal(err)
	}

	h3c := &http3.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Roots()}}
	defer h3c.Close()
	client := &http.Client{Transport: h3c} // keeps its connection between requests
	get := func() {
		resp, err := client.Get(fmt.Sprintf("https://%v/", tr.LocalAddr()))
		if err != nil {
			log.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(resp.Status, string(body), "with the certificate for", resp.TLS.PeerCertificates[0].DNSNames[0])
	}
	get()

	if err := srv.Reload(certificate("second.example"), nil); err != nil {
		log.Fatal(err)
	}
	ds := <-drained
	fmt.Printf("epoch %d drained: %d connection, %d left on the GOAWAY, %d closed at the deadline\n",
		ds.Epoch, ds.Conns, ds.EndedByGoAway, ds.EndedByDeadline)
	get()

	if err := srv.Shutdown(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// 200 OK hello with the certificate for first.example
	// epoch 1 drained: 1 connection, 1 left on the GOAWAY, 0 closed at the deadline
	// 200 OK hello with the certificate for second.example
}

// A server that reads its certificate again on SIGHUP.
func ExampleServer() {
	pool := udppool.New()
	defer pool.Close()
	tr, err := pool.Transport(context.Background(), "udp", ":443")
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()
	srv := &h3.Server{
		Transport: tr,
		Handler:   http.FileServer(http.Dir("/var/www")),
		Grace:     10 * time.Second,
		Drained: func(ds udppool.DrainStats) {
			log.Printf("epoch %d drained: %+v", ds.Epoch, ds)
		},
	}
	load := func() *tls.Config {
		cert, err := tls.LoadX509KeyPair("cert.pem", "key.pem")
		if err != nil {
			log.Fatal(err)
		}
		return &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	if err := srv.Reload(load(), nil); err != nil {
		log.Fatal(err)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	stop, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
	defer cancel()
	for {
		select {
		case <-hup:
			if err := srv.Reload(load(), nil); err != nil {
				log.Print(err) // the current certificate keeps serving
			}
		case <-stop.Done():
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			srv.Shutdown(ctx)
			return
		}
	}
}

// A reload that changes the routes along with the certificate: the new
// epoch answers with the new mux, while connections of the retired one
// finish their requests with the old.
func ExampleWithHandler() {
	pool := udppool.New()
	defer pool.Close()
	tr, err := pool.Transport(context.Background(), "udp", ":443")
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()
	srv := &h3.Server{Transport: tr}
	load := func() (*tls.Config, http.Handler) {
		cert, err := tls.LoadX509KeyPair("cert.pem", "key.pem")
		if err != nil {
			log.Fatal(err)
		}
		mux := http.NewServeMux()
		mux.Handle("/", http.FileServer(http.Dir("/var/www"))) // routes read from the configuration
		return &tls.Config{Certificates: []tls.Certificate{cert}}, mux
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	for {
		tlsConf, mux := load()
		if err := srv.Reload(tlsConf, nil, h3.WithHandler(mux)); err != nil {
			log.Print(err) // the current epoch keeps serving
		}
		<-hup
	}
}
