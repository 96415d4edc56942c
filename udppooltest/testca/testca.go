// Package testca is a throw-away certificate authority for tests and
// demonstration programs: it issues server and client certificates that
// clients verify for real (no InsecureSkipVerify), and writes them as PEM
// files for a program started with -cert and -key flags.
//
// It is udppooltest's certificate half, kept apart so that a program that
// is not a test (a demonstration, a benchmark) can make certificates
// without linking the testing package or goleak: nothing here imports
// either. udppooltest re-exports its types (udppooltest.CA is a testca.CA).
package testca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// A CA is a throw-away certificate authority, made in memory, that issues
// any number of leaf certificates: server certificates for names and
// addresses, client certificates, and, for negative tests, expired or
// wrong-name ones. A test makes one CA and gives every client its Roots,
// so that certificates rotated during the test stay trusted while clients
// still verify them for real (no InsecureSkipVerify).
//
// The CA is valid from a day before it was made to a week after. A CA is
// safe for concurrent use.
type CA struct {
	// Certificate is the CA's own, self-signed certificate, for example
	// to put into a server's tls.Config.ClientCAs.
	Certificate *x509.Certificate
	key         *ecdsa.PrivateKey
}

// NewCA makes a fresh CA with an ECDSA P-256 key.
func NewCA() (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("testca: CA key: %w", err)
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "udppooltest CA " + serial.Text(16)[:8]},
		NotBefore:             now.Add(-24 * time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("testca: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("testca: CA certificate: %w", err)
	}
	return &CA{Certificate: cert, key: key}, nil
}

// Roots returns a new certificate pool that holds the CA and nothing else,
// for a client's RootCAs or a server's ClientCAs.
func (ca *CA) Roots() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Certificate)
	return pool
}

// A Leaf describes a certificate for (*CA).Issue.
type Leaf struct {
	// Names are the DNS names and IP addresses (in text form) that the
	// certificate is valid for; the first is also its common name. A
	// certificate for names a client does not dial is a wrong-name
	// certificate. At least one name is needed.
	Names []string
	// Client makes a client certificate (extended key usage client
	// authentication) instead of a server certificate.
	Client bool
	// NotBefore and NotAfter bound the validity. A zero NotAfter means an
	// hour from now; a zero NotBefore means a minute ago, or an hour
	// before NotAfter if that is earlier. A NotAfter in the past makes an
	// expired certificate, a NotBefore in the future one not yet valid.
	NotBefore, NotAfter time.Time
	// Key is the certificate's private key, an ECDSA, Ed25519 or RSA key;
	// nil means a fresh ECDSA P-256 key. Reusing a key across
	// certificates keeps the hash of its public key, which clients such as
	// browsers can pin, across a rotation.
	Key crypto.Signer
}

// Issue makes a certificate signed by the CA. The result's chain is the
// leaf, then the CA; its Leaf field is set.
func (ca *CA) Issue(l Leaf) (tls.Certificate, error) {
	if len(l.Names) == 0 {
		return tls.Certificate{}, errors.New("testca: a certificate needs at least one name")
	}
	key := l.Key
	if key == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("testca: certificate key: %w", err)
		}
		key = k
	}
	serial, err := serialNumber()
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	notAfter := l.NotAfter
	if notAfter.IsZero() {
		notAfter = now.Add(time.Hour)
	}
	notBefore := l.NotBefore
	if notBefore.IsZero() {
		notBefore = now.Add(-time.Minute)
		if early := notAfter.Add(-time.Hour); early.Before(notBefore) {
			notBefore = early
		}
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: l.Names[0]},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if _, ok := key.Public().(*ecdsa.PublicKey); !ok {
		// RSA key exchange in TLS 1.2 encrypts with the key.
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	if l.Client {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	for _, name := range l.Names {
		if ip := net.ParseIP(name); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, name)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Certificate, key.Public(), ca.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("testca: certificate for %q: %w", l.Names, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("testca: certificate for %q: %w", l.Names, err)
	}
	return tls.Certificate{
		Certificate: [][]byte{der, ca.Certificate.Raw},
		PrivateKey:  key,
		Leaf:        leaf,
	}, nil
}

// serialNumber returns a random 128-bit serial number.
func serialNumber() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("testca: serial number: %w", err)
	}
	return n, nil
}

// TB is what Server and Client need of a test: a *testing.T, *testing.B
// or any testing.TB satisfies it. It is an interface of its own so that this
// package does not import testing.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// loopbackNames are the names of every server certificate of Server and TLS.
var loopbackNames = []string{"localhost", "127.0.0.1", "::1"}

// Server issues a server certificate, valid for an hour, for "localhost",
// 127.0.0.1, ::1 and any extra DNS names or IP addresses given (for
// example the addresses of a SimHost, for clients that verify by IP
// address). Each call makes a new certificate with a new key, so a test
// rotates a server's certificate by calling Server again; clients
// configured by any of the CA's Certs trust every one. It fails the test
// if the certificate cannot be made.
func (ca *CA) Server(t TB, extra ...string) *Certs {
	t.Helper()
	cert, err := ca.Issue(Leaf{Names: append(append([]string(nil), loopbackNames...), extra...)})
	if err != nil {
		t.Fatalf("%v", err)
	}
	return &Certs{Certificate: cert, Roots: ca.Roots(), CA: ca}
}

// Client issues a client certificate for name, valid for an hour. A
// server verifies it with ClientCAs set to the CA's Roots and ClientAuth
// set to tls.RequireAndVerifyClientCert. It fails the test if the
// certificate cannot be made.
func (ca *CA) Client(t TB, name string) tls.Certificate {
	t.Helper()
	cert, err := ca.Issue(Leaf{Names: []string{name}, Client: true})
	if err != nil {
		t.Fatalf("%v", err)
	}
	return cert
}

// Certs are a server certificate and the CA that issued it. Clients
// configured by ClientConfig trust that CA alone and verify the server for
// real: no InsecureSkipVerify, so a test also catches a server presenting
// the wrong certificate.
type Certs struct {
	// Certificate is the server's certificate chain (leaf, then CA) and
	// private key. The leaf is valid for an hour for "localhost",
	// 127.0.0.1, ::1 and the extra names given to Server (or
	// udppooltest.TLS).
	Certificate tls.Certificate
	// Roots holds the CA, and nothing else.
	Roots *x509.CertPool
	// CA issued Certificate; it issues more certificates that clients of
	// these Certs trust (a rotation, client certificates, negative cases).
	CA *CA
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
