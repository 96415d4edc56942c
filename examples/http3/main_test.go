package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"
	"go.uber.org/goleak"
	"golang.org/x/net/nettest"

	"github.com/udppool/udppool/udppooltest"
	"github.com/udppool/udppool/udppooltest/testca"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every blocking step, so that a bug fails the test
// instead of hanging it. It is never asserted as a duration.
const testTimeout = 20 * time.Second

// rotation stands in for the certificate source of the command: it issues
// a new certificate, with a new key, from one test CA at each call, so
// that each reload presents a different certificate while the clients,
// which trust the CA, verify the server properly.
type rotation struct {
	ca     *udppooltest.CA
	roots  *x509.CertPool
	issued atomic.Int64
}

func newRotation(t *testing.T) *rotation {
	t.Helper()
	ca := udppooltest.TLS(t).CA
	return &rotation{ca: ca, roots: ca.Roots()}
}

func (r *rotation) next() (tls.Certificate, error) {
	r.issued.Add(1)
	return r.ca.Issue(udppooltest.Leaf{Names: []string{"localhost", "127.0.0.1", "::1"}})
}

// syncBuffer is a bytes.Buffer that run may write while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// get makes one request with client and returns the body.
func get(ctx context.Context, client *http3.Transport, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, testTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.RoundTrip(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s, body %q", resp.Status, body)
	}
	if !strings.Contains(string(body), "udppool") {
		return "", fmt.Errorf("body %q does not mention udppool", body)
	}
	return string(body), nil
}

// newClient returns an HTTP/3 client that trusts only the test CAs.
func newClient(roots *x509.CertPool) *http3.Transport {
	return &http3.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
}

// TestServeAcrossReloads serves on a dual-stack wildcard while reloading
// every few milliseconds. Clients of each family the host has make
// requests, each on a new connection, across several reloads; one more
// client keeps its connection from the first epoch until that
// epoch drains (its connection is asked to go), and its next request
// is served on a new connection. The summary must count exactly the
// connections the clients made.
func TestServeAcrossReloads(t *testing.T) {
	certs := newRotation(t)
	var out syncBuffer
	ports := make(chan int, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, options{
			listen:  ":0",
			reload:  20 * time.Millisecond,
			out:     &out,
			ready:   func(port int) { ports <- port },
			newCert: certs.next,
		})
	}()
	stopped := false
	stop := func() error {
		cancel()
		select {
		case err := <-done:
			stopped = true
			return err
		case <-time.After(testTimeout):
			t.Fatalf("run did not return after cancel\n%s", out.String())
			return nil
		}
	}
	defer func() {
		if !stopped {
			stop() // leave no server behind for goleak when failing
		}
	}()

	var port int
	select {
	case port = <-ports:
	case err := <-done:
		stopped = true
		t.Fatalf("run: %v\n%s", err, out.String())
	case <-time.After(testTimeout):
		t.Fatalf("server not ready\n%s", out.String())
	}
	if !strings.HasPrefix(out.String(), "ready https://localhost:"+strconv.Itoa(port)+"/ ") {
		t.Errorf("ready line: %q", out.String())
	}

	type fam struct {
		name, url string
		requests  int // each on a new connection
	}
	var fams []*fam
	if nettest.SupportsIPv4() {
		fams = append(fams, &fam{name: "IPv4", url: fmt.Sprintf("https://127.0.0.1:%d/", port)})
	}
	if nettest.SupportsIPv6() {
		fams = append(fams, &fam{name: "IPv6", url: fmt.Sprintf("https://[::1]:%d/", port)})
	}
	if len(fams) == 0 {
		t.Skip("host has no loopback address")
	}

	// The long-lived client connects to the first epoch.
	keep := newClient(certs.roots)
	defer keep.Close()
	if _, err := get(ctx, keep, fams[0].url); err != nil {
		t.Fatalf("first request: %v", err)
	}
	first := certs.issued.Load()

	// Each family's client makes fresh connections until several
	// reloads have happened since it started.
	const minRequests, minReloads = 5, 3
	var wg sync.WaitGroup
	errs := make(chan error, len(fams))
	for _, f := range fams {
		wg.Go(func() {
			start := certs.issued.Load()
			for f.requests < minRequests || certs.issued.Load() < start+minReloads {
				client := newClient(certs.roots)
				body, err := get(ctx, client, f.url)
				client.Close()
				if err != nil {
					errs <- fmt.Errorf("%s request %d: %w", f.name, f.requests, err)
					return
				}
				if want := "hello from udppool over HTTP/3, " + f.name + "\n"; body != want {
					errs <- fmt.Errorf("%s: body %q, want %q", f.name, body, want)
					return
				}
				f.requests++
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}

	// The first epoch drained: the long-lived client left on the
	// GOAWAY, and its next request goes to a new connection.
	if certs.issued.Load() <= first {
		t.Fatal("no reload since the first request")
	}
	for end := time.Now().Add(testTimeout); !strings.Contains(out.String(), "epoch 1 drained:"); {
		if time.Now().After(end) {
			t.Fatalf("the first epoch did not drain\n%s", out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !regexp.MustCompile(`epoch 1 drained: [1-9]\d* connections, \d+ ended by themselves, [1-9]\d* on GOAWAY, 0 at the deadline`).MatchString(out.String()) {
		t.Errorf("the first epoch's drain:\n%s", out.String())
	}
	if _, err := get(ctx, keep, fams[0].url); err != nil {
		t.Fatalf("request after the first epoch drained: %v", err)
	}
	keep.Close()

	if err := stop(); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	summary := parseSummary(t, out.String())
	want := map[string]int{"connections IPv4": 0, "connections IPv6": 0}
	for _, f := range fams {
		want["connections "+f.name] += f.requests
	}
	want["connections "+fams[0].name] += 2 // the long-lived client's, before and after the drain
	for label, n := range want {
		if summary[label] != n {
			t.Errorf("%s = %d, want %d", label, summary[label], n)
		}
	}
	if got, want := summary["reloads"], int(certs.issued.Load())-1; got != want {
		t.Errorf("reloads = %d, want %d (one per certificate after the first)", got, want)
	}
	t.Logf("\n%s", out.String())
}

// TestDuration: -duration stops the server by itself, and a server that
// had no traffic reports none.
func TestDuration(t *testing.T) {
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(context.Background(), options{listen: "127.0.0.1:0", duration: 100 * time.Millisecond, reload: 10 * time.Millisecond, out: &out})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(testTimeout):
		t.Fatal("run did not stop after its duration")
	}
	s := parseSummary(t, out.String())
	if s["connections IPv4"] != 0 || s["connections IPv6"] != 0 {
		t.Errorf("connections counted without clients:\n%s", out.String())
	}
	if !strings.HasPrefix(out.String(), "ready https://127.0.0.1:") {
		t.Errorf("ready line for 127.0.0.1: %q", out.String())
	}
}

// parseSummary reads the "label  number" lines that run prints at exit.
func parseSummary(t *testing.T, out string) map[string]int {
	t.Helper()
	s := make(map[string]int)
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, err := strconv.Atoi(f[len(f)-1])
		if err != nil {
			continue
		}
		s[strings.Join(f[:len(f)-1], " ")] = n
	}
	for _, label := range []string{"connections IPv4", "connections IPv6", "reloads"} {
		if _, ok := s[label]; !ok {
			t.Fatalf("summary has no %q line:\n%s", label, out)
		}
	}
	return s
}

// TestInFlight holds a request open in the handler while the listener is
// replaced several times, and another while the server shuts down: both
// must complete, because reloads close listeners, not servers, and the
// shutdown is graceful.
func TestInFlight(t *testing.T) {
	if !nettest.SupportsIPv4() {
		t.Skip("host has no IPv4 loopback")
	}
	certs := newRotation(t)
	// The handler hands the test a channel to close when the request may
	// finish.
	entered := make(chan chan struct{}, 1)
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		release := make(chan struct{})
		entered <- release
		select {
		case <-release:
		case <-r.Context().Done(): // the server gave up: the test failed
			return
		}
		hello(w, r)
	})
	var out syncBuffer
	ports := make(chan int, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, options{listen: "127.0.0.1:0", reload: 10 * time.Millisecond, out: &out,
			ready: func(port int) { ports <- port }, newCert: certs.next, handler: slow})
	}()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(testTimeout):
			t.Errorf("run did not return\n%s", out.String())
		}
	}()
	var url string
	select {
	case port := <-ports:
		url = fmt.Sprintf("https://127.0.0.1:%d/", port)
	case <-time.After(testTimeout):
		t.Fatal("server not ready")
	}

	// slowGet starts a request and, once the handler holds it, returns
	// the channel that releases it and the one that gets its outcome.
	slowGet := func() (chan struct{}, <-chan error) {
		res := make(chan error, 1)
		go func() {
			client := newClient(certs.roots)
			defer client.Close()
			_, err := get(context.Background(), client, url)
			res <- err
		}()
		select {
		case release := <-entered:
			return release, res
		case err := <-res:
			t.Fatalf("request finished before the handler held it: %v", err)
		case <-time.After(testTimeout):
			t.Fatal("request did not reach the handler")
		}
		return nil, nil
	}
	waitFor := func(what string, cond func() bool) {
		deadline := time.Now().Add(testTimeout)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s\n%s", what, out.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	result := func(res <-chan error) error {
		select {
		case err := <-res:
			return err
		case <-time.After(testTimeout):
			t.Fatal("request did not finish")
			return nil
		}
	}

	// Across reloads.
	release, res := slowGet()
	at := certs.issued.Load()
	waitFor("three reloads", func() bool { return certs.issued.Load() >= at+3 })
	close(release)
	if err := result(res); err != nil {
		t.Fatalf("request in flight across reloads: %v", err)
	}

	// Across shutdown.
	release, res = slowGet()
	cancel()
	waitFor("shutdown to begin", func() bool { return strings.Contains(out.String(), "stopping:") })
	close(release)
	if err := result(res); err != nil {
		t.Fatalf("request in flight at shutdown: %v", err)
	}
}

// writePEM writes cert's chain and key as PEM files in dir, replacing
// those there.
func writePEM(t *testing.T, dir string, cert tls.Certificate) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile, err := testca.WritePEM(dir, cert)
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestCertFiles: with -cert and -key the server presents the files'
// certificate, and after the files are replaced, a later reload presents
// the new one. Bad flags fail at start-up.
func TestCertFiles(t *testing.T) {
	if !nettest.SupportsIPv4() {
		t.Skip("host has no IPv4 loopback")
	}
	ca := udppooltest.TLS(t).CA
	issue := func() tls.Certificate {
		cert, err := ca.Issue(udppooltest.Leaf{Names: []string{"localhost", "127.0.0.1"}})
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	dir := t.TempDir()
	first := issue()
	certFile, keyFile := writePEM(t, dir, first)

	for _, o := range []options{
		{certFile: certFile},
		{keyFile: keyFile},
		{certFile: filepath.Join(dir, "missing.pem"), keyFile: keyFile},
		{certFile: keyFile, keyFile: certFile},
	} {
		o.listen, o.out = "127.0.0.1:0", io.Discard
		if err := run(context.Background(), o); err == nil {
			t.Errorf("run with -cert %q -key %q started", o.certFile, o.keyFile)
		}
	}

	var out syncBuffer
	ports := make(chan int, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, options{listen: "127.0.0.1:0", reload: 10 * time.Millisecond, out: &out,
			certFile: certFile, keyFile: keyFile, ready: func(port int) { ports <- port }})
	}()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(testTimeout):
			t.Errorf("run did not return\n%s", out.String())
		}
	}()
	var url string
	select {
	case port := <-ports:
		url = fmt.Sprintf("https://127.0.0.1:%d/", port)
	case <-time.After(testTimeout):
		t.Fatal("server not ready")
	}
	// served returns the serial number of the certificate a new connection
	// is shown.
	served := func() *big.Int {
		t.Helper()
		client := newClient(ca.Roots())
		defer client.Close()
		rctx, rcancel := context.WithTimeout(ctx, testTimeout)
		defer rcancel()
		req, err := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
			t.Fatal("response without the server's certificate")
		}
		return resp.TLS.PeerCertificates[0].SerialNumber
	}
	if got := served(); got.Cmp(first.Leaf.SerialNumber) != 0 {
		t.Fatalf("served certificate %x, want the file's %x", got, first.Leaf.SerialNumber)
	}
	second := issue()
	writePEM(t, dir, second)
	deadline := time.Now().Add(testTimeout)
	for served().Cmp(second.Leaf.SerialNumber) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the replaced files were not served\n%s", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCertFilesReloadedOnHUP: a SIGHUP reads -cert and -key again; new
// connections get the new certificate, and a reload from files that do not
// parse fails and keeps the current one.
func TestCertFilesReloadedOnHUP(t *testing.T) {
	if !nettest.SupportsIPv4() {
		t.Skip("host has no IPv4 loopback")
	}
	ca := udppooltest.TLS(t).CA
	issue := func() tls.Certificate {
		cert, err := ca.Issue(udppooltest.Leaf{Names: []string{"localhost", "127.0.0.1"}})
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	dir := t.TempDir()
	first, second := issue(), issue()
	certFile, keyFile := writePEM(t, dir, first)

	var out syncBuffer
	ports := make(chan int, 1)
	hup := make(chan os.Signal)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, options{listen: "127.0.0.1:0", certFile: certFile, keyFile: keyFile, out: &out, hup: hup,
			ready: func(port int) { ports <- port }})
	}()
	var url string
	select {
	case port := <-ports:
		url = fmt.Sprintf("https://127.0.0.1:%d/", port)
	case err := <-done:
		t.Fatalf("run: %v\n%s", err, out.String())
	case <-time.After(testTimeout):
		t.Fatal("server not ready")
	}
	served := func() *big.Int {
		t.Helper()
		client := newClient(ca.Roots())
		defer client.Close()
		rctx, rcancel := context.WithTimeout(ctx, testTimeout)
		defer rcancel()
		req, _ := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
		resp, err := client.RoundTrip(req)
		if err != nil {
			t.Fatalf("request: %v", err)
		}
		resp.Body.Close()
		return resp.TLS.PeerCertificates[0].SerialNumber
	}
	if served().Cmp(first.Leaf.SerialNumber) != 0 {
		t.Fatal("not serving the certificate of -cert")
	}
	// The channel is unbuffered: the second send is taken once the
	// reload of the first is done.
	sighup := func() {
		for range 2 {
			select {
			case hup <- syscall.SIGHUP:
			case <-time.After(testTimeout):
				t.Fatal("SIGHUP not taken")
			}
		}
	}

	writePEM(t, dir, second)
	sighup()
	if served().Cmp(second.Leaf.SerialNumber) != 0 {
		t.Fatal("after SIGHUP: not serving the new certificate of -cert")
	}
	if err := os.WriteFile(certFile, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	sighup()
	if !strings.Contains(out.String(), "reload failed:") {
		t.Errorf("no failed reload reported:\n%s", out.String())
	}
	if served().Cmp(second.Leaf.SerialNumber) != 0 {
		t.Fatal("after a failed reload: not serving the previous certificate")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Two SIGHUPs per sighup: two reloads from good files, two failed.
	if s := parseSummary(t, out.String()); s["reloads"] != 2 {
		t.Errorf("reloads = %d, want 2 (failed ones do not count)\n%s", s["reloads"], out.String())
	}
}
