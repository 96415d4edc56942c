// Package testcert makes in-memory TLS certificates for tests and examples:
// a throwaway CA and a leaf for "localhost", 127.0.0.1 and ::1, so that
// clients verify the server properly instead of skipping verification.
package testcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
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
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	return NewWithKey(key, extra...)
}

// NewKey returns a fresh leaf key for NewWithKey.
func NewKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// NewWithKey is New with a given leaf key: every certificate is new, but a
// client that pins the key (a browser given --ignore-certificate-errors-spki-list)
// keeps trusting it across reloads.
func NewWithKey(key *ecdsa.PrivateKey, extra ...string) (*Pair, error) {
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

// SPKIHash returns the base64 SHA-256 hash of the leaf's public key, as
// Chromium's --ignore-certificate-errors-spki-list takes it.
func (p *Pair) SPKIHash() (string, error) {
	leaf, err := x509.ParseCertificate(p.Cert.Certificate[0])
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:]), nil
}

// Server returns a server configuration offering the given ALPN protocols.
func (p *Pair) Server(protos ...string) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{p.Cert}, NextProtos: protos, MinVersion: tls.VersionTLS13}
}

// Client returns a client configuration that trusts only this pair's CA.
func (p *Pair) Client(protos ...string) *tls.Config {
	return &tls.Config{RootCAs: p.Roots, ServerName: "localhost", NextProtos: protos, MinVersion: tls.VersionTLS13}
}
