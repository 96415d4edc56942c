package testca

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// PEM returns the CA's certificate in PEM form, for a client program that
// takes the roots it trusts as a file (or a browser told to trust it).
func (ca *CA) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Certificate.Raw})
}

// EncodePEM returns cert's chain (leaf first, as tls.X509KeyPair reads it)
// and its private key (PKCS #8) in PEM form.
func EncodePEM(cert tls.Certificate) (certPEM, keyPEM []byte, err error) {
	if len(cert.Certificate) == 0 || cert.PrivateKey == nil {
		return nil, nil, errors.New("testca: certificate without chain or private key")
	}
	for _, der := range cert.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return nil, nil, fmt.Errorf("testca: private key: %w", err)
	}
	return certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// WritePEM writes cert as cert.pem (the chain) and key.pem (the private
// key, readable by its owner only) in dir, as tls.LoadX509KeyPair reads
// them, and returns their paths. Files already there are replaced, so a
// test rotates a running program's certificate by writing again; the key
// goes first, so a program that reads the pair in between fails that one
// read with a mismatch rather than loading a stale key for good.
func WritePEM(dir string, cert tls.Certificate) (certFile, keyFile string, err error) {
	certPEM, keyPEM, err := EncodePEM(cert)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return "", "", fmt.Errorf("testca: %w", err)
	}
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		return "", "", fmt.Errorf("testca: %w", err)
	}
	return certFile, keyFile, nil
}
