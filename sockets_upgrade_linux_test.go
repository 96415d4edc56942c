package udppool

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/nettest"
	"golang.org/x/sys/unix"
)

// foreignReusePort binds a plain same-user SO_REUSEPORT socket to address
// of network, as a stale server or another program of the user would.
func foreignReusePort(t *testing.T, network, address string) *net.UDPConn {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), network, address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.(*net.UDPConn)
}

// handshakesOn counts the datagrams of handshake size that c has queued.
func handshakesOn(c *net.UDPConn) int {
	n := 0
	buf := make([]byte, 2048)
	for {
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		m, err := c.Read(buf)
		if err != nil {
			return n
		}
		if m >= 1200 {
			n++
		}
	}
}

// TestUpgradeForeignJoinsAfterReady is issue 18's open case: a plain
// same-user SO_REUSEPORT socket joins the port after the successor's Ready
// (behind both generations' sockets); when the predecessor exits, the
// kernel moves the last members into the predecessor's vacated slots. The
// successor must find out (it probes the group again when its predecessor
// is gone) and keep every new handshake: the foreign socket gets none.
func TestUpgradeForeignJoinsAfterReady(t *testing.T) {
	for _, c := range []struct{ pred, n int }{{1, 1}, {1, 2}, {2, 1}, {2, 2}} {
		t.Run(fmt.Sprintf("sockets=%d,%d", c.pred, c.n), func(t *testing.T) {
			n := c.n
			ip := startInProcWith(t, false, []string{fmt.Sprintf("%s=%d", upgradeSocketsEnv, n)}, []TransportOption{WithSockets(c.pred)})
			ip.serve()
			if err := waitErr(t, ip.upgradeAsync(), "Upgrade"); err != nil {
				t.Fatal(err)
			}
			next := ip.wait("ready", 2)
			waitClosed(t, ip.u.Exit(), "Exit")
			foreign := foreignReusePort(t, "udp", fmt.Sprintf(":%d", ip.port))
			ip.tr.Close()
			if err := ip.u.Stop(); err != nil {
				t.Fatal(err)
			}
			ip.wait("alone", 2)
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			want := fmt.Sprintf("pid %d gen 2", next.pid)
			ok := 0
			const tries = 6
			for i := range tries {
				addr := fmt.Sprintf("127.0.0.1:%d", ip.port)
				if i%2 == 1 {
					addr = fmt.Sprintf("[::1]:%d", ip.port)
				}
				qctx, qcancel := context.WithTimeout(ctx, 2*time.Second)
				a, err := requestAddr(qctx, addr)
				qcancel()
				if err == nil && strings.HasPrefix(a, want) {
					ok++
				} else {
					t.Logf("fresh request %d to %s after the predecessor exited: %q, %v", i, addr, a, err)
				}
			}
			got := handshakesOn(foreign)
			t.Logf("sockets %d then %d: %d of %d fresh requests answered by the successor; the foreign socket got %d handshake datagrams", c.pred, n, ok, tries, got)
			if ok != tries || got != 0 {
				t.Errorf("%d of %d fresh requests answered, foreign socket got %d handshake datagrams; want all, 0; successor's output:\n%s", ok, tries, got, ip.output())
			}
		})
	}
}

// TestUpgradeSocketsMigration: a server with N sockets per generation (2,
// then 3: the numbers may differ) is upgraded while clients hold
// connections to the old generation; then every client changes its path
// (NAT rebinding or quic-go's path migration, half each). Every connection
// must stay with the old generation, new connections must reach the new
// one, and the kernel must place nearly every datagram (forwarded and
// rerouted counts at the old generation's exit).
func TestUpgradeSocketsMigration(t *testing.T) {
	for _, c := range []struct{ name, ip string }{{"IPv4", "127.0.0.1"}, {"IPv6", "::1"}} {
		t.Run(c.name, func(t *testing.T) {
			if c.ip == "::1" && !nettest.SupportsIPv6() {
				t.Skip("no IPv6 loopback")
			}
			s := startServers(t, upgradeSetup{drain: 10 * time.Second, env: []string{upgradeSocketsEnv + "=2,3"}})
			first := s.wait("ready", 1)
			server := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(c.ip), s.port))
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			const conns = 16
			ms := make([]*migrant, conns)
			var failures atomic.Int64
			var wg sync.WaitGroup
			for i := range ms {
				wg.Go(func() {
					m, err := dialMigrant(ctx, t, server)
					ms[i] = m
					if err != nil {
						failures.Add(1)
						t.Logf("connection %d: %v", i, err)
					}
				})
			}
			wg.Wait()
			defer func() {
				for _, m := range ms {
					m.close()
				}
			}()
			want := fmt.Sprintf("pid %d gen 1", first.pid)
			next := s.upgrade(first)
			migrated := 0
			for i, m := range ms {
				if m.conn == nil {
					continue
				}
				wg.Go(func() {
					err := m.move(ctx, i%2 == 0)
					if err == nil {
						err = m.check(ctx, 3, want)
					}
					if err == nil && !strings.HasPrefix(m.first, want) {
						err = fmt.Errorf("answered by %q before the upgrade, want %q", m.first, want)
					}
					if err != nil {
						failures.Add(1)
						t.Logf("connection %d: %v", i, err)
					}
				})
				migrated++
			}
			wg.Wait()
			wantNew := fmt.Sprintf("pid %d gen 2", next.pid)
			fresh := 0
			for range 8 {
				if a, err := requestAddr(ctx, server.String()); err == nil && strings.HasPrefix(a, wantNew) {
					fresh++
				} else {
					t.Logf("fresh connection: %q, %v; want %q", a, err, wantNew)
				}
			}
			for _, m := range ms {
				m.close()
			}
			misplaced := s.checkExit(1)
			t.Logf("%s: sockets 2 then 3, connections %d, migrations %d, failures %d, fresh connections to the successor %d of 8, datagrams the kernel misplaced (forwarded or rerouted) at the old generation %d",
				c.name, conns, migrated, failures.Load(), fresh, misplaced)
			if failures.Load() != 0 || migrated != conns || fresh != 8 {
				t.Errorf("%d failures, %d of %d migrated, %d of 8 fresh connections to the successor", failures.Load(), migrated, conns, fresh)
			}
			if misplaced > conns/4 {
				t.Errorf("the old generation moved %d datagrams the kernel misplaced, want near zero", misplaced)
			}
		})
	}
}
