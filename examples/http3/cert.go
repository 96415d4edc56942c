package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"math/big"
	"net"
	"time"
)

// certSource returns the function that gives each listener epoch its
// certificate. With certFile and keyFile (PEM) it reads them anew each
// time, so that a certificate renewed on disk is served from the next
// reload on; a bad pair fails at start-up, and later only fails the reload.
// Without them it makes a self-signed certificate for localhost, 127.0.0.1
// and ::1, new at every reload but always for the same key, so that a
// browser told to trust that key (see the ready line) trusts every
// epoch.
func certSource(certFile, keyFile string) (func() (tls.Certificate, error), error) {
	if certFile != "" || keyFile != "" {
		if certFile == "" || keyFile == "" {
			return nil, errors.New("-cert and -key go together")
		}
		load := func() (tls.Certificate, error) { return tls.LoadX509KeyPair(certFile, keyFile) }
		if _, err := load(); err != nil {
			return nil, err
		}
		return load, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return func() (tls.Certificate, error) { return selfSigned(key) }, nil
}

// selfSigned makes a certificate for localhost, 127.0.0.1 and ::1, valid
// for a day, signed by its own key.
func selfSigned(key *ecdsa.PrivateKey) (tls.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// spkiHash returns the base64 SHA-256 hash of the certificate's public key,
// as Chromium's --ignore-certificate-errors-spki-list takes it.
func spkiHash(cert tls.Certificate) (string, error) {
	if len(cert.Certificate) == 0 {
		return "", errors.New("empty certificate chain")
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:]), nil
}
