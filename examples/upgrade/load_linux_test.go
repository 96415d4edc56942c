//go:build linux

package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"sync"
	"testing"
)

// A load is four clients that make request after request while servers
// hand over, two over HTTP/3 and two over HTTPS on TCP: of each, one keeps
// its connection (until the server sends it away), the other opens a new
// connection for each request.
type load struct {
	keep, fresh       *keepAlive
	tcpKeep, tcpFresh *keepAlive
	cancel            context.CancelFunc
	wg                sync.WaitGroup
	reported          bool
}

// startLoad starts both clients on url; they stop at l.stop or at the end
// of the test.
func startLoad(t *testing.T, roots *x509.CertPool, url string) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{
		keep:   &keepAlive{roots: roots, url: url, changed: make(chan struct{})},
		fresh:  &keepAlive{roots: roots, url: url, fresh: true, changed: make(chan struct{})},
		cancel: cancel,

		tcpKeep:  &keepAlive{roots: roots, url: url, tcp: true, changed: make(chan struct{})},
		tcpFresh: &keepAlive{roots: roots, url: url, tcp: true, fresh: true, changed: make(chan struct{})},
	}
	for _, k := range l.clients() {
		l.wg.Go(func() { k.c.run(ctx) })
	}
	t.Cleanup(func() {
		if !l.reported && t.Failed() {
			l.report(t, "when the test failed")
		}
		l.stop()
	})
	return l
}

type namedClient struct {
	name string
	c    *keepAlive
}

func (l *load) clients() []namedClient {
	return []namedClient{
		{"kept connection", l.keep}, {"new connections", l.fresh},
		{"TCP, kept connection", l.tcpKeep}, {"TCP, new connections", l.tcpFresh},
	}
}

// waitServed waits until each client has had n answers from a.
func (l *load) waitServed(t *testing.T, a answer, n int) {
	t.Helper()
	for _, k := range l.clients() {
		k.c.waitFor(t, fmt.Sprintf("%d answers of %+v, %s", n, a, k.name), func() bool { return k.c.answers[a] >= n })
	}
}

func (l *load) stop() {
	l.cancel()
	l.wg.Wait()
}

// report stops the clients, logs their figures and fails the test if a
// request failed.
func (l *load) report(t *testing.T, what string) (requests, failed int) {
	t.Helper()
	l.stop()
	l.reported = true
	for _, c := range l.clients() {
		c.c.mu.Lock()
		t.Logf("%s, %s: %d requests, %d failed, %d retried by the client, answers %v",
			what, c.name, c.c.requests, len(c.c.errs), c.c.retried, c.c.answers)
		if len(c.c.errs) > 0 {
			t.Errorf("%s, %s: %d requests failed: %v", what, c.name, len(c.c.errs), c.c.errs)
		}
		requests += c.c.requests
		failed += len(c.c.errs)
		c.c.mu.Unlock()
	}
	return requests, failed
}
