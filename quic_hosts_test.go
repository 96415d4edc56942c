package udppool_test

import (
	"context"
	"net"
	"net/netip"
	"testing"

	"github.com/udppool/udppool"
	"github.com/udppool/udppool/udppooltest"
)

// TestHandshakeOnSimulatedHosts serves a "udp" wildcard inside an IPv4-only,
// an IPv6-only and a dual-stack host, and handshakes from the client host
// over every family that host has, and from the server's own loopback. On
// the IPv6-only host loopback lacks 127.0.0.1, where net.ListenPacket("udp",
// ":P") would bind IPv4 only and leave IPv6 clients unanswered.
func TestHandshakeOnSimulatedHosts(t *testing.T) {
	for _, kind := range udppooltest.HostKinds() {
		for _, split := range []bool{false, true} {
			name := kind.String()
			if split {
				name += "/split-stack"
			}
			t.Run(name, func(t *testing.T) {
				h := udppooltest.Host(t, kind)
				var p *udppool.Pool
				var tr *udppool.Transport
				err := h.InServer(func() error {
					// Every socket of the server is created inside its
					// namespace; the Transport binds them all here.
					p = pool(t, udppool.WithSplitStack(split))
					var err error
					tr, _ = serve(t, p, "udp", ":0")
					return err
				})
				if err != nil {
					t.Fatal(err)
				}
				if want := map[bool]int{false: 1, true: 2}[split]; len(tr.Keys()) != want || !split && tr.Keys()[0].Network != "udp" {
					t.Fatalf("%v host: wildcard served by %v", kind, tr.Keys())
				}
				port := portOf(tr)
				type path struct {
					in          func(func() error) error // the host the client runs on
					local, dest netip.Addr
				}
				var paths []path
				if kind.HasIPv4() {
					paths = append(paths,
						path{h.InClient, h.ClientV4, h.ServerV4},
						path{h.InServer, v4, v4})
				}
				if kind.HasIPv6() {
					paths = append(paths,
						path{h.InClient, h.ClientV6, h.ServerV6},
						path{h.InServer, v6, v6})
				}
				for _, pa := range paths {
					var uc *net.UDPConn
					if err := pa.in(func() error {
						c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(pa.local, 0)))
						uc = c
						return err
					}); err != nil {
						t.Fatalf("client socket on %v: %v", pa.local, err)
					}
					ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
					tag, conn, ctr, err := roundTrip(ctx, uc, netip.AddrPortFrom(pa.dest, port), "echo")
					cancel()
					if err != nil {
						uc.Close()
						t.Fatalf("%v host, server keys %v: handshake from %v to %v: %v", kind, tr.Keys(), pa.local, pa.dest, err)
					}
					if tag != "srv:" {
						t.Errorf("reached %q", tag)
					}
					conn.CloseWithError(0, "")
					ctr.Close()
					uc.Close()
				}
			})
		}
	}
}
