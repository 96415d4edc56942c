package udppooltest_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/udppool/udppool"
	"github.com/udppool/udppool/udppooltest"
	"go.uber.org/goleak"
	"golang.org/x/net/nettest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// recorder is a testing.TB that records failures instead of reporting
// them, and runs its cleanups when told, so that tests can check what the
// helpers report. It embeds a real testing.TB for everything it does not
// override (nil in examples, where none exists).
type recorder struct {
	testing.TB

	mu       sync.Mutex
	cleanups []func()
	errs     []string
	skipped  string
}

// stop is what Fatalf and Skipf panic with: they must end the calling
// function, and runtime.Goexit would end the test (or, in an example, the
// program) instead.
type stop struct{}

func (r *recorder) Helper() {}

func (r *recorder) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recorder) Error(args ...any) { r.Errorf("%s", fmt.Sprint(args...)) }

func (r *recorder) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	panic(stop{})
}

func (r *recorder) Fatal(args ...any) { r.Fatalf("%s", fmt.Sprint(args...)) }

func (r *recorder) Skipf(format string, args ...any) {
	r.mu.Lock()
	r.skipped = fmt.Sprintf(format, args...)
	r.mu.Unlock()
	panic(stop{})
}

func (r *recorder) Skip(args ...any) { r.Skipf("%s", fmt.Sprint(args...)) }

func (r *recorder) Logf(string, ...any) {}

func (r *recorder) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.errs) > 0
}

// finish runs the cleanups, last registered first (also those registered
// by cleanups), as the testing package does at the end of a test.
func (r *recorder) finish() {
	for {
		r.mu.Lock()
		if len(r.cleanups) == 0 {
			r.mu.Unlock()
			return
		}
		f := r.cleanups[len(r.cleanups)-1]
		r.cleanups = r.cleanups[:len(r.cleanups)-1]
		r.mu.Unlock()
		f()
	}
}

func (r *recorder) errors() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.errs...)
}

// run calls fn with the recorder, catching Fatalf and Skipf, then runs the
// cleanups.
func (r *recorder) run(fn func(t testing.TB)) {
	defer r.finish()
	defer func() {
		if v := recover(); v != nil {
			if _, ok := v.(stop); !ok {
				panic(v)
			}
		}
	}()
	fn(r)
}

// canBind reports whether the loopback address of network can be bound.
func canBind(network string) bool {
	c, err := nettest.NewLocalPacketListener(network)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// families lists the loopback families of this machine.
func families(t *testing.T) []string {
	var nets []string
	for _, network := range []string{"udp4", "udp6"} {
		if canBind(network) {
			nets = append(nets, network)
		}
	}
	if len(nets) == 0 {
		t.Skip("this machine has no loopback")
	}
	return nets
}

// exchange sends msg from a to b and returns what b received and from whom.
func exchange(t *testing.T, from, to net.PacketConn, dst net.Addr, msg string) (string, net.Addr) {
	t.Helper()
	if _, err := from.WriteTo([]byte(msg), dst); err != nil {
		t.Fatalf("sending to %v: %v", dst, err)
	}
	to.SetReadDeadline(time.Now().Add(udppooltest.Timeout))
	buf := make([]byte, 1500)
	n, addr, err := to.ReadFrom(buf)
	if err != nil {
		t.Fatalf("receiving on %v: %v", to.LocalAddr(), err)
	}
	return string(buf[:n]), addr
}

func TestLoopback(t *testing.T) {
	for _, network := range []string{"udp4", "udp6", "udp"} {
		t.Run(network, func(t *testing.T) {
			a := udppooltest.Loopback(t, network)
			b := udppooltest.Loopback(t, network)
			want := "127.0.0.1"
			switch {
			case network == "udp6", network == "udp" && !canBind("udp4"):
				want = "::1"
			}
			ip := a.LocalAddr().(*net.UDPAddr).AddrPort().Addr()
			if ip.String() != want {
				t.Fatalf("Loopback(%q) bound %v, want %s", network, a.LocalAddr(), want)
			}
			got, from := exchange(t, b, a, a.LocalAddr(), "ping")
			if got != "ping" || from.(*net.UDPAddr).Port != b.LocalAddr().(*net.UDPAddr).Port {
				t.Fatalf("received %q from %v, want ping from %v", got, from, b.LocalAddr())
			}
		})
	}
}

func TestLoopbackIn(t *testing.T) {
	p := udppooltest.Pool(t)
	for _, network := range families(t) {
		c := udppooltest.LoopbackIn(t, p, network)
		again, err := p.ListenPacket(context.Background(), network, c.LocalAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		if again.Key() != c.Key() {
			t.Fatalf("same address, other socket: %v and %v", again.Key(), c.Key())
		}
		again.Close()
	}
	if st := p.Stats(); len(st) != len(families(t)) {
		t.Fatalf("pool holds %+v", st)
	}
}

func TestLoopbackUnknownNetwork(t *testing.T) {
	r := &recorder{TB: t}
	r.run(func(t testing.TB) { udppooltest.Loopback(t, "tcp") })
	if errs := r.errors(); len(errs) != 1 || !strings.Contains(errs[0], `unknown network "tcp"`) {
		t.Fatalf("Loopback(tcp) reported %q", errs)
	}
}

// handshake runs a TLS handshake over an in-memory pipe and returns the
// client's error.
func handshake(server, client *tls.Config) error {
	err, _ := handshakeBoth(server, client)
	return err
}

// handshakeBoth runs a TLS handshake over an in-memory pipe and returns the
// client's and the server's error. In TLS 1.3 the client finishes before the
// server has checked its certificate, so only the server's error tells
// whether a client certificate was accepted.
func handshakeBoth(server, client *tls.Config) (clientErr, serverErr error) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	srvErr := make(chan error, 1)
	go func() {
		s := tls.Server(c1, server)
		s.SetDeadline(time.Now().Add(udppooltest.Timeout))
		srvErr <- s.Handshake()
		c1.Close() // unblocks a client still waiting, if the server failed
	}()
	c := tls.Client(c2, client)
	c.SetDeadline(time.Now().Add(udppooltest.Timeout))
	err := c.Handshake()
	if err == nil {
		// The server reads the client's certificate after the client's
		// handshake has returned; a read gets its verdict as an alert.
		c.Read(make([]byte, 1))
	}
	c2.Close()
	return err, <-srvErr
}

func TestTLS(t *testing.T) {
	certs := udppooltest.TLS(t, "example.test", "192.0.2.1")
	if err := handshake(certs.ServerConfig("p"), certs.ClientConfig("p")); err != nil {
		t.Fatalf("client trusting the CA: %v", err)
	}
	for _, name := range []string{"example.test", "192.0.2.1", "127.0.0.1", "::1"} {
		conf := certs.ClientConfig("p")
		conf.ServerName = name
		if err := handshake(certs.ServerConfig("p"), conf); err != nil {
			t.Errorf("verifying as %s: %v", name, err)
		}
	}
	conf := certs.ClientConfig("p")
	conf.ServerName = "other.test"
	if err := handshake(certs.ServerConfig("p"), conf); err == nil {
		t.Error("a name outside the certificate verified")
	}
	other := udppooltest.TLS(t)
	if err := handshake(certs.ServerConfig("p"), other.ClientConfig("p")); err == nil {
		t.Error("a client trusting another CA accepted the server")
	}
	if certs.ClientConfig().InsecureSkipVerify {
		t.Error("client skips verification")
	}
}

// TestCA: one CA issues rotated server certificates that one client
// configuration trusts, client certificates a server verifies, and expired,
// not yet valid and wrong-name certificates that verification refuses.
func TestCA(t *testing.T) {
	ca, err := udppooltest.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	first := ca.Server(t)
	client := first.ClientConfig("p")

	// Rotation: a new certificate, with a new key, from the same CA.
	next := ca.Server(t, "example.test")
	if next.CA != ca || first.Certificate.Leaf.SerialNumber.Cmp(next.Certificate.Leaf.SerialNumber) == 0 {
		t.Fatal("Server did not issue a new certificate from the same CA")
	}
	for _, c := range []*udppooltest.Certs{first, next} {
		if err := handshake(c.ServerConfig("p"), client); err != nil {
			t.Errorf("client of the first certificate verifying %v: %v", c.Certificate.Leaf.DNSNames, err)
		}
	}

	// Client certificates.
	mutual := next.ServerConfig("p")
	mutual.ClientCAs = ca.Roots()
	mutual.ClientAuth = tls.RequireAndVerifyClientCert
	withCert := func(cert tls.Certificate) *tls.Config {
		c := first.ClientConfig("p")
		c.Certificates = []tls.Certificate{cert}
		return c
	}
	alice := ca.Client(t, "alice")
	if cerr, serr := handshakeBoth(mutual, withCert(alice)); cerr != nil || serr != nil {
		t.Errorf("client certificate of the CA: client %v, server %v", cerr, serr)
	}
	if got := alice.Leaf.Subject.CommonName; got != "alice" {
		t.Errorf("client certificate for %q", got)
	}
	stranger := udppooltest.TLS(t).CA.Client(t, "mallory")
	if _, serr := handshakeBoth(mutual, withCert(stranger)); serr == nil {
		t.Error("the server accepted a client certificate of another CA")
	}
	if _, serr := handshakeBoth(mutual, withCert(next.Certificate)); serr == nil {
		t.Error("the server accepted a server certificate as a client certificate")
	}

	// Negative cases, each refused for its own reason.
	issue := func(l udppooltest.Leaf) tls.Certificate {
		t.Helper()
		cert, err := ca.Issue(l)
		if err != nil {
			t.Fatalf("Issue(%+v): %v", l, err)
		}
		return cert
	}
	now := time.Now()
	var invalid x509.CertificateInvalidError
	expired := issue(udppooltest.Leaf{Names: []string{"localhost"}, NotAfter: now.Add(-time.Hour)})
	if err := handshake(&tls.Config{Certificates: []tls.Certificate{expired}}, client); !errors.As(err, &invalid) || invalid.Reason != x509.Expired {
		t.Errorf("expired certificate: %v", err)
	}
	early := issue(udppooltest.Leaf{Names: []string{"localhost"}, NotBefore: now.Add(time.Hour), NotAfter: now.Add(2 * time.Hour)})
	if err := handshake(&tls.Config{Certificates: []tls.Certificate{early}}, client); !errors.As(err, &invalid) || invalid.Reason != x509.Expired {
		t.Errorf("certificate not yet valid: %v", err)
	}
	var wrongName x509.HostnameError
	other := issue(udppooltest.Leaf{Names: []string{"other.test", "192.0.2.1"}})
	if err := handshake(&tls.Config{Certificates: []tls.Certificate{other}}, client); !errors.As(err, &wrongName) {
		t.Errorf("wrong-name certificate: %v", err)
	}

	// A pinned key survives a rotation.
	pinned := issue(udppooltest.Leaf{Names: []string{"localhost"}, Key: first.Certificate.PrivateKey.(crypto.Signer)})
	if !bytes.Equal(pinned.Leaf.RawSubjectPublicKeyInfo, first.Certificate.Leaf.RawSubjectPublicKeyInfo) {
		t.Error("a certificate issued for a given key has another public key")
	}
	if err := handshake(&tls.Config{Certificates: []tls.Certificate{pinned}}, client); err != nil {
		t.Errorf("certificate with a pinned key: %v", err)
	}

	if _, err := ca.Issue(udppooltest.Leaf{}); err == nil {
		t.Error("Issue made a certificate without a name")
	}
}

func TestQUICPair(t *testing.T) {
	for _, network := range families(t) {
		t.Run(network, func(t *testing.T) {
			pr := udppooltest.QUICPair(t, udppooltest.WithNetwork(network), udppooltest.WithEcho())
			got := pr.Client.RemoteAddr().(*net.UDPAddr).AddrPort()
			if got = netip.AddrPortFrom(got.Addr().Unmap(), got.Port()); got != pr.Addr || networkOf(got.Addr()) != network {
				t.Fatalf("client connected to %v, pair says %v (%s)", got, pr.Addr, network)
			}
			if !pr.Addr.Addr().IsLoopback() {
				t.Fatalf("pair on %v, not loopback", pr.Addr)
			}
			if pr.Server.RemoteAddr().String() != pr.Client.LocalAddr().String() {
				t.Fatalf("server's peer %v is not the client %v", pr.Server.RemoteAddr(), pr.Client.LocalAddr())
			}
			for i := range 3 {
				msg := bytes.Repeat([]byte(fmt.Sprintf("hello %d over %s ", i, network)), 1+i*1000)
				if got := udppooltest.RoundTrip(t, pr.Client, msg); !bytes.Equal(got, msg) {
					t.Fatalf("echo of %d bytes returned %d bytes", len(msg), len(got))
				}
			}
			if st := pr.Pool.Stats(); len(st) != 1 || st[0].Key.Addr != pr.Addr {
				t.Fatalf("pool holds %+v, want the server's socket on %v", st, pr.Addr)
			}
		})
	}
}

func networkOf(ip netip.Addr) string {
	if ip.Is4() || ip.Is4In6() {
		return "udp4"
	}
	return "udp6"
}

// TestQUICPairOwnServer serves the stream itself instead of echoing.
func TestQUICPairOwnServer(t *testing.T) {
	pr := udppooltest.QUICPair(t, udppooltest.WithALPN("upper"))
	if got := pr.Client.ConnectionState().TLS.NegotiatedProtocol; got != "upper" {
		t.Fatalf("negotiated %q", got)
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), udppooltest.Timeout)
		defer cancel()
		s, err := pr.Server.AcceptStream(ctx)
		if err != nil {
			done <- err
			return
		}
		defer s.Close()
		s.SetDeadline(time.Now().Add(udppooltest.Timeout))
		req, err := io.ReadAll(s) // until the client closes its side
		if err != nil {
			done <- err
			return
		}
		_, err = s.Write(bytes.ToUpper(req))
		done <- err
	}()
	if got := udppooltest.RoundTrip(t, pr.Client, []byte("shout")); string(got) != "SHOUT" {
		t.Fatalf("reply %q", got)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestQUICPairWildcard serves the "udp" wildcard, dual-stack and
// split-stack, to clients of each family.
func TestQUICPairWildcard(t *testing.T) {
	for _, split := range []bool{false, true} {
		for _, network := range families(t) {
			t.Run(fmt.Sprintf("split=%v/%s", split, network), func(t *testing.T) {
				p := udppooltest.Pool(t, udppool.WithSplitStack(split))
				pr := udppooltest.QUICPair(t, udppooltest.WithPool(p), udppooltest.WithNetwork(network),
					udppooltest.WithListenAddr("udp", ":0"), udppooltest.WithEcho(),
					udppooltest.WithQUICConfig(&quic.Config{EnableDatagrams: true}))
				keys := pr.Transport.Keys()
				if split && len(keys) != 2 || !split && (len(keys) != 1 || keys[0].Network != "udp") {
					t.Fatalf("wildcard served by %v", keys)
				}
				if got := udppooltest.RoundTrip(t, pr.Client, []byte("wild")); string(got) != "wild" {
					t.Fatalf("echo %q", got)
				}
				if !pr.Client.ConnectionState().SupportsDatagrams.Remote {
					t.Fatal("WithQUICConfig did not reach the server")
				}
			})
		}
	}
}

// TestHost builds each kind of simulated host, checks that it has exactly
// the families of its kind, sends a datagram from the client machine to a
// pooled socket of the server machine over each family, and runs a QUIC
// round trip over each family, to the server's address and to the wildcard.
func TestHost(t *testing.T) {
	for _, kind := range udppooltest.HostKinds() {
		t.Run(kind.String(), func(t *testing.T) {
			h := udppooltest.Host(t, kind)
			type family struct {
				network        string
				server, client netip.Addr
				has            bool
				missing        string // an address the server must not have
			}
			fams := []family{
				{"udp4", h.ServerV4, h.ClientV4, kind.HasIPv4(), "127.0.0.1"},
				{"udp6", h.ServerV6, h.ClientV6, kind.HasIPv6(), "::1"},
			}
			for _, f := range fams {
				if f.server.IsValid() != f.has || f.client.IsValid() != f.has {
					t.Fatalf("%s addresses %v, %v on a %v host", f.network, f.server, f.client, kind)
				}
				if f.has {
					continue
				}
				// The family is really absent: not even loopback binds.
				err := h.InServer(func() error {
					c, err := net.ListenPacket(f.network, net.JoinHostPort(f.missing, "0"))
					if err == nil {
						c.Close()
					}
					return err
				})
				if err == nil {
					t.Errorf("bound %s on a %v host", f.missing, kind)
				}
			}

			p := udppooltest.Pool(t)
			for _, f := range fams {
				if !f.has {
					continue
				}
				var srv *udppool.Conn
				var cli net.PacketConn
				err := h.InServer(func() (err error) {
					srv, err = p.ListenPacket(context.Background(), f.network, netip.AddrPortFrom(f.server, 0).String())
					return err
				})
				if err != nil {
					t.Fatalf("server socket: %v", err)
				}
				defer srv.Close()
				if err := h.InClient(func() (err error) {
					cli, err = net.ListenPacket(f.network, netip.AddrPortFrom(f.client, 0).String())
					return err
				}); err != nil {
					t.Fatalf("client socket: %v", err)
				}
				defer cli.Close()
				got, from := exchange(t, cli, srv, srv.LocalAddr(), "over "+f.network)
				if got != "over "+f.network || from.(*net.UDPAddr).AddrPort() != cli.LocalAddr().(*net.UDPAddr).AddrPort() {
					t.Fatalf("received %q from %v, want it from %v", got, from, cli.LocalAddr())
				}

				for _, wildcard := range []bool{false, true} {
					opts := []udppooltest.PairOption{udppooltest.WithHost(h), udppooltest.WithNetwork(f.network), udppooltest.WithEcho()}
					if wildcard {
						opts = append(opts, udppooltest.WithListenAddr("udp", ":0"))
					}
					pr := udppooltest.QUICPair(t, opts...)
					if pr.Addr.Addr() != f.server || pr.ClientConn.LocalAddr().(*net.UDPAddr).AddrPort().Addr() != f.client {
						t.Fatalf("pair from %v to %v, want %v to %v", pr.ClientConn.LocalAddr(), pr.Addr, f.client, f.server)
					}
					msg := fmt.Sprintf("quic over %s on a %v host (wildcard %v)", f.network, kind, wildcard)
					if got := udppooltest.RoundTrip(t, pr.Client, []byte(msg)); string(got) != msg {
						t.Fatalf("echo %q", got)
					}
				}
			}
			// A family the host lacks is a mistake of the test, not a skip.
			for _, f := range fams {
				if f.has {
					continue
				}
				r := &recorder{TB: t}
				r.run(func(rt testing.TB) {
					udppooltest.QUICPair(rt, udppooltest.WithHost(h), udppooltest.WithNetwork(f.network))
				})
				if errs := r.errors(); len(errs) != 1 || !strings.Contains(errs[0], "has no "+f.network) {
					t.Errorf("QUICPair over %s on a %v host reported %q", f.network, kind, errs)
				}
			}
		})
	}
}

func TestNoLeaks(t *testing.T) {
	network := families(t)[0]

	t.Run("clean", func(t *testing.T) {
		r := &recorder{TB: t}
		r.run(func(t testing.TB) {
			p := udppooltest.Pool(t)
			udppooltest.LoopbackIn(t, p, network) // released by its cleanup
			c := udppooltest.LoopbackIn(t, p, network)
			c.Close() // released early; its cleanup's Close is harmless
		})
		if errs := r.errors(); len(errs) != 0 {
			t.Fatalf("leaks reported for a clean test: %q", errs)
		}
	})

	t.Run("reference", func(t *testing.T) {
		r := &recorder{TB: t}
		var leaked *udppool.Conn
		r.run(func(t testing.TB) {
			p := udppooltest.Pool(t)
			c := udppooltest.LoopbackIn(t, p, network) // released at cleanup
			var err error
			leaked, err = p.ListenPacket(context.Background(), network, c.LocalAddr().String())
			if err != nil {
				t.Fatal(err)
			}
		})
		defer leaked.Close() // the reference is released after all
		errs := r.errors()
		if len(errs) != 1 || !strings.Contains(errs[0], "pool still holds 1 socket") || !strings.Contains(errs[0], leaked.Key().String()) {
			t.Fatalf("leaked reference to %v reported as %q", leaked.Key(), errs)
		}
		// Pool closed the pool after the check: the leaked handle is dead.
		if _, err := leaked.WriteTo([]byte("x"), leaked.LocalAddr()); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("handle of a closed pool: %v", err)
		}
	})

	t.Run("listener", func(t *testing.T) {
		p := udppool.New()
		defer p.Close()
		r := &recorder{TB: t}
		var tr *udppool.Transport
		var ln *udppool.Listener
		r.run(func(t testing.TB) {
			udppooltest.NoLeaks(t, p)
			conn := udppooltest.LoopbackIn(t, p, network) // only for its address
			addr := conn.LocalAddr().String()
			conn.Close() // a socket is plain or QUIC, never both
			var err error
			if tr, err = p.Transport(context.Background(), network, addr); err != nil {
				t.Fatal(err)
			}
			if ln, err = tr.Listen(udppooltest.TLS(t).ServerConfig("x"), nil); err != nil {
				t.Fatal(err)
			}
			tr.Close() // the Listener keeps the transport open
		})
		// The socket, quic-go's goroutines and the descriptor are all still
		// there.
		errs := r.errors()
		want := []string{"pool still holds 1 socket", "goroutines leaked", "1 file descriptor(s) leaked"}
		if _, err := os.Stat("/proc/self/fd"); err != nil {
			want = want[:2]
		}
		if len(errs) != len(want) {
			t.Fatalf("leaked Listener reported as %q, want %q", errs, want)
		}
		for i, w := range want {
			if !strings.Contains(errs[i], w) {
				t.Fatalf("leaked Listener reported as %q, want %q", errs, want)
			}
		}
		ln.Close()
		if st := p.Stats(); len(st) != 0 {
			t.Fatalf("closing the listener left %+v", st)
		}
	})

	t.Run("goroutine", func(t *testing.T) {
		r := &recorder{TB: t}
		release := make(chan struct{})
		done := make(chan struct{})
		r.run(func(t testing.TB) {
			udppooltest.NoLeaks(t, nil)
			go func() {
				defer close(done)
				<-release
			}()
		})
		close(release)
		<-done
		if errs := r.errors(); len(errs) != 1 || !strings.Contains(errs[0], "goroutines leaked") || !strings.Contains(errs[0], "TestNoLeaks") {
			t.Fatalf("leaked goroutine reported as %q", errs)
		}
	})

	t.Run("descriptor", func(t *testing.T) {
		if _, err := os.Stat("/proc/self/fd"); err != nil {
			t.Skip("descriptors are checked on Linux only")
		}
		name := filepath.Join(t.TempDir(), "leaked")
		if err := os.WriteFile(name, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		r := &recorder{TB: t}
		var f *os.File
		r.run(func(t testing.TB) {
			udppooltest.NoLeaks(t, nil)
			var err error
			if f, err = os.Open(name); err != nil {
				t.Fatal(err)
			}
		})
		defer f.Close()
		if errs := r.errors(); len(errs) != 1 || !strings.Contains(errs[0], "1 file descriptor(s) leaked") || !strings.Contains(errs[0], f.Name()) {
			t.Fatalf("leaked descriptor of %s reported as %q", f.Name(), errs)
		}
	})
}

// TestNoLeaksOrder checks the documented order: NoLeaks called after the
// resource it checks is created sees it still held.
func TestNoLeaksOrder(t *testing.T) {
	network := families(t)[0]
	p := udppool.New()
	defer p.Close()
	r := &recorder{TB: t}
	r.run(func(t testing.TB) {
		udppooltest.LoopbackIn(t, p, network)
		udppooltest.NoLeaks(t, p) // too late: runs before the handle's cleanup
	})
	if errs := r.errors(); len(errs) != 1 || !strings.Contains(errs[0], "pool still holds") {
		t.Fatalf("NoLeaks called last reported %q", errs)
	}
	if st := p.Stats(); len(st) != 0 {
		t.Fatalf("handle not released by its cleanup: %+v", st)
	}
}

// TestPEMFiles: the files load as the key pair they were written from.
func TestPEMFiles(t *testing.T) {
	certs := udppooltest.TLS(t)
	certFile, keyFile := udppooltest.PEMFiles(t, certs.Certificate)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if !cert.Leaf.Equal(certs.Certificate.Leaf) {
		t.Fatal("PEM files hold another certificate")
	}
}
