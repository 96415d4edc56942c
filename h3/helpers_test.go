package h3_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"go.uber.org/goleak"

	"github.com/udppool/udppool"
	"github.com/udppool/udppool/h3"
	"github.com/udppool/udppool/udppooltest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every blocking step, so that a bug fails the test
// instead of hanging it. It is never asserted as a duration.
const testTimeout = udppooltest.Timeout

// ca is a throw-away certificate authority that signs server and client
// certificates for a test.
type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t testing.TB, name string) *ca {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &ca{cert: cert, key: key}
}

var serial atomic.Int64

// issue signs a leaf: a server certificate for localhost, 127.0.0.1 and
// ::1, or a client certificate.
func (c *ca) issue(t testing.TB, client bool) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1) + 1),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	if client {
		tmpl.Subject.CommonName = "client"
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		tmpl.DNSNames, tmpl.IPAddresses = nil, nil
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, c.cert.Raw}, PrivateKey: key}
}

func (c *ca) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.cert)
	return p
}

func serverTLS(cert tls.Certificate) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
}

// newClient returns a keep-alive HTTP/3 client trusting roots, presenting
// cert if not nil.
func newClient(roots *x509.CertPool, cert *tls.Certificate) *http3.Transport {
	conf := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13}
	if cert != nil {
		conf.Certificates = []tls.Certificate{*cert}
	}
	return &http3.Transport{
		TLSClientConfig: conf,
		QUICConfig:      &quic.Config{HandshakeIdleTimeout: testTimeout, MaxIdleTimeout: 2 * testTimeout},
	}
}

// serve returns a Server on a dual-stack wildcard Transport of a fresh
// pool, checked for leaks at cleanup, with the server shut down first.
func serve(t *testing.T, s *h3.Server, opts ...udppool.Option) (*h3.Server, *udppool.Pool) {
	t.Helper()
	p := udppooltest.Pool(t, opts...)
	tr, err := p.Transport(context.Background(), "udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	s.Transport = tr
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s, p
}

func port(s *h3.Server) int { return s.Transport.LocalAddr().(*net.UDPAddr).Port }

// outcome is what became of one request.
type outcome struct {
	body string
	leaf []byte // the server's certificate
	err  error
	// attempts counts the connections quic-go's client asked for: 2 when
	// it retried the request; sent says whether the first attempt had
	// written the request before the retry (the server rejected it with
	// H3_REQUEST_REJECTED) or not (the connection had received a GOAWAY
	// or was closed before the request was sent).
	attempts int
	sent     bool
}

// retried reports whether the request was retried after the server
// rejected it unprocessed.
func (o outcome) rejected() bool { return o.attempts > 1 && o.sent }

// retriedUnsent reports whether the request was retried on a new
// connection without having been sent on the first.
func (o outcome) retriedUnsent() bool { return o.attempts > 1 && !o.sent }

// get makes one request with client, following quic-go's client through
// its retry.
func get(ctx context.Context, client *http3.Transport, url string) (o outcome) {
	ctx, cancel := context.WithTimeout(ctx, testTimeout)
	defer cancel()
	var wrote, attempts atomic.Int32
	var sentAtRetry atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GetConn: func(string) {
			if attempts.Add(1) == 2 {
				sentAtRetry.Store(wrote.Load() > 0)
			}
		},
		WroteRequest: func(httptrace.WroteRequestInfo) { wrote.Add(1) },
	})
	defer func() {
		o.attempts = int(attempts.Load())
		o.sent = sentAtRetry.Load()
	}()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		o.err = err
		return o
	}
	resp, err := client.RoundTrip(req)
	if err != nil {
		o.err = err
		return o
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		o.err = fmt.Errorf("reading the body: %w", err)
		return o
	}
	if resp.StatusCode != http.StatusOK {
		o.err = fmt.Errorf("status %s", resp.Status)
		return o
	}
	o.body = string(b)
	if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
		o.err = errors.New("no server certificate")
		return o
	}
	o.leaf = resp.TLS.PeerCertificates[0].Raw
	return o
}

// waitFor polls cond until it holds, failing the test if it does not within
// testTimeout: for states that no event announces, such as the pool's
// counters.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(testTimeout); !cond(); {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// appError waits until conn is closed and returns the application error
// code the peer closed it with, or an error.
func appError(conn *quic.Conn) (quic.ApplicationErrorCode, error) {
	select {
	case <-conn.Context().Done():
	case <-time.After(testTimeout):
		return 0, errors.New("connection still open")
	}
	var ae *quic.ApplicationError
	if err := context.Cause(conn.Context()); !errors.As(err, &ae) || !ae.Remote {
		return 0, fmt.Errorf("closed by %v, not by the peer with an application error", err)
	}
	return ae.ErrorCode, nil
}
