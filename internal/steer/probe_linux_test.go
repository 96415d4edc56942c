package steer

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"sync/atomic"
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

// TestProberLive probes sockets whose own readers serve other datagrams
// meanwhile and report the probe's (Seen), with a foreign member between
// them; ProbeFrom starts past members known otherwise.
func TestProberLive(t *testing.T) {
	a := reusePort(t, "udp4", "127.0.0.1:0")
	addr := a.LocalAddr().String()
	reusePort(t, "udp4", addr) // foreign, index 1
	b := reusePort(t, "udp4", addr)
	p := NewProber()
	var others atomic.Int64
	var wg sync.WaitGroup
	for j, s := range []*net.UDPConn{a, b} {
		wg.Go(func() {
			buf := make([]byte, 2048)
			for {
				n, err := s.Read(buf)
				if err != nil {
					return
				}
				if !p.Seen(j, buf[:n]) {
					others.Add(1)
				}
			}
		})
	}
	// Datagrams of the service go to member 0 throughout.
	prog := Program(Group{Members: []Member{{Gen: 1}}, Accept: 1})
	tx, err := net.DialUDP("udp", nil, mustLoopback(t, a))
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	stop := make(chan struct{})
	var sent atomic.Int64
	wg.Go(func() {
		for range 1000 {
			select {
			case <-stop:
				return
			default:
			}
			tx.Write([]byte("service datagram"))
			sent.Add(1)
			time.Sleep(time.Millisecond)
		}
	})
	raw, err := a.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	const wait = 500 * time.Millisecond
	index, foreign, err := p.Run(raw, a.LocalAddr().(*net.UDPAddr), 2, 0, prog, wait)
	close(stop)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(index, []int{0, 2}) || !slices.Equal(foreign, []int{1}) {
		t.Errorf("members %v, foreign %v; want [0 2], [1]", index, foreign)
	}
	// Every service datagram reached a reader as itself, none was taken
	// for a probe's (loopback loses none).
	deadline := time.Now().Add(wait)
	for others.Load() < sent.Load() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if o, s := others.Load(), sent.Load(); o != s || s == 0 {
		t.Errorf("readers got %d service datagrams of %d sent during the probe", o, s)
	}
	a.SetReadDeadline(time.Unix(1, 0))
	b.SetReadDeadline(time.Unix(1, 0))
	wg.Wait()
	a.SetReadDeadline(time.Time{})
	b.SetReadDeadline(time.Time{})

	index, foreign, err = ProbeFrom([]*net.UDPConn{b}, 2, prog, wait)
	if err != nil || !slices.Equal(index, []int{2}) || len(foreign) != 0 {
		t.Errorf("ProbeFrom 2: members %v, foreign %v, %v; want [2], [], nil", index, foreign, err)
	}
}
