//go:build linux

package netns

import (
	"bytes"
	"errors"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

func skipUnlessAvailable(t *testing.T) {
	t.Helper()
	if err := Available(); err != nil {
		t.Skip(err)
	}
}

func newNS(t *testing.T) *NS {
	t.Helper()
	n, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// nsID names the network namespace of the calling thread; /proc/self
// would name the main thread's instead.
func nsID() (string, error) { return os.Readlink("/proc/thread-self/ns/net") }

func idOf(t *testing.T, n *NS) string {
	t.Helper()
	var id string
	if err := n.Do(func() (err error) { id, err = nsID(); return err }); err != nil {
		t.Fatal(err)
	}
	return id
}

// threadsIn counts this process's threads that are in namespace id.
func threadsIn(id string) int {
	tasks, _ := os.ReadDir("/proc/self/task")
	count := 0
	for _, task := range tasks {
		if l, err := os.Readlink("/proc/self/task/" + task.Name() + "/ns/net"); err == nil && l == id {
			count++
		}
	}
	return count
}

// eventually polls cond, because goroutines and threads finish a little
// after the call that released them has returned. The bound only keeps a
// broken test from hanging; it measures nothing.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("still not true after 10s: %s", what)
		}
	}
}

func fdCount(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// listenIn creates a UDP socket inside n (the host if n is nil); an
// invalid address means the wildcard.
func listenIn(n *NS, network string, ap netip.AddrPort) (c *net.UDPConn, err error) {
	listen := func() error {
		c, err = net.ListenUDP(network, net.UDPAddrFromAddrPort(ap))
		return err
	}
	if n == nil {
		return c, listen()
	}
	return c, n.Do(listen)
}

func mustListenIn(t *testing.T, n *NS, network string, ap netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := listenIn(n, network, ap)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip sends a datagram from client to server at dst, which answers
// to whatever source it saw; both ends check the peer address.
func roundTrip(t *testing.T, client, server *net.UDPConn, dst netip.AddrPort, clientAddr netip.Addr) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	client.SetReadDeadline(deadline)
	server.SetReadDeadline(deadline)

	if _, err := client.WriteToUDPAddrPort([]byte("ping"), dst); err != nil {
		t.Fatalf("send to %v: %v", dst, err)
	}
	buf := make([]byte, 64)
	k, from, err := server.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("server read: %v", err)
	}
	if string(buf[:k]) != "ping" || from.Addr().Unmap() != clientAddr {
		t.Fatalf("server got %q from %v, want ping from %v", buf[:k], from, clientAddr)
	}
	if _, err := server.WriteToUDPAddrPort([]byte("pong"), from); err != nil {
		t.Fatalf("reply to %v: %v", from, err)
	}
	k, from, err = client.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("client read: %v", err)
	}
	if string(buf[:k]) != "pong" || from.Addr().Unmap() != dst.Addr() || from.Port() != dst.Port() {
		t.Fatalf("client got %q from %v, want pong from %v", buf[:k], from, dst)
	}
}

func port(c *net.UDPConn) uint16 { return c.LocalAddr().(*net.UDPAddr).AddrPort().Port() }

func TestNamespaceIsolatesSockets(t *testing.T) {
	skipUnlessAvailable(t)
	loop := netip.MustParseAddr("127.0.0.1")
	host := mustListenIn(t, nil, "udp4", netip.AddrPortFrom(loop, 0))
	p := port(host)

	n := newNS(t)
	// Would fail with EADDRINUSE if the namespace shared the host's ports.
	inside := mustListenIn(t, n, "udp4", netip.AddrPortFrom(loop, p))
	peer := mustListenIn(t, n, "udp4", netip.AddrPortFrom(loop, 0))
	// Proves lo is up, and that sockets work from this (host) goroutine.
	roundTrip(t, peer, inside, netip.AddrPortFrom(loop, p), loop)

	v6 := netip.IPv6Loopback()
	roundTrip(t, mustListenIn(t, n, "udp6", netip.AddrPortFrom(v6, 0)),
		mustListenIn(t, n, "udp6", netip.AddrPortFrom(v6, p)), netip.AddrPortFrom(v6, p), v6)

	hostID, err := nsID()
	if err != nil {
		t.Fatal(err)
	}
	if id := idOf(t, n); id == hostID {
		t.Fatalf("Do ran in the host namespace %s", id)
	}
}

func TestSysctlStaysInNamespace(t *testing.T) {
	skipUnlessAvailable(t)
	const key, path = "net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward"
	read := func() string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(bytes.TrimSpace(b))
	}
	before := read()
	want := map[string]string{"0": "1", "1": "0"}[before]
	if want == "" {
		t.Fatalf("unexpected host %s=%q", key, before)
	}

	n := newNS(t)
	if err := n.Sysctl(key, want); err != nil {
		t.Fatal(err)
	}
	var inside string
	if err := n.Do(func() error { inside = read(); return nil }); err != nil {
		t.Fatal(err)
	}
	if inside != want {
		t.Errorf("inside %s=%s, want %s", key, inside, want)
	}
	if after := read(); after != before {
		t.Fatalf("host %s changed from %s to %s", key, before, after)
	}

	for _, bad := range []string{"kernel.hostname", "vm/swappiness", "net", "net..ipv4", "net/../kernel/hostname"} {
		if err := n.Sysctl(bad, "1"); err == nil {
			t.Errorf("Sysctl(%q) accepted a key outside net", bad)
		}
	}
}

func addrsIn(t *testing.T, n *NS) []string {
	t.Helper()
	var out []string
	err := n.Do(func() error {
		// net.InterfaceAddrs opens a netlink socket, so it sees the
		// namespace it runs in.
		addrs, err := net.InterfaceAddrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); !ok || !ipn.IP.IsLinkLocalUnicast() {
				out = append(out, a.String())
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

func TestNetlink(t *testing.T) {
	skipUnlessAvailable(t)
	n := newNS(t)
	added := netip.MustParsePrefix("198.51.100.7/32")
	if err := n.Netlink(func(nl *netlink.Handle) error {
		lo, err := nl.LinkByName("lo")
		if err != nil {
			return err
		}
		return nl.AddrAdd(lo, addr(added))
	}); err != nil {
		t.Fatal(err)
	}
	if got := addrsIn(t, n); !slices.Contains(got, added.String()) {
		t.Errorf("namespace addresses %v lack the one added", got)
	}
	hostAddrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range hostAddrs {
		if a.String() == added.String() {
			t.Fatal("Netlink changed the host")
		}
	}

	err = n.Netlink(func(nl *netlink.Handle) error {
		_, err := nl.LinkByName("nosuchlink0")
		return err
	})
	if !errors.As(err, new(netlink.LinkNotFoundError)) {
		t.Errorf("failing Netlink: error %v, want fn's LinkNotFoundError", err)
	}
	n.Close()
	if err := n.Netlink(func(*netlink.Handle) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("Netlink after Close: %v, want ErrClosed", err)
	}
}

func TestDoConcurrentAndClose(t *testing.T) {
	skipUnlessAvailable(t)
	n := newNS(t)
	want := idOf(t, n)

	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for range 16 {
		wg.Go(func() {
			err := n.Do(func() error {
				c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
				if err != nil {
					return err
				}
				c.Close()
				if id, err := nsID(); err != nil || id != want {
					return errors.New("Do ran in " + id + ", not " + want)
				}
				return nil
			})
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// Close racing Do: each Do must either run in the namespace or report
	// ErrClosed, never anything else (run with -race).
	for range 8 {
		wg.Go(func() {
			for {
				err := n.Do(func() error { return nil })
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}

func TestDoSurvivesGoexit(t *testing.T) {
	skipUnlessAvailable(t)
	n := newNS(t)
	err := n.Do(func() error { runtime.Goexit(); return nil })
	if !errors.Is(err, errGoexit) {
		t.Fatalf("Do after Goexit returned %v", err)
	}
}

func TestCloseReleasesEverything(t *testing.T) {
	skipUnlessAvailable(t)
	fds, goroutines := fdCount(t), runtime.NumGoroutine()

	n, err := New()
	if err != nil {
		t.Fatal(err)
	}
	id := idOf(t, n)
	if err := n.Do(func() error {
		if threadsIn(id) == 0 {
			return errors.New("Do's thread is not in the namespace")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := n.Do(func() error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("Do after Close returned %v, want ErrClosed", err)
	}

	// Threads that were in the namespace must die, not return to the pool.
	eventually(t, "no thread left in the namespace", func() bool { return threadsIn(id) == 0 })
	eventually(t, "goroutines back to their count", func() bool { return runtime.NumGoroutine() <= goroutines })
	if got := fdCount(t); got != fds {
		t.Fatalf("%d fds open after Close, %d before", got, fds)
	}
}

func TestHosts(t *testing.T) {
	skipUnlessAvailable(t)
	hostAddrs := hostAddrStrings(t)
	hostDisable, _ := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")

	for _, kind := range Kinds {
		t.Run(kind.String(), func(t *testing.T) {
			h, err := NewHosts(kind)
			if errors.Is(err, ErrUnsupported) {
				t.Skip(err)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()

			if h.ServerV4.IsValid() != kind.HasIPv4() || h.ServerV6.IsValid() != kind.HasIPv6() ||
				h.ClientV4.IsValid() != kind.HasIPv4() || h.ClientV6.IsValid() != kind.HasIPv6() {
				t.Fatalf("addresses %+v do not match kind", h)
			}
			checkAddrs(t, kind, h.Server, "127.0.0.1/8", "192.0.2.1/24", "::1/128", "2001:db8::1/64")
			checkAddrs(t, kind, h.Client, "127.0.0.1/8", "192.0.2.2/24", "::1/128", "2001:db8::2/64")

			type family struct {
				net            string
				server, client netip.Addr
			}
			var fams []family
			if kind.HasIPv4() {
				fams = append(fams, family{"udp4", h.ServerV4, h.ClientV4})
			}
			if kind.HasIPv6() {
				fams = append(fams, family{"udp6", h.ServerV6, h.ClientV6})
			}
			// A wildcard "udp" listener, as most servers use, takes every
			// family the host has; the IPv4Only one is a dual-stack AF_INET6
			// socket that still carries IPv4.
			wild := mustListenIn(t, h.Server, "udp", netip.AddrPort{})
			for _, f := range fams {
				client := mustListenIn(t, h.Client, f.net, netip.AddrPortFrom(f.client, 0))
				server := mustListenIn(t, h.Server, f.net, netip.AddrPortFrom(f.server, 0))
				roundTrip(t, client, server, netip.AddrPortFrom(f.server, port(server)), f.client)
				roundTrip(t, client, wild, netip.AddrPortFrom(f.server, port(wild)), f.client)
			}

			// The missing family must really be missing.
			for _, n := range []*NS{h.Server, h.Client} {
				if !kind.HasIPv6() {
					if c, err := listenIn(n, "udp6", netip.AddrPortFrom(netip.IPv6Loopback(), 0)); err == nil {
						c.Close()
						t.Error("could bind [::1] on an IPv4Only host")
					}
				}
				if !kind.HasIPv4() {
					if c, err := listenIn(n, "udp4", netip.MustParseAddrPort("127.0.0.1:0")); err == nil {
						c.Close()
						t.Error("could bind 127.0.0.1 on an IPv6Only host")
					}
				}
			}
			var missing netip.AddrPort
			switch kind {
			case IPv4Only:
				missing = netip.MustParseAddrPort("[2001:db8::1]:9")
			case IPv6Only:
				missing = netip.MustParseAddrPort("192.0.2.1:9")
			}
			if missing.IsValid() {
				c := mustListenIn(t, h.Client, "udp", netip.AddrPort{})
				if _, err := c.WriteToUDPAddrPort([]byte("x"), missing); err == nil {
					t.Errorf("could send to %v", missing)
				}
			}
		})
	}

	if got := added(hostAddrs, hostAddrStrings(t)); len(got) > 0 {
		t.Errorf("new host addresses: %v", got)
	}
	if d, _ := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6"); !bytes.Equal(d, hostDisable) {
		t.Errorf("host disable_ipv6 changed: %q -> %q", hostDisable, d)
	}
}

// checkAddrs compares n's addresses, link-local aside, with those of all
// (v4 lo, v4 link, v6 lo, v6 link) that kind has.
func checkAddrs(t *testing.T, kind Kind, n *NS, all ...string) {
	t.Helper()
	var want []string
	if kind.HasIPv4() {
		want = append(want, all[:2]...)
	}
	if kind.HasIPv6() {
		want = append(want, all[2:]...)
	}
	slices.Sort(want)
	if got := addrsIn(t, n); !slices.Equal(got, want) {
		t.Errorf("addresses %v, want %v", got, want)
	}
}

func TestHostsCloseLeavesNothing(t *testing.T) {
	skipUnlessAvailable(t)
	// Named namespaces (ip netns add) are files in /run/netns.
	netnsList := func() []string {
		var names []string
		for _, dir := range []string{"/run/netns", "/var/run/netns"} {
			ents, err := os.ReadDir(dir)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				t.Fatal(err)
			}
			for _, e := range ents {
				names = append(names, dir+"/"+e.Name())
			}
		}
		return names
	}
	links := func() []string {
		ifs, err := net.Interfaces()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, i := range ifs {
			names = append(names, i.Name)
		}
		return names
	}
	names, ifaces := netnsList(), links()
	fds, goroutines := fdCount(t), runtime.NumGoroutine()

	var ids []string
	for _, kind := range Kinds {
		h, err := NewHosts(kind)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, idOf(t, h.Server), idOf(t, h.Client))
		if err := h.Close(); err != nil {
			t.Fatal(err)
		}
		if err := h.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}

	if got := added(names, netnsList()); len(got) > 0 {
		t.Errorf("new named namespaces: %v", got)
	}
	if got := added(ifaces, links()); len(got) > 0 {
		t.Errorf("new host links: %v", got)
	}
	for _, id := range ids {
		eventually(t, "no thread left in "+id, func() bool { return threadsIn(id) == 0 })
	}
	eventually(t, "goroutines back to their count", func() bool { return runtime.NumGoroutine() <= goroutines })
	if got := fdCount(t); got != fds {
		t.Fatalf("%d fds open after Close, %d before", got, fds)
	}
}

func hostAddrStrings(t *testing.T) []string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		out = append(out, a.String())
	}
	return out
}

// added returns what after has and before lacks; only additions count,
// since other software may remove things meanwhile.
func added(before, after []string) []string {
	var out []string
	for _, s := range after {
		if !slices.Contains(before, s) {
			out = append(out, s)
		}
	}
	return out
}
