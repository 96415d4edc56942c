package udppool_test

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"

	"github.com/quic-go/quic-go"
	"github.com/udppool/udppool"
	"golang.org/x/sys/unix"
)

// spoofer sends UDP datagrams with a forged source port from a raw socket,
// as an off-path attacker can. It skips the test where raw sockets are not
// allowed (they need CAP_NET_RAW).
type spoofer struct{ fd4, fd6 int }

func newSpoofer(t *testing.T) *spoofer {
	t.Helper()
	fd4, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_UDP)
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		t.Skipf("raw sockets need CAP_NET_RAW: %v", err)
	}
	if err != nil {
		t.Fatalf("raw IPv4 socket: %v", err)
	}
	s := &spoofer{fd4: fd4, fd6: -1}
	t.Cleanup(func() { unix.Close(s.fd4) })
	if fd6, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_UDP); err == nil {
		// IPv6 requires the UDP checksum: let the kernel fill it in.
		if err := unix.SetsockoptInt(fd6, unix.IPPROTO_IPV6, unix.IPV6_CHECKSUM, 6); err != nil {
			unix.Close(fd6)
			t.Fatalf("IPV6_CHECKSUM: %v", err)
		}
		s.fd6 = fd6
		t.Cleanup(func() { unix.Close(s.fd6) })
	}
	return s
}

// send sends payload to dst from source port src, the source address being
// the loopback address the kernel picks.
func (s *spoofer) send(t *testing.T, src uint16, dst netip.AddrPort, payload []byte) {
	t.Helper()
	pkt := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(pkt[0:], src)
	binary.BigEndian.PutUint16(pkt[2:], dst.Port())
	binary.BigEndian.PutUint16(pkt[4:], uint16(len(pkt)))
	copy(pkt[8:], payload) // IPv4: checksum 0 means none
	var err error
	if dst.Addr().Is4() {
		err = unix.Sendto(s.fd4, pkt, 0, &unix.SockaddrInet4{Addr: dst.Addr().As4()})
	} else {
		if s.fd6 < 0 {
			t.Skip("no raw IPv6 socket")
		}
		err = unix.Sendto(s.fd6, pkt, 0, &unix.SockaddrInet6{Addr: dst.Addr().As16()})
	}
	if err != nil {
		t.Fatalf("spoofed send to %v: %v", dst, err)
	}
}

// unknownVersionInitial is a long-header packet of a version nobody
// speaks, padded to 1200 bytes: quic-go answers it with a Version
// Negotiation packet to its source address.
func unknownVersionInitial() []byte {
	b := make([]byte, 1200)
	b[0] = 0xc0
	binary.BigEndian.PutUint32(b[1:], 0x1a2a3a4a)
	b[5] = 8
	rand.Read(b[6:14])
	b[14] = 8
	rand.Read(b[15:23])
	return b
}

// clientInitial captures the first datagram a real quic-go client sends
// (its Initial) by dialling a plain UDP socket.
func clientInitial(t *testing.T, family netip.Addr) []byte {
	t.Helper()
	sink := clientConn(t, family)
	defer sink.Close()
	cli := clientConn(t, family)
	tr := &quic.Transport{Conn: cli}
	defer cli.Close()
	defer tr.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go tr.Dial(ctx, sink.LocalAddr(), certs().ClientConfig("echo"), nil)
	buf := make([]byte, 1<<16)
	sink.SetReadDeadline(deadline())
	n, _, err := sink.ReadFrom(buf)
	if err != nil {
		t.Fatalf("capturing a client Initial: %v", err)
	}
	return buf[:n]
}

// TestSpoofedSourcePortZero: QUIC packets with a forged source port of 0
// make quic-go reply to port 0, which the kernel refuses with EINVAL. The
// failures are counted, and nothing else happens: the socket stays, a live
// connection keeps working and new handshakes succeed. (It was a remote
// off switch: the socket used to be closed after eight such failures.)
func TestSpoofedSourcePortZero(t *testing.T) {
	cases := []struct {
		name, network, address string
		families               []netip.Addr
	}{
		{"udp4", "udp4", "127.0.0.1:0", []netip.Addr{v4}},
		{"dual-stack", "udp", ":0", []netip.Addr{v4, v6}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			needFamilies(t, tc.families...)
			spoof := newSpoofer(t)
			p := pool(t)
			tr, _ := serve(t, p, tc.network, tc.address)
			ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
			defer cancel()
			first := tc.families[0]
			_, live, ltr, err := roundTrip(ctx, clientConn(t, first), netip.AddrPortFrom(first, portOf(tr)), "echo")
			if err != nil {
				t.Fatal(err)
			}
			defer func() { live.CloseWithError(0, ""); ltr.Close(); ltr.Conn.Close() }()

			initials := make(map[netip.Addr][]byte)
			for _, fam := range tc.families {
				initials[fam] = clientInitial(t, fam)
			}
			// Keep sending until quic-go's replies have failed more often
			// than the eight in a row that used to kill the socket.
			waitFor(t, "replies to port 0 to fail", func() bool {
				for _, fam := range tc.families {
					dst := netip.AddrPortFrom(fam, portOf(tr))
					for range 5 {
						spoof.send(t, 0, dst, unknownVersionInitial())
						spoof.send(t, 0, dst, initials[fam])
					}
				}
				st := p.Stats()
				return len(st) == 1 && st[0].SendErrors[unix.EINVAL.Error()] >= 20
			})
			if st := p.Stats(); st[0].Dead != nil {
				t.Fatalf("socket killed by spoofed packets: %v", st[0].Dead)
			}
			if _, err := streamEcho(ctx, live); err != nil {
				t.Fatalf("live connection after the attack: %v", err)
			}
			for _, fam := range tc.families {
				if tag := handshake(t, fam, netip.AddrPortFrom(fam, portOf(tr)), "echo"); tag != "srv:" {
					t.Fatalf("handshake from %v after the attack: %q", fam, tag)
				}
			}
			t.Logf("send errors counted: %v", p.Stats()[0].SendErrors)
		})
	}
}

// TestBadSendsFailAlone: sends that fail because of their arguments, from
// a plain handle or a Transport, fail alone: other handles of the socket,
// and the QUIC service on it, go on.
func TestBadSendsFailAlone(t *testing.T) {
	needFamilies(t, v4)
	p := pool(t)
	a, err := p.ListenPacket(context.Background(), "udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := p.ListenPacket(context.Background(), "udp4", a.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	badCmsg := make([]byte, unix.CmsgSpace(4))
	for i := range badCmsg {
		badCmsg[i] = 0xff
	}
	var typedNil *net.UDPAddr
	bad := map[string]func() error{
		"nil address":      func() error { _, err := a.WriteTo([]byte("x"), nil); return err },
		"typed nil":        func() error { _, err := a.WriteTo([]byte("x"), typedNil); return err },
		"*net.IPAddr":      func() error { _, err := a.WriteTo([]byte("x"), &net.IPAddr{IP: net.IPv4(127, 0, 0, 1)}); return err },
		"port 0":           func() error { _, err := a.WriteTo([]byte("x"), udpAddr(v4, 0)); return err },
		"IPv6 destination": func() error { _, err := a.WriteTo([]byte("x"), udpAddr(v6, 9)); return err },
		"oversized":        func() error { _, err := a.WriteTo(make([]byte, 70000), b.LocalAddr()); return err },
		"malformed cmsg": func() error {
			_, _, err := a.WriteMsgUDP([]byte("x"), badCmsg, b.LocalAddr().(*net.UDPAddr))
			return err
		},
		"connected write": func() error { _, err := a.Write([]byte("x")); return err },
	}
	for name, send := range bad {
		for range 20 {
			if err := send(); err == nil {
				t.Fatalf("%s: send succeeded", name)
			} else if errors.Is(err, udppool.ErrSocketDead) {
				t.Fatalf("%s: socket declared dead: %v", name, err)
			}
		}
	}
	// Both handles still work.
	if _, err := a.WriteTo([]byte("still here"), b.LocalAddr()); err != nil {
		t.Fatalf("good send after bad ones: %v", err)
	}
	b.SetReadDeadline(deadline())
	buf := make([]byte, 32)
	if n, _, err := b.ReadFrom(buf); err != nil || string(buf[:n]) != "still here" {
		t.Fatalf("other handle after bad sends: %q, %v", buf[:n], err)
	}
	if st := p.Stats(); len(st) != 1 || st[0].Dead != nil || len(st[0].SendErrors) == 0 {
		t.Fatalf("stats after bad sends: %+v", st)
	}
	a.Close()
	b.Close()

	// The same through a Transport's non-QUIC path, while it serves QUIC.
	tr, _ := serve(t, p, "udp4", "127.0.0.1:0")
	trBad := []net.Addr{nil, typedNil, &net.IPAddr{IP: net.IPv4(127, 0, 0, 1)}, udpAddr(v4, 0), &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}}
	for _, addr := range trBad {
		for range 20 {
			if _, err := tr.WriteTo([]byte("x"), addr); err == nil {
				t.Fatalf("Transport.WriteTo(%#v) succeeded", addr)
			}
		}
		if _, err := tr.Dial(context.Background(), addr, certs().ClientConfig("echo"), nil); err == nil {
			t.Fatalf("Transport.Dial(%#v) succeeded", addr)
		}
	}
	if tag := handshake(t, v4, netip.AddrPortFrom(v4, portOf(tr)), "echo"); tag != "srv:" {
		t.Fatalf("handshake after bad sends: %q", tag)
	}
}

// TestTransportFailureNoticed: quic-go ends its transport, and every
// connection on it, on a read error it does not retry. With IP_RECVERR on
// (set here through WithControl, as a user may), an ICMP port unreachable
// for a packet the server sent is such an error, and anyone can make a
// server send to a closed port. The pool notices: Accept returns an error
// that says so instead of waiting forever, and the next Transport request
// for the address gets a working transport.
func TestTransportFailureNoticed(t *testing.T) {
	needFamilies(t, v4)
	recvErr := func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVERR, 1) })
		return errors.Join(err, serr)
	}
	p := pool(t, udppool.WithControl(recvErr))
	tr := transport(t, p, "udp4", "127.0.0.1:0")
	ln, err := tr.Listen(certs().ServerConfig("echo"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
		defer cancel()
		_, err := ln.Accept(ctx)
		accepted <- err
	}()
	closed := clientConn(t, v4)
	closedAddr := closed.LocalAddr()
	closed.Close()
	// failed checks what Accept returned once quic-go's transport failed,
	// and that the next Transport for the address serves.
	failed := func(err error) {
		t.Helper()
		if !errors.Is(err, quic.ErrServerClosed) || !strings.Contains(err.Error(), "connection refused") {
			t.Fatalf("Accept on a failed transport: %v, want quic.ErrServerClosed with the cause", err)
		}
		t.Logf("Accept: %v", err)
		fresh, _ := serve(t, p, "udp4", tr.LocalAddr().String())
		if tag := handshake(t, v4, netip.AddrPortFrom(v4, portOf(fresh)), "echo"); tag != "srv:" {
			t.Fatalf("handshake on a new transport: %q", tag)
		}
	}
	// The Initials to the closed port come back as ICMP errors, which the
	// kernel reports on the socket's next send or receive: on a send only
	// the dialling connection fails, on a receive quic-go's transport.
	for range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), quicTimeout/10)
		_, err := tr.Dial(ctx, closedAddr, certs().ClientConfig("echo"), nil)
		cancel()
		if err == nil {
			t.Fatal("dial to a closed port succeeded")
		}
		select {
		case err := <-accepted:
			failed(err)
			return
		default:
		}
	}
	// So far every error was reported on a send. Either the transport
	// still serves, or an error reaches its reader now and Accept says so.
	cli := &quic.Transport{Conn: clientConn(t, v4)}
	defer cli.Conn.Close()
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
	defer cancel()
	conn, err := cli.Dial(ctx, udpAddr(v4, portOf(tr)), certs().ClientConfig("echo"), nil)
	if err != nil {
		failed(<-accepted) // Accept's own context bounds the wait
		return
	}
	defer conn.CloseWithError(0, "")
	if err := <-accepted; err != nil {
		t.Fatalf("Accept: %v", err)
	}
}
