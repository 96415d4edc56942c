package udppool_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"testing"

	"github.com/quic-go/quic-go"
	"github.com/udppool/udppool"
	"github.com/udppool/udppool/internal/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// dualHosts returns a dual-stack server and client joined by a link, in
// namespaces of their own; it skips where namespaces are not allowed.
func dualHosts(t *testing.T) *netns.Hosts {
	t.Helper()
	if err := netns.Available(); err != nil {
		t.Skip(err)
	}
	h, err := netns.NewHosts(netns.DualStack)
	if err != nil {
		if errors.Is(err, netns.ErrUnsupported) {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// setAddr adds or removes one of a namespace's addresses on the link.
func setAddr(t *testing.T, n *netns.NS, a netip.Addr, add bool) {
	t.Helper()
	bits := 24
	if a.Is6() {
		bits = 64
	}
	err := n.Netlink(func(nl *netlink.Handle) error {
		link, err := nl.LinkByName(netns.Iface)
		if err != nil {
			return err
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, a.BitLen())}}
		if a.Is6() {
			addr.Flags = 0x02 // IFA_F_NODAD: usable at once
		}
		if add {
			return nl.AddrAdd(link, addr)
		}
		return nl.AddrDel(link, addr)
	})
	if err != nil {
		t.Fatalf("changing %v: %v", a, err)
	}
}

// TestRemovedAddress: a wildcard server loses the address a live
// connection uses (renumbering, a virtual address that moved), while the
// link keeps its prefix through another address. quic-go's replies name
// the removed address as their source (packet info), and the kernel
// refuses them with EINVAL, which says nothing about the socket: the
// socket stays, the server goes on serving its other addresses, and once
// the address is back new handshakes to it succeed. (The connection that
// used it ends, as quic-go ends any connection whose send fails, pooled or
// not.)
func TestRemovedAddress(t *testing.T) {
	for _, network := range []string{"udp6", "udp"} {
		t.Run(network, func(t *testing.T) { removedAddress(t, network) })
	}
}

func removedAddress(t *testing.T, network string) {
	h := dualHosts(t)
	var p *udppool.Pool
	var tr *udppool.Transport
	if err := h.Server.Do(func() error {
		p = pool(t)
		var err error
		tr, err = p.Transport(context.Background(), network, ":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ln, err := tr.Listen(certs().ServerConfig("echo"), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
	defer cancel()
	// Enough live connections for the eight failed sends in a row that
	// used to kill a socket.
	const n = 12
	if err := h.Client.Do(func() error {
		for range n {
			cli := &quic.Transport{Conn: clientConn(t, h.ClientV6)}
			conn, err := cli.Dial(ctx, udpAddr(h.ServerV6, portOf(tr)), certs().ClientConfig("echo"), nil)
			if err != nil {
				return err
			}
			t.Cleanup(func() { conn.CloseWithError(0, ""); cli.Close(); cli.Conn.Close() })
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var live []*quic.Conn
	for range n {
		conn, err := ln.Accept(ctx)
		if err != nil {
			t.Fatal(err)
		}
		live = append(live, conn)
	}
	wait := echoServer(ln, "srv:")
	defer func() { ln.Close(); wait() }()

	// Another address keeps the link's prefix and route.
	other := netip.MustParseAddr("2001:db8::3")
	setAddr(t, h.Server, other, true)
	setAddr(t, h.Server, h.ServerV6, false)
	// The server sends on every connection; its packets name the removed
	// address as their source and fail.
	for _, conn := range live {
		if st, err := conn.OpenStream(); err == nil {
			st.Write([]byte("from the server"))
		}
	}
	waitFor(t, "replies from the removed address to fail", func() bool {
		st := p.Stats()
		return len(st) == 1 && st[0].SendErrors[unix.EINVAL.Error()] >= n
	})
	if st := p.Stats(); st[0].Dead != nil {
		t.Fatalf("socket killed by a removed address: %v", st[0].Dead)
	} else {
		t.Logf("send errors: %v", st[0].SendErrors)
	}
	// The other addresses still serve.
	others := []netip.AddrPort{netip.AddrPortFrom(other, portOf(tr))}
	if network == "udp" {
		others = append(others, netip.AddrPortFrom(h.ServerV4, portOf(tr)))
	}
	// The address comes back, and serves again on the same socket.
	for i, dst := range append(others, netip.AddrPortFrom(h.ServerV6, portOf(tr))) {
		if i == len(others) {
			setAddr(t, h.Server, h.ServerV6, true)
		}
		local := h.ClientV6
		if dst.Addr().Is4() {
			local = h.ClientV4
		}
		if err := h.Client.Do(func() error {
			ctx, cancel := context.WithTimeout(context.Background(), quicTimeout)
			defer cancel()
			tag, conn, ctr, err := roundTrip(ctx, clientConn(t, local), dst, "echo")
			if err != nil {
				return err
			}
			conn.CloseWithError(0, "")
			ctr.Close()
			ctr.Conn.Close()
			if tag != "srv:" {
				return errors.New("reached " + tag)
			}
			return nil
		}); err != nil {
			t.Fatalf("handshake with %v: %v", dst, err)
		}
	}
	if st := p.Stats(); len(st) != 1 || st[0].Dead != nil {
		t.Fatalf("stats: %+v", st)
	}
}

// TestUnroutableSends: sends to a destination without a route fail with
// ENETUNREACH, alone. (In a namespace, so the datagrams cannot leave the
// machine even if a route appeared.)
func TestUnroutableSends(t *testing.T) {
	h := dualHosts(t)
	err := h.Server.Do(func() error {
		p := pool(t)
		c, err := p.ListenPacket(context.Background(), "udp", ":0")
		if err != nil {
			return err
		}
		defer c.Close()
		for _, dst := range []string{"198.51.100.1:9", "[2001:db8:ffff::1]:9"} {
			for range 20 {
				if _, err := c.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(netip.MustParseAddrPort(dst))); err == nil {
					t.Errorf("send to unroutable %s succeeded", dst)
				}
			}
		}
		// The socket still works.
		if _, err := c.WriteTo([]byte("x"), udpAddr(h.ClientV4, 9)); err != nil {
			t.Errorf("send on the link after unroutable ones: %v", err)
		}
		if st := p.Stats(); len(st) != 1 || st[0].Dead != nil || len(st[0].SendErrors) == 0 {
			t.Errorf("stats: %+v", st)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestLinkLocalZoneSpellings: a link-local address named by interface name
// or by index is one socket, keyed by index, as the kernel binds it.
func TestLinkLocalZoneSpellings(t *testing.T) {
	h := dualHosts(t)
	err := h.Server.Do(func() error {
		ifi, err := net.InterfaceByName(netns.Iface)
		if err != nil {
			return err
		}
		// A link-local address of our own, without duplicate address
		// detection, so that it can be bound at once.
		ll := netip.MustParseAddr("fe80::1:1")
		setAddr(t, h.Server, ll, true)
		p := pool(t)
		byName, err := p.ListenPacket(context.Background(), "udp6", "["+ll.String()+"%"+netns.Iface+"]:0")
		if err != nil {
			return err
		}
		defer byName.Close()
		want := ll.WithZone(strconv.Itoa(ifi.Index))
		if byName.Key().Addr.Addr() != want {
			t.Errorf("key %v, want address %v", byName.Key(), want)
		}
		byIndex, err := p.ListenPacket(context.Background(), "udp6", netip.AddrPortFrom(want, byName.Key().Addr.Port()).String())
		if err != nil {
			return err
		}
		defer byIndex.Close()
		if st := p.Stats(); len(st) != 1 || st[0].Refs != 2 {
			t.Errorf("two spellings of one link-local socket: %+v", st)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
