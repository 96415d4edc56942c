// Package udppooltest helps the unit tests of programs that use udppool: it
// hands out pooled sockets on loopback, TLS certificates that clients verify
// for real, a QUIC server and client already connected through a pooled
// Transport, simulated IPv4-only, IPv6-only and dual-stack hosts, and a leak
// check for pools, goroutines and file descriptors.
//
// Why: code that serves UDP and QUIC fails in ways that only show on some
// networks (an IPv4 handshake timing out on a dual-stack socket, a host
// without 127.0.0.1, a socket left open that silently takes a share of a
// port's datagrams). Each test that wants to catch such a bug needs the same
// scaffolding: a fresh pool, loopback of the right family or a skip when it
// is missing, certificates without InsecureSkipVerify, a handshake bounded
// by timeouts, namespaces for the hosts a developer's machine is not, and a
// check at the end that everything was released. This package is that
// scaffolding, so that the tests themselves stay about the code under test.
//
// Every helper takes the test's testing.TB, reports failures through it,
// skips with the reason when the machine cannot provide what the helper
// needs (a loopback family, network namespaces), and registers with
// t.Cleanup whatever is needed to release what it created. Every blocking
// step is bounded by Timeout; nothing asserts how long anything took. The
// exceptions are NewCA and (*CA).Issue, which hold nothing to release and
// return their errors. Programs that are not tests (benchmarks,
// demonstrations) make certificates with the subpackage testca, which
// this package's certificate types are aliases of: importing this package
// links the testing package and goleak, importing testca does not.
//
// Helpers that take a testing.TB must be called from the test's own
// goroutine (they may call t.Fatalf or t.Skipf) and never inside the
// functions run by SimHost.InServer and SimHost.InClient. The leak checks
// of NoLeaks, Pool and QUICPair look at the whole process, so tests using
// them must not run in parallel (t.Parallel) with other tests.
package udppooltest

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/udppool/udppool"
	"golang.org/x/net/nettest"
)

// Timeout bounds every blocking step of the helpers (a handshake, an
// accept, a stream round trip, waiting for goroutines they started), so
// that a bug fails the test instead of hanging it. It is never asserted as
// a duration: a slow machine only makes tests slower.
const Timeout = 20 * time.Second

// Pool returns a fresh udppool.Pool built with opts, checked at cleanup and
// then closed. The check is that of NoLeaks, taken when Pool is called:
// every handle, Transport and Listener of the pool must have been closed
// (sockets merely lingering because of udppool.WithLinger, with no
// reference left, are fine: the pool is closed after the check), no
// goroutine started since may be left, and, on Linux, no file descriptor
// opened since may be left open.
//
// Call Pool before creating what uses the pool, so that the check runs
// after their cleanups (see NoLeaks).
func Pool(t testing.TB, opts ...udppool.Option) *udppool.Pool {
	t.Helper()
	p := udppool.New(opts...)
	noLeaks(t, p, true)
	return p
}

// Loopback returns a handle to a new pooled socket on loopback with an
// ephemeral port, from a fresh pool of its own (as from Pool, so checked
// for leaks). The handle is closed at cleanup.
//
// network chooses the address: "udp4" binds 127.0.0.1, "udp6" binds ::1,
// and "udp" binds 127.0.0.1 if the machine has IPv4 loopback, else ::1.
// "udp" never binds a wildcard: a test socket should not be reachable from
// outside the machine. The test is skipped, with the reason, if the
// machine cannot bind the family's loopback address (probed once per
// process with golang.org/x/net/nettest's NewLocalPacketListener); any
// other network fails the test.
func Loopback(t testing.TB, network string) *udppool.Conn {
	t.Helper()
	ip := loopbackIP(t, network)
	return listenIn(t, Pool(t), network, ip)
}

// LoopbackIn is like Loopback but acquires the socket from p, for tests
// that want several sockets, or other options, in one pool.
func LoopbackIn(t testing.TB, p *udppool.Pool, network string) *udppool.Conn {
	t.Helper()
	return listenIn(t, p, network, loopbackIP(t, network))
}

func listenIn(t testing.TB, p *udppool.Pool, network string, ip netip.Addr) *udppool.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	addr := netip.AddrPortFrom(ip, 0).String()
	c, err := p.ListenPacket(ctx, network, addr)
	if err != nil {
		t.Fatalf("udppooltest: loopback socket %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

var (
	loopback4 = netip.MustParseAddr("127.0.0.1")
	loopback6 = netip.IPv6Loopback()
)

// loopbackIP returns the loopback address for network, or skips the test
// if the machine lacks the family.
func loopbackIP(t testing.TB, network string) netip.Addr {
	t.Helper()
	switch network {
	case "udp4":
		if !hasLoopback4() {
			t.Skipf("udppooltest: %s loopback needs IPv4, and this machine cannot bind 127.0.0.1", network)
		}
		return loopback4
	case "udp6":
		if !hasLoopback6() {
			t.Skipf("udppooltest: %s loopback needs IPv6, and this machine cannot bind ::1", network)
		}
		return loopback6
	case "udp":
		switch {
		case hasLoopback4():
			return loopback4
		case hasLoopback6():
			return loopback6
		}
		t.Skipf("udppooltest: this machine can bind neither 127.0.0.1 nor ::1")
	default:
		t.Fatalf("udppooltest: unknown network %q (want \"udp\", \"udp4\" or \"udp6\")", network)
	}
	return netip.Addr{} // not reached: Skipf and Fatalf end the test
}

// hasLoopback4 and hasLoopback6 report whether a UDP socket can be bound
// to the loopback address of the family, as nettest finds out (once per
// process). Not nettest.SupportsIPv6: it wants an IPv6 address other than
// ::1, which a machine (or container) may lack while ::1 works.
var (
	hasLoopback4 = sync.OnceValue(func() bool { return canBindLoopback("udp4") })
	hasLoopback6 = sync.OnceValue(func() bool { return canBindLoopback("udp6") })
)

func canBindLoopback(network string) bool {
	c, err := nettest.NewLocalPacketListener(network)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// networkOf returns "udp4" or "udp6" for ip's family.
func networkOf(ip netip.Addr) string {
	if ip.Is4() {
		return "udp4"
	}
	return "udp6"
}
