package udppooltest

import (
	"crypto/tls"
	"crypto/x509"
	"testing"

	"github.com/udppool/udppool/internal/testcert"
)

// Certs are a throw-away certificate authority and a server certificate
// signed by it, made in memory for one test. Clients configured by
// ClientConfig trust that CA alone and verify the server for real: no
// InsecureSkipVerify, so a test also catches a server presenting the wrong
// certificate.
type Certs struct {
	// Certificate is the server's certificate chain (leaf, then CA) and
	// private key. The leaf is valid for an hour for "localhost",
	// 127.0.0.1, ::1 and the extra names given to TLS.
	Certificate tls.Certificate
	// Roots holds the CA, and nothing else.
	Roots *x509.CertPool
}

// TLS makes a fresh CA and server certificate for "localhost", 127.0.0.1,
// ::1 and any extra DNS names or IP addresses given (for example the
// addresses of a SimHost, for clients that verify by IP address). It fails
// the test if the keys cannot be generated.
func TLS(t testing.TB, extra ...string) *Certs {
	t.Helper()
	p, err := testcert.New(extra...)
	if err != nil {
		t.Fatalf("udppooltest: making test certificates: %v", err)
	}
	return &Certs{Certificate: p.Cert, Roots: p.Roots}
}

// ServerConfig returns a new TLS 1.3 server configuration presenting the
// certificate and offering the given ALPN protocols (QUIC needs at least
// one, and udppool's listeners route handshakes by them).
func (c *Certs) ServerConfig(protos ...string) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{c.Certificate},
		NextProtos:   protos,
		MinVersion:   tls.VersionTLS13,
	}
}

// ClientConfig returns a new TLS 1.3 client configuration that trusts only
// the CA of c, asks for the given ALPN protocols and verifies the server as
// "localhost", whatever address it dials. Set ServerName on the result to
// verify another of the certificate's names or addresses.
func (c *Certs) ClientConfig(protos ...string) *tls.Config {
	return &tls.Config{
		RootCAs:    c.Roots,
		ServerName: "localhost",
		NextProtos: protos,
		MinVersion: tls.VersionTLS13,
	}
}
