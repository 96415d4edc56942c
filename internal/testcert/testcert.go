// Package testcert makes in-memory TLS certificates for tests and examples:
// a throwaway CA and a leaf for "localhost", 127.0.0.1 and ::1, so that
// clients verify the server properly instead of skipping verification.
package testcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"time"
)

// Pair is a server certificate and the pool of roots that trusts it.
type Pair struct {
	Cert  tls.Certificate
	Roots *x509.CertPool
}

// New makes a fresh CA and a leaf certificate signed by it, valid for an
// hour for "localhost", 127.0.0.1 and ::1 and any extra names or IP
// addresses given.
func New(extra ...string) (*Pair, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	ca := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "udppool test CA"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err = x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	for _, name := range extra {
		if ip := net.ParseIP(name); ip != nil {
			leaf.IPAddresses = append(leaf.IPAddresses, ip)
		} else {
			leaf.DNSNames = append(leaf.DNSNames, name)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	return &Pair{Cert: tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: key}, Roots: roots}, nil
}

// Server returns a server configuration offering the given ALPN protocols.
func (p *Pair) Server(protos ...string) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{p.Cert}, NextProtos: protos, MinVersion: tls.VersionTLS13}
}

// Client returns a client configuration that trusts only this pair's CA.
func (p *Pair) Client(protos ...string) *tls.Config {
	return &tls.Config{RootCAs: p.Roots, ServerName: "localhost", NextProtos: protos, MinVersion: tls.VersionTLS13}
}
