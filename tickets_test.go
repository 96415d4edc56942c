package udppool_test

import (
	"context"
	"crypto/tls"
	"net/netip"
	"testing"

	"github.com/quic-go/quic-go"
	"github.com/udppool/udppool"
)

// TestTicketsPerListener: a client resumes its TLS session on the listener
// that issued it, but not on a later listener of the same Transport (a
// resumed session would keep the earlier certificate), unless the
// application set the ticket keys itself; the same holds for a
// configuration returned by GetConfigForClient.
func TestTicketsPerListener(t *testing.T) {
	needV4(t)
	shared := func(conf *tls.Config) *tls.Config {
		conf.SessionTicketKey = [32]byte{1, 2, 3}
		return conf
	}
	viaCallback := func(conf *tls.Config) *tls.Config {
		return &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return conf, nil }, NextProtos: conf.NextProtos}
	}
	for _, tc := range []struct {
		name   string
		conf   func(*tls.Config) *tls.Config
		across bool // resumes on the next listener
	}{
		{"default keys", func(c *tls.Config) *tls.Config { return c }, false},
		{"GetConfigForClient", viaCallback, false},
		{"keys set by the application", shared, true},
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
			listen := func() (*udppool.Listener, func()) {
				ln, err := tr.Listen(tc.conf(certs().ServerConfig("echo")), nil)
				if err != nil {
					t.Fatal(err)
				}
				wait := echoServer(ln, "t:")
				return ln, func() { ln.Close(); wait() }
			}
			_, closeFirst := listen()
			resumed()
			if !resumed() {
				t.Fatal("no resumption on the listener that issued the ticket: the test proves nothing")
			}
			_, closeNext := listen()
			defer closeNext()
			closeFirst()
			if got := resumed(); got != tc.across {
				t.Errorf("resumed on the next listener: %v, want %v", got, tc.across)
			}
		})
	}
}
