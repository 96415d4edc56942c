package udppooltest

import (
	"crypto/tls"
	"testing"

	"github.com/udppool/udppool/udppooltest/testca"
)

// A CA is a throw-away certificate authority; see testca.CA, which
// programs that are not tests use directly so as not to link the testing
// package.
type CA = testca.CA

// A Leaf describes a certificate for (*CA).Issue; see testca.Leaf.
type Leaf = testca.Leaf

// Certs are a server certificate and the CA that issued it; see
// testca.Certs.
type Certs = testca.Certs

// NewCA makes a fresh CA, as testca.NewCA does. It takes no testing.TB and
// returns its error.
func NewCA() (*CA, error) { return testca.NewCA() }

// TLS makes a fresh CA and a server certificate from it, as (*CA).Server
// does, for "localhost", 127.0.0.1, ::1 and any extra DNS names or IP
// addresses given. It fails the test if the keys cannot be generated.
func TLS(t testing.TB, extra ...string) *Certs {
	t.Helper()
	ca, err := NewCA()
	if err != nil {
		t.Fatalf("%v", err)
	}
	return ca.Server(t, extra...)
}

// PEMFiles writes cert (its chain, leaf first, and its private key) as
// two PEM files in a directory of t's (t.TempDir) and returns their
// paths, for a test that starts a program with flags such as -cert and
// -key. The files go with the directory when the test ends. It fails the
// test if they cannot be written.
func PEMFiles(t testing.TB, cert tls.Certificate) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile, err := testca.WritePEM(t.TempDir(), cert)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return certFile, keyFile
}
