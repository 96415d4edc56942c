package steer

import (
	"context"
	"errors"
	"net"
	"slices"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// reusePort binds a socket of network to addr with SO_REUSEPORT.
func reusePort(t *testing.T, network, addr string) *net.UDPConn {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(context.Background(), network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.(*net.UDPConn)
}

// TestProbe finds the member indexes of a group with a socket that Probe
// is not given (as a foreign process's would be) in the middle, then again
// after that socket leaves and the last takes its slot; a socket of another
// port is no member.
func TestProbe(t *testing.T) {
	for _, c := range []struct{ network, addr string }{
		{"udp4", "127.0.0.1:0"}, {"udp4", "0.0.0.0:0"}, {"udp6", "[::1]:0"}, {"udp", "[::]:0"},
	} {
		t.Run(c.network+" "+c.addr, func(t *testing.T) {
			t.Parallel()
			a := reusePort(t, c.network, c.addr)
			addr := a.LocalAddr().String()
			f := reusePort(t, c.network, addr) // foreign: not given to Probe
			b := reusePort(t, c.network, addr)
			d := reusePort(t, c.network, addr)
			prog := Program(Group{Members: []Member{{Gen: 1, Socket: 0}}, Accept: 1}) // everything to member 0
			const wait = 500 * time.Millisecond                                       // a bound for the foreign member, not a timing
			index, foreign, err := Probe([]*net.UDPConn{d, a, b}, prog, wait)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(index, []int{3, 0, 2}) || !slices.Equal(foreign, []int{1}) {
				t.Errorf("members %v, foreign %v; want [3 0 2], [1]", index, foreign)
			}
			f.Close() // the last member (d) takes its slot
			index, foreign, err = Probe([]*net.UDPConn{d, a, b}, prog, wait)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(index, []int{1, 0, 2}) || len(foreign) != 0 {
				t.Errorf("after a leave: members %v, foreign %v; want [1 0 2], []", index, foreign)
			}
			other := reusePort(t, c.network, c.addr) // another port
			_, _, err = Probe([]*net.UDPConn{a, other}, prog, wait)
			if !errors.Is(err, ErrNotMember) {
				t.Errorf("socket of another port: %v, want ErrNotMember", err)
			}
			// Probe leaves the sockets readable without a deadline and the
			// group with prog: a datagram goes to member 0.
			tx, err := net.DialUDP("udp", nil, mustLoopback(t, b))
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Close()
			tx.Write([]byte("after"))
			buf := make([]byte, 16)
			n, err := a.Read(buf)
			if err != nil || string(buf[:n]) != "after" {
				t.Errorf("after the probe: %q, %v", buf[:n], err)
			}
		})
	}
}

func mustLoopback(t *testing.T, c *net.UDPConn) *net.UDPAddr {
	a, err := loopbackOf(c.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	return a
}
