package testca_test

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"testing"

	"github.com/udppool/udppool/udppooltest/testca"
)

// TestWritePEM: the files WritePEM writes load with tls.LoadX509KeyPair,
// and a server presenting them passes a real TLS handshake over loopback
// TCP with a client that trusts only the CA's PEM; the key file is its
// owner's alone; writing again replaces the pair.
func TestWritePEM(t *testing.T) {
	ca, err := testca.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	first := ca.Server(t)
	if _, _, err := testca.WritePEM(dir, first.Certificate); err != nil {
		t.Fatal(err)
	}
	next := ca.Server(t)
	certFile, keyFile, err := testca.WritePEM(dir, next.Certificate)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Fatalf("key file %s: %v, mode %v; want readable by its owner only", keyFile, err, fi.Mode())
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(cert.Certificate) != 2 || !cert.Leaf.Equal(next.Certificate.Leaf) {
		t.Fatalf("loaded chain of %d, leaf %v; want the second certificate and its CA", len(cert.Certificate), cert.Leaf.Subject)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca.PEM()) {
		t.Fatal("CA PEM does not parse")
	}

	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Skipf("no IPv4 loopback: %v", err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			err = c.(*tls.Conn).Handshake()
			c.Close()
		}
		served <- err
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	got := c.ConnectionState().PeerCertificates[0]
	c.Close()
	if err := <-served; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	if !got.Equal(next.Certificate.Leaf) {
		t.Fatal("server presented another certificate than the one written last")
	}
}

func TestEncodePEMRefusesEmpty(t *testing.T) {
	if _, _, err := testca.EncodePEM(tls.Certificate{}); err == nil {
		t.Fatal("EncodePEM of an empty certificate succeeded")
	}
}
