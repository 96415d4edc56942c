package udppool

import (
	"context"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

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
// kernel moves that last member into the predecessor's vacated slot 0. The
// successor must find out (it probes the group again when its predecessor
// is gone) and keep every new handshake: the foreign socket gets none.
func TestUpgradeForeignJoinsAfterReady(t *testing.T) {
	for _, n := range []int{1, 2} {
		t.Run(fmt.Sprintf("sockets=%d", n), func(t *testing.T) {
			ip := startInProcEnv(t, false, []string{fmt.Sprintf("%s=%d", upgradeSocketsEnv, n)})
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
			ip.waitContains("predecessor gone")
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
			t.Logf("sockets=%d: %d of %d fresh requests answered by the successor; the foreign socket got %d handshake datagrams", n, ok, tries, got)
			if ok != tries || got != 0 {
				t.Errorf("%d of %d fresh requests answered, foreign socket got %d handshake datagrams; want all, 0", ok, tries, got)
			}
		})
	}
}
