package h3_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/nettest"

	"github.com/udppool/udppool"
	"github.com/udppool/udppool/h3"
)

func hello(w http.ResponseWriter, r *http.Request) {
	fmt.Fprintf(w, "hello %s", r.URL.Path)
}

// TestServeAndReload: requests over IPv4 and IPv6 are served before and
// after a reload, each by the certificate of the epoch its connection
// belongs to; the retired epoch drains by GOAWAY alone. With 0-RTT
// allowed, connections are served from their first flight.
func TestServeAndReload(t *testing.T) {
	for _, conf := range []*quic.Config{nil, {Allow0RTT: true}} {
		t.Run(fmt.Sprintf("0-RTT=%v", conf != nil), func(t *testing.T) { serveAndReload(t, conf) })
	}
}

func serveAndReload(t *testing.T, quicConf *quic.Config) {
	auth := newCA(t, "test CA")
	first, second := auth.issue(t, false), auth.issue(t, false)
	drained := make(chan udppool.DrainStats, 2)
	s, _ := serve(t, &h3.Server{Handler: http.HandlerFunc(hello), Drained: func(ds udppool.DrainStats) { drained <- ds }})
	if err := s.Reload(serverTLS(first), quicConf); err != nil {
		t.Fatal(err)
	}
	var hosts []string
	if nettest.SupportsIPv4() {
		hosts = append(hosts, "127.0.0.1")
	}
	if nettest.SupportsIPv6() {
		hosts = append(hosts, "[::1]")
	}
	clients := make([]*http3.Transport, len(hosts))
	for i, host := range hosts {
		clients[i] = newClient(auth.pool(), nil)
		defer clients[i].Close()
		url := fmt.Sprintf("https://%s:%d/a", host, port(s))
		if o := get(context.Background(), clients[i], url); o.err != nil || o.body != "hello /a" || string(o.leaf) != string(first.Certificate[0]) {
			t.Fatalf("before the reload, %s: %q, %v", host, o.body, o.err)
		}
	}
	if err := s.Reload(serverTLS(second), quicConf); err != nil {
		t.Fatal(err)
	}
	var ds udppool.DrainStats
	select {
	case ds = <-drained:
	case <-time.After(testTimeout):
		t.Fatal("the first epoch did not drain")
	}
	if want := (udppool.DrainStats{Epoch: 1, Conns: len(hosts), EndedByGoAway: len(hosts)}); ds != want {
		t.Errorf("drain: %+v, want %+v", ds, want)
	}
	for i, host := range hosts {
		url := fmt.Sprintf("https://%s:%d/b", host, port(s))
		o := get(context.Background(), clients[i], url)
		if o.err != nil || o.body != "hello /b" || string(o.leaf) != string(second.Certificate[0]) {
			t.Fatalf("after the reload, %s: %q, %v", host, o.body, o.err)
		}
		// The client's connection was closed on the GOAWAY: its next
		// request went to a new connection before it was sent.
		if !o.retriedUnsent() {
			t.Errorf("after the reload, %s: %d attempts (sent before the retry: %v), want a retry of an unsent request", host, o.attempts, o.sent)
		}
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(serverTLS(second), nil); !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Reload after Shutdown: %v", err)
	}
}

// TestAltSvc: SetQUICHeaders announces the port as http3.Server does, and
// only while serving.
func TestAltSvc(t *testing.T) {
	auth := newCA(t, "test CA")
	s, _ := serve(t, &h3.Server{Handler: http.HandlerFunc(hello)})
	if err := s.SetQUICHeaders(http.Header{}); !errors.Is(err, http3.ErrNoAltSvcPort) {
		t.Errorf("SetQUICHeaders before serving: %v", err)
	}
	if err := s.Reload(serverTLS(auth.issue(t, false)), nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ port, want int }{{0, port(s)}, {8443, 8443}} {
		s.Port = tc.port
		hdr := http.Header{}
		if err := s.SetQUICHeaders(hdr); err != nil {
			t.Fatal(err)
		}
		if got, want := hdr.Get("Alt-Svc"), fmt.Sprintf(`h3=":%d"; ma=2592000`, tc.want); got != want {
			t.Errorf("Alt-Svc with Port %d: %q, want %q", tc.port, got, want)
		}
	}
	s.Close()
	if err := s.SetQUICHeaders(http.Header{}); !errors.Is(err, http3.ErrNoAltSvcPort) {
		t.Errorf("SetQUICHeaders after Close: %v", err)
	}
}

// blocker is a handler whose /block requests wait until the server gives
// up on them; it reports each one it holds.
type blocker struct{ held chan struct{} }

func (b blocker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/block" {
		b.held <- struct{}{}
		<-r.Context().Done()
		return
	}
	hello(w, r)
}

// stubbornConn dials the server speaking h3 at the QUIC level only: it
// never reads the server's control stream, so it ignores the GOAWAY, like
// a client that does not follow RFC 9114.
func stubbornConn(t *testing.T, addr string, conf *tls.Config) (*quic.Conn, error) {
	t.Helper()
	uc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: uc}
	t.Cleanup(func() { tr.Close(); uc.Close() })
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conf = conf.Clone()
	conf.NextProtos = []string{http3.NextProtoH3}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	conn, err := tr.Dial(ctx, ua, conf, &quic.Config{HandshakeIdleTimeout: testTimeout, MaxIdleTimeout: 2 * testTimeout})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	// The handshake may complete on the client's side before the server
	// has verified a client certificate: wait for the server's first
	// stream (its control stream), which only a served connection opens.
	if _, err := conn.AcceptUniStream(ctx); err != nil {
		return nil, err
	}
	return conn, nil
}

// TestGraceEndsTheDrain: a client that ignores the GOAWAY and a request
// that outlasts the grace period are closed when it ends, with
// H3_NO_ERROR; the drain counts them, and the compliant client that left on
// the GOAWAY.
func TestGraceEndsTheDrain(t *testing.T) {
	if !nettest.SupportsIPv4() {
		t.Skip("no IPv4 loopback")
	}
	auth := newCA(t, "test CA")
	drained := make(chan udppool.DrainStats, 2)
	b := blocker{held: make(chan struct{}, 1)}
	// The grace period is short, as only connections that stay until it
	// ends are in its drain: how fast the machine is changes nothing.
	s, p := serve(t, &h3.Server{Handler: b, Grace: 200 * time.Millisecond, Drained: func(ds udppool.DrainStats) { drained <- ds }})
	if err := s.Reload(serverTLS(auth.issue(t, false)), nil); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port(s))
	stubborn, err := stubbornConn(t, addr, &tls.Config{RootCAs: auth.pool()})
	if err != nil {
		t.Fatal(err)
	}
	polite := newClient(auth.pool(), nil)
	defer polite.Close()
	if o := get(context.Background(), polite, "https://"+addr+"/"); o.err != nil {
		t.Fatal(o.err)
	}
	long := newClient(auth.pool(), nil)
	defer long.Close()
	longDone := make(chan outcome, 1)
	go func() { longDone <- get(context.Background(), long, "https://"+addr+"/block") }()
	select {
	case <-b.held:
	case o := <-longDone:
		t.Fatalf("long request: %v", o.err)
	}

	if err := s.Reload(serverTLS(auth.issue(t, false)), nil); err != nil {
		t.Fatal(err)
	}
	var ds udppool.DrainStats
	select {
	case ds = <-drained:
	case <-time.After(testTimeout):
		t.Fatal("the first epoch did not drain")
	}
	if want := (udppool.DrainStats{Epoch: 1, Conns: 3, EndedByGoAway: 1, EndedByDeadline: 2}); ds != want {
		t.Errorf("drain: %+v, want %+v", ds, want)
	}
	if code, err := appError(stubborn); err != nil || code != quic.ApplicationErrorCode(http3.ErrCodeNoError) {
		t.Errorf("the stubborn connection: code %#x, %v; want H3_NO_ERROR", code, err)
	}
	// A request cut by the end of the grace period is lost, and quic-go's
	// client does not retry it (the server may have processed it).
	o := <-longDone
	var he *http3.Error
	if !errors.As(o.err, &he) || he.ErrorCode != http3.ErrCodeNoError || o.attempts != 1 {
		t.Errorf("request cut at the end of the grace period: %v after %d attempts, want H3_NO_ERROR and no retry", o.err, o.attempts)
	}
	for _, l := range p.Stats()[0].Listeners {
		if l.Epoch == 1 {
			t.Errorf("the first epoch is still listed: %+v", l)
		}
	}
}

// TestClientCARemoved: a client whose certificate is signed by a CA that a
// reload removes is refused on its next connection, and its old connection
// ends by the grace period even if it ignores the GOAWAY; a client of the
// CA that stays is served throughout.
func TestClientCARemoved(t *testing.T) {
	if !nettest.SupportsIPv4() {
		t.Skip("no IPv4 loopback")
	}
	server := newCA(t, "server CA")
	removed, kept := newCA(t, "removed client CA"), newCA(t, "kept client CA")
	clientTLS := func(roots ...*ca) *tls.Config {
		conf := serverTLS(server.issue(t, false))
		conf.ClientAuth = tls.RequireAndVerifyClientCert
		conf.ClientCAs = roots[0].pool()
		for _, r := range roots[1:] {
			conf.ClientCAs.AddCert(r.cert)
		}
		return conf
	}
	drained := make(chan udppool.DrainStats, 2)
	s, _ := serve(t, &h3.Server{Handler: http.HandlerFunc(hello), Grace: 200 * time.Millisecond, Drained: func(ds udppool.DrainStats) { drained <- ds }})
	if err := s.Reload(clientTLS(removed, kept), nil); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port(s))
	url := "https://" + addr + "/"
	oldCert, keptCert := removed.issue(t, true), kept.issue(t, true)
	revoked := newClient(server.pool(), &oldCert)
	// It would resume its session if it could: a resumed session keeps
	// the client certificate checks of the handshake that made it.
	revoked.TLSClientConfig.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	defer revoked.Close()
	good := newClient(server.pool(), &keptCert)
	defer good.Close()
	for _, c := range []*http3.Transport{revoked, good} {
		if o := get(context.Background(), c, url); o.err != nil {
			t.Fatalf("before the reload: %v", o.err)
		}
	}
	stubborn, err := stubbornConn(t, addr, &tls.Config{RootCAs: server.pool(), Certificates: []tls.Certificate{oldCert}})
	if err != nil {
		t.Fatal(err)
	}

	if err := s.Reload(clientTLS(kept), nil); err != nil {
		t.Fatal(err)
	}
	select {
	case ds := <-drained:
		if want := (udppool.DrainStats{Epoch: 1, Conns: 3, EndedByGoAway: 2, EndedByDeadline: 1}); ds != want {
			t.Errorf("drain: %+v, want %+v", ds, want)
		}
	case <-time.After(testTimeout):
		t.Fatal("the first epoch did not drain")
	}
	if code, err := appError(stubborn); err != nil || code != quic.ApplicationErrorCode(http3.ErrCodeNoError) {
		t.Errorf("the stubborn connection with the removed CA's certificate: code %#x, %v; want H3_NO_ERROR", code, err)
	}
	o := get(context.Background(), revoked, url)
	var te *quic.TransportError
	if !errors.As(o.err, &te) || !te.ErrorCode.IsCryptoError() {
		t.Errorf("request with the removed CA's certificate: %q, %v; want a TLS alert", o.body, o.err)
	}
	if _, err := stubbornConn(t, addr, &tls.Config{RootCAs: server.pool(), Certificates: []tls.Certificate{oldCert}}); !errors.As(err, &te) || !te.ErrorCode.IsCryptoError() {
		t.Errorf("new connection with the removed CA's certificate: %v; want a TLS alert", err)
	}
	if o := get(context.Background(), good, url); o.err != nil || !strings.HasPrefix(o.body, "hello") {
		t.Errorf("request with the kept CA's certificate: %q, %v", o.body, o.err)
	}
}

// TestShutdownLetsRequestsFinish: Shutdown waits for a request in flight,
// then the server is gone.
func TestShutdownLetsRequestsFinish(t *testing.T) {
	if !nettest.SupportsIPv4() {
		t.Skip("no IPv4 loopback")
	}
	auth := newCA(t, "test CA")
	entered, release := make(chan struct{}), make(chan struct{})
	s, p := serve(t, &h3.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		io.WriteString(w, "finished")
	})})
	if err := s.Reload(serverTLS(auth.issue(t, false)), nil); err != nil {
		t.Fatal(err)
	}
	client := newClient(auth.pool(), nil)
	defer client.Close()
	res := make(chan outcome, 1)
	go func() { res <- get(context.Background(), client, fmt.Sprintf("https://127.0.0.1:%d/", port(s))) }()
	<-entered
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	// Shutdown cannot return while the request runs; once the epoch
	// is no longer accepting, let the request finish.
	waitFor(t, "the epoch to stop accepting", func() bool {
		st := p.Stats()
		return len(st) == 1 && len(st[0].Listeners) == 1 && !st[0].Listeners[0].Accepting
	})
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned with a request in flight: %v", err)
	default:
	}
	close(release)
	if o := <-res; o.err != nil || o.body != "finished" {
		t.Fatalf("request in flight at Shutdown: %q, %v", o.body, o.err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// TestNoResumptionAcrossGenerations: a client that resumes TLS sessions
// resumes within an epoch, but not into the next one: a resumed
// session keeps the certificate (and client certificate checks) of the
// handshake that made it, so resuming across a reload would let a
// connection use the replaced certificate after its drain.
func TestNoResumptionAcrossGenerations(t *testing.T) {
	if !nettest.SupportsIPv4() {
		t.Skip("no IPv4 loopback")
	}
	auth := newCA(t, "test CA")
	first, second := auth.issue(t, false), auth.issue(t, false)
	drained := make(chan udppool.DrainStats, 2)
	s, _ := serve(t, &h3.Server{Handler: http.HandlerFunc(hello), Drained: func(ds udppool.DrainStats) { drained <- ds }})
	if err := s.Reload(serverTLS(first), nil); err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("https://127.0.0.1:%d/", port(s))
	cache := tls.NewLRUClientSessionCache(8)
	// Each request on a new connection; the session cache is shared.
	resumed := func() (bool, []byte) {
		t.Helper()
		c := newClient(auth.pool(), nil)
		c.TLSClientConfig.ClientSessionCache = cache
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := c.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.TLS.DidResume, resp.TLS.PeerCertificates[0].Raw
	}
	resumed() // gets a session ticket
	if ok, _ := resumed(); !ok {
		t.Fatal("the client did not resume its session within an epoch: the test proves nothing")
	}
	if err := s.Reload(serverTLS(second), nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-drained:
	case <-time.After(testTimeout):
		t.Fatal("the first epoch did not drain")
	}
	ok, leaf := resumed()
	if ok || string(leaf) != string(second.Certificate[0]) {
		t.Errorf("after the reload: resumed %v, new certificate %v", ok, string(leaf) == string(second.Certificate[0]))
	}
}

// TestReloadWithHandler: a Reload with WithHandler serves its epoch's
// requests with the new handler, and later Reloads without one keep it.
func TestReloadWithHandler(t *testing.T) {
	auth := newCA(t, "test CA")
	s, _ := serve(t, &h3.Server{Handler: http.HandlerFunc(hello)})
	bye := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "bye %s", r.URL.Path) })
	host := "127.0.0.1"
	if !nettest.SupportsIPv4() {
		host = "[::1]"
	}
	for i, step := range []struct {
		opts []h3.ReloadOption
		want string
	}{
		{nil, "hello /x"},
		{[]h3.ReloadOption{h3.WithHandler(bye)}, "bye /x"},
		{nil, "bye /x"},
		{[]h3.ReloadOption{h3.WithHandler(nil)}, "bye /x"},
		{[]h3.ReloadOption{h3.WithHandler(http.HandlerFunc(hello))}, "hello /x"},
	} {
		if err := s.Reload(serverTLS(auth.issue(t, false)), nil, step.opts...); err != nil {
			t.Fatal(err)
		}
		client := newClient(auth.pool(), nil) // a new connection, of the new epoch
		o := get(context.Background(), client, fmt.Sprintf("https://%s:%d/x", host, port(s)))
		client.Close()
		if o.err != nil || o.body != step.want {
			t.Fatalf("reload %d: %q, %v; want %q", i+1, o.body, o.err, step.want)
		}
	}
}
