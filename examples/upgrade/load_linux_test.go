//go:build linux

package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"sync"
	"testing"
)

// A load is two clients that make request after request while servers
// hand over: one keeps its connection (until the server sends it away),
// the other opens a new connection for each request.
type load struct {
	keep, fresh *keepAlive
	cancel      context.CancelFunc
	wg          sync.WaitGroup
	reported    bool
}

// startLoad starts both clients on url; they stop at l.stop or at the end
// of the test.
func startLoad(t *testing.T, roots *x509.CertPool, url string) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{
		keep:   &keepAlive{roots: roots, url: url, changed: make(chan struct{})},
		fresh:  &keepAlive{roots: roots, url: url, fresh: true, changed: make(chan struct{})},
		cancel: cancel,
	}
	l.wg.Go(func() { l.keep.run(ctx) })
	l.wg.Go(func() { l.fresh.run(ctx) })
	t.Cleanup(func() {
		if !l.reported && t.Failed() {
			l.report(t, "when the test failed")
		}
		l.stop()
	})
	return l
}

// waitServed waits until each client has had n answers from a.
func (l *load) waitServed(t *testing.T, a answer, n int) {
	t.Helper()
	l.keep.waitFor(t, fmt.Sprintf("%d answers of %+v on the kept connection", n, a), func() bool { return l.keep.answers[a] >= n })
	l.fresh.waitFor(t, fmt.Sprintf("%d answers of %+v on new connections", n, a), func() bool { return l.fresh.answers[a] >= n })
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
	for _, c := range []struct {
		name string
		k    *keepAlive
	}{{"kept connection", l.keep}, {"new connections", l.fresh}} {
		c.k.mu.Lock()
		t.Logf("%s, %s: %d requests, %d failed, %d retried by the client, answers %v",
			what, c.name, c.k.requests, len(c.k.errs), c.k.retried, c.k.answers)
		if len(c.k.errs) > 0 {
			t.Errorf("%s, %s: %d requests failed: %v", what, c.name, len(c.k.errs), c.k.errs)
		}
		requests += c.k.requests
		failed += len(c.k.errs)
		c.k.mu.Unlock()
	}
	return requests, failed
}
