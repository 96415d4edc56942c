package udppool_test

import (
	"context"
	"crypto/tls"
	"net/netip"
	"testing"

	"github.com/quic-go/quic-go"
	"github.com/udppool/udppool/udppooltest"
)

// TestTicketsPerListener: a client resumes its TLS session on the listener
// that issued it. On a later listener of the same Transport it resumes
// only if the application shares ticket keys between them and the new
// listener presents the same certificate without client CAs: a resumed
// session keeps the certificates of the handshake that made it, so a
// session must never outlive a certificate or client CA change.
func TestTicketsPerListener(t *testing.T) {
	needFamilies(t, v4)
	// A certificate from the same CA, for the same names, but another.
	otherCert, err := certs().CA.Issue(udppooltest.Leaf{Names: []string{"localhost", "127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	other := &udppooltest.Certs{Certificate: otherCert, Roots: certs().Roots, CA: certs().CA}
	sharedKeys := func(conf *tls.Config) *tls.Config {
		conf.SetSessionTicketKeys([][32]byte{{1, 2, 3}})
		return conf
	}
	// Each listener's configuration, by its number from 0.
	same := func(int) *tls.Config { return certs().ServerConfig("echo") }
	for _, tc := range []struct {
		name   string
		conf   func(i int) *tls.Config
		across bool // resumes on the next listener
	}{
		{"own keys", same, false},
		{"own keys, GetConfigForClient", func(int) *tls.Config {
			conf := certs().ServerConfig("echo")
			return &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return conf, nil }, NextProtos: conf.NextProtos}
		}, false},
		{"shared keys, same certificate", func(int) *tls.Config { return sharedKeys(certs().ServerConfig("echo")) }, true},
		{"shared keys, same certificate, GetConfigForClient", func(int) *tls.Config {
			conf := sharedKeys(certs().ServerConfig("echo"))
			return &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return conf, nil }, NextProtos: conf.NextProtos}
		}, true},
		{"shared keys, new certificate", func(i int) *tls.Config {
			conf := certs().ServerConfig("echo")
			if i > 0 {
				conf = other.ServerConfig("echo")
			}
			return sharedKeys(conf)
		}, false},
		{"shared keys, same certificate, client CAs", func(int) *tls.Config {
			conf := sharedKeys(certs().ServerConfig("echo"))
			conf.ClientAuth, conf.ClientCAs = tls.VerifyClientCertIfGiven, certs().Roots
			return conf
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := pool(t)
			tr, err := p.Transport(context.Background(), "udp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			dst := netip.AddrPortFrom(v4, portOf(tr))
			cache := tls.NewLRUClientSessionCache(4)
			resumed := func() bool {
				t.Helper()
				ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
				defer cancel()
				cli := &quic.Transport{Conn: clientConn(t, v4)}
				defer func() { cli.Close(); cli.Conn.Close() }()
				conf := certs().ClientConfig("echo")
				conf.ClientSessionCache = cache
				conn, err := cli.Dial(ctx, udpAddr(v4, dst.Port()), conf, nil)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.CloseWithError(0, "")
				if _, err := streamEcho(ctx, conn); err != nil { // the ticket has come by then
					t.Fatal(err)
				}
				return conn.ConnectionState().TLS.DidResume
			}
			listen := func(i int) func() {
				ln, err := tr.Listen(tc.conf(i), nil)
				if err != nil {
					t.Fatal(err)
				}
				wait := echoServer(ln, "t:")
				return func() { ln.Close(); wait() }
			}
			closeFirst := listen(0)
			resumed()
			if !resumed() {
				closeFirst()
				t.Fatal("no resumption on the listener that issued the ticket: the test proves nothing")
			}
			closeNext := listen(1)
			defer closeNext()
			closeFirst()
			if got := resumed(); got != tc.across {
				t.Errorf("resumed on the next listener: %v, want %v", got, tc.across)
			}
		})
	}
}
