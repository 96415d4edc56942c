package udppool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/sys/unix"
)

// Regression tests for ways in which a caller or an outsider could take a
// pooled socket down, or make the pool bind two sockets for one.

// TestMethodsAfterPoolClose: after Pool.Close every method of a handle that
// is still held reports net.ErrClosed, as after the handle's own Close.
func TestMethodsAfterPoolClose(t *testing.T) {
	needIPv4(t)
	p := New()
	c := listen(t, p, "udp4", "127.0.0.1:0")
	dst := c.LocalAddr().(*net.UDPAddr)
	p.Close()
	buf := make([]byte, 8)
	checks := map[string]error{}
	_, _, checks["ReadFrom"] = c.ReadFrom(buf)
	_, _, _, _, checks["ReadMsgUDP"] = c.ReadMsgUDP(buf, nil)
	_, checks["WriteTo"] = c.WriteTo(buf, dst)
	_, _, checks["WriteMsgUDP"] = c.WriteMsgUDP(buf, nil, dst)
	checks["SetDeadline"] = c.SetDeadline(time.Now())
	checks["SetReadDeadline"] = c.SetReadDeadline(time.Now())
	checks["SetWriteDeadline"] = c.SetWriteDeadline(time.Now())
	checks["SetReadBuffer"] = c.SetReadBuffer(1 << 16)
	checks["SetWriteBuffer"] = c.SetWriteBuffer(1 << 16)
	_, checks["SyscallConn"] = c.SyscallConn()
	for name, err := range checks {
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("%s after Pool.Close: %v, want net.ErrClosed", name, err)
		}
	}
	if err := c.Close(); err != nil {
		t.Errorf("first Close of a handle after Pool.Close: %v", err)
	}
}

// TestZoneSpellingsShareSocket: spellings of one local socket that differ
// only in a zone the kernel ignores, or in how the zone is written, are
// one key and one socket, never two sockets in one reuseport group.
func TestZoneSpellingsShareSocket(t *testing.T) {
	needIPv6(t)
	lo := loopbackInterface(t)
	p := newPool(t)
	c := listen(t, p, "udp6", "[::1%"+lo.Name+"]:0")
	defer c.Close()
	if c.Key().Addr.Addr().Zone() != "" {
		t.Fatalf("key %v keeps a zone the kernel ignores", c.Key())
	}
	P := strconv.Itoa(int(port(c)))
	for _, spelling := range []string{"[::1]:" + P, "[::1%" + lo.Name + "]:" + P, "[::1%" + strconv.Itoa(lo.Index) + "]:" + P} {
		for range 2 { // the second time through the fast path
			d := listen(t, p, "udp6", spelling)
			if d.entry != c.entry {
				t.Fatalf("%s bound a second socket %v beside %v", spelling, d.Key(), c.Key())
			}
			d.Close()
		}
	}
	w := listen(t, p, "udp", "[::%"+lo.Name+"]:0")
	defer w.Close()
	if w.Key().Network != "udp" || !w.Key().Addr.Addr().IsUnspecified() || w.Key().Addr.Addr().Zone() != "" {
		t.Fatalf("[::%%%s] is a wildcard, got key %v", lo.Name, w.Key())
	}
	if _, err := p.ListenPacket(context.Background(), "udp6", "[fe80::1%no-such-if9]:0"); !errors.Is(err, ErrInvalidAddress) {
		t.Fatalf("unknown zone: %v, want ErrInvalidAddress", err)
	}
}

// TestLingerLeavesCompany: a lingering socket is read by nobody, so when
// another socket (a successor process) shares its reuseport group, it
// closes instead of swallowing the share of datagrams the kernel hashes to
// it.
func TestLingerLeavesCompany(t *testing.T) {
	needIPv4(t)
	joinGroup := func(t *testing.T, addr string) *net.UDPConn {
		lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
			return errors.Join(err, serr)
		}}
		pc, err := lc.ListenPacket(context.Background(), "udp4", addr)
		if err != nil {
			t.Fatalf("joining the group of %s: %v", addr, err)
		}
		return pc.(*net.UDPConn)
	}
	free := func(t *testing.T) string {
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().String()
	}

	t.Run("company arrives while lingering", func(t *testing.T) {
		addr := free(t)
		synctest.Test(t, func(t *testing.T) {
			p := New(WithLinger(time.Hour))
			defer p.Close()
			listen(t, p, "udp4", addr).Close()
			time.Sleep(time.Minute)
			synctest.Wait()
			if st := p.Stats(); len(st) != 1 {
				t.Fatalf("alone, the socket should linger: %+v", st)
			}
			next := joinGroup(t, addr)
			defer next.Close()
			time.Sleep(lingerPoll)
			synctest.Wait()
			if st := p.Stats(); len(st) != 0 {
				t.Fatalf("a lingering socket stayed beside another member of its group: %+v", st)
			}
			// Every datagram now reaches the successor.
			cli, err := net.Dial("udp4", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			const n = 64
			for i := range n {
				cli.Write([]byte{byte(i)})
			}
			if got := drain(t, next); got != n {
				t.Fatalf("successor got %d of %d datagrams", got, n)
			}
		})
	})

	t.Run("company already there", func(t *testing.T) {
		addr := free(t)
		p := newPool(t, WithLinger(time.Hour))
		c := listen(t, p, "udp4", addr)
		next := joinGroup(t, addr)
		defer next.Close()
		c.Close()
		if st := p.Stats(); len(st) != 0 {
			t.Fatalf("released beside another member, the socket lingered: %+v", st)
		}
	})
}

// drain counts the datagrams queued on c without waiting for more.
func drain(t *testing.T, c *net.UDPConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	buf := make([]byte, 64)
	rc.Control(func(fd uintptr) {
		for {
			if _, _, err := unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT); err != nil {
				return
			}
			n++
		}
	})
	return n
}

// TestFastPathAndBrokenSocket: the fast path (a cached spelling) does not
// ask the descriptor, which would cost a system call per acquire; a socket
// whose descriptor was replaced underneath the pool is found by the first
// operation on it, which fails with ErrSocketDead, and the next acquire,
// through the fast path too, gets a fresh, working socket.
func TestFastPathAndBrokenSocket(t *testing.T) {
	needIPv4(t)
	p := newPool(t)
	a := listen(t, p, "udp4", "127.0.0.1:0")
	addr := a.LocalAddr().String()
	b := listen(t, p, "udp4", addr) // caches the spelling
	if p.index.get(spelling{"udp4", addr}) != a.entry {
		t.Fatal("spelling not cached; the test would not use the fast path")
	}
	breakSocket(t, a)
	c := listen(t, p, "udp4", addr)
	if _, err := c.WriteTo([]byte("x"), c.LocalAddr()); c.entry == a.entry && !errors.Is(err, ErrSocketDead) {
		t.Fatalf("first send on a broken socket: %v, want ErrSocketDead", err)
	}
	d := listen(t, p, "udp4", addr)
	defer d.Close()
	if d.entry == a.entry {
		t.Fatal("an acquire after the socket was found dead got it again")
	}
	if _, err := d.WriteTo([]byte("x"), d.LocalAddr()); err != nil {
		t.Fatalf("fresh socket: %v", err)
	}
	a.Close()
	b.Close()
	c.Close()
}

// TestIndexDropsDepartedEntries: the fast path's index holds an entry
// only while it is in the pool: once the last handle is closed and the
// socket gone, the spelling leads nowhere at once (no garbage collection
// needed, and nothing keeps the entry, its socket or transport alive), and
// acquiring the spelling again binds and indexes the new socket.
func TestIndexDropsDepartedEntries(t *testing.T) {
	needIPv4(t)
	p := newPool(t)
	c := listen(t, p, "udp4", "127.0.0.1:0")
	sp := spelling{"udp4", c.LocalAddr().String()}
	listen(t, p, sp.network, sp.address).Close()
	if p.index.get(sp) != c.entry {
		t.Fatal("spelling not indexed")
	}
	old := c.entry
	c.Close()
	if e := p.index.get(sp); e != nil {
		t.Fatalf("the index still holds a released entry (refs %d)", e.refs.Load())
	}
	d := listen(t, p, sp.network, sp.address)
	defer d.Close()
	if d.entry == old || p.index.get(sp) != d.entry {
		t.Fatal("the new socket is not the one indexed")
	}
}

// TestIndexBoundsSpellings: a caller that spells one address in ever new
// ways does not grow the index without limit; every spelling still gets
// the socket, the ones past the bound by the slow path.
func TestIndexBoundsSpellings(t *testing.T) {
	needIPv6(t)
	p := newPool(t)
	c := listen(t, p, "udp6", "[::1]:0")
	defer c.Close()
	port := c.LocalAddr().(*net.UDPAddr).Port
	var spellings []spelling
	seen := make(map[string]bool)
	for zeros := range 4 {
		for _, tail := range []string{"::1", "0::1", "0:0::1", "0:0:0::1", "0:0:0:0::1"} {
			if host := strings.Repeat("0", zeros) + tail; !seen[host] {
				seen[host] = true
				spellings = append(spellings, spelling{"udp6", fmt.Sprintf("[%s]:%d", host, port)})
			}
		}
	}
	for range 2 {
		for _, sp := range spellings {
			h := listen(t, p, sp.network, sp.address)
			if h.entry != c.entry {
				t.Fatalf("%s got another socket", sp.address)
			}
			h.Close()
		}
	}
	indexed := 0
	for _, sp := range spellings {
		if p.index.get(sp) != nil {
			indexed++
		}
	}
	if indexed != maxSpellings {
		t.Fatalf("%d of %d spellings indexed, want the bound, %d", indexed, len(spellings), maxSpellings)
	}
}

// TestSplitPortZeroNeverJoinsGroup: both sockets of a split-stack port 0
// Transport are new sockets without SO_REUSEPORT, the IPv6 one too,
// although it is bound to the port chosen for the IPv4 one.
func TestSplitPortZeroNeverJoinsGroup(t *testing.T) {
	needIPv4(t)
	needIPv6(t)
	p := newPool(t, WithSplitStack(true))
	tr, err := p.Transport(context.Background(), "udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if len(tr.parts) != 2 {
		t.Fatalf("split-stack transport with %d sockets", len(tr.parts))
	}
	for _, st := range tr.parts {
		if v := reusePortOf(t, st.conn); v != 0 {
			t.Errorf("socket %v of a port 0 Transport has SO_REUSEPORT=%d", st.entry.key, v)
		}
	}
}

// TestProbeNotCachedOnEMFILE: a first use of the pool that runs out of
// descriptors fails with EMFILE, and does not make the pool believe that
// the host has no IPv6: once descriptors are free again, a "udp" wildcard
// is dual-stack and IPv6 works. It runs in a child process with a low
// descriptor limit.
func TestProbeNotCachedOnEMFILE(t *testing.T) {
	needIPv4(t)
	needIPv6(t)
	if os.Getenv("UDPPOOL_EMFILE_CHILD") == "1" {
		emfileChild(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestProbeNotCachedOnEMFILE$", "-test.v")
	cmd.Env = append(os.Environ(), "UDPPOOL_EMFILE_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	t.Logf("child:\n%s", out)
}

func emfileChild(t *testing.T) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	low := lim
	low.Cur = 64
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	defer unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	var fill []*os.File
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			break
		}
		fill = append(fill, f)
	}
	p := New()
	defer p.Close()
	_, err := p.ListenPacket(context.Background(), "udp", ":0")
	if !errors.Is(err, unix.EMFILE) {
		t.Fatalf("listen without descriptors: %v, want EMFILE", err)
	}
	t.Logf("without descriptors: %v", err)
	for _, f := range fill {
		f.Close()
	}
	c := listen(t, p, "udp", ":0")
	defer c.Close()
	if c.Key().Network != "udp" {
		t.Fatalf("after EMFILE the wildcard is %v, want dual-stack", c.Key())
	}
	cli := sender(t, true)
	if _, err := cli.WriteToUDPAddrPort([]byte("v6"), netip.AddrPortFrom(netip.IPv6Loopback(), port(c))); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(testTimeout))
	buf := make([]byte, 8)
	if n, _, err := c.ReadFrom(buf); err != nil || string(buf[:n]) != "v6" {
		t.Fatalf("IPv6 datagram after EMFILE: %q, %v", buf[:n], err)
	}
}

// TestIndexUnderChurn: acquires and releases of one literal spelling on
// several goroutines, so that the socket closes and is bound again many
// times while other acquires race through the fast path: every acquire
// gets a working handle, and once all are closed the index holds nothing
// (an entry indexed after it left the pool would stay there for good).
func TestIndexUnderChurn(t *testing.T) {
	needIPv4(t)
	p := newPool(t)
	c := listen(t, p, "udp4", "127.0.0.1:0")
	sp := spelling{"udp4", c.LocalAddr().String()}
	c.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			for range 300 {
				h, err := p.ListenPacket(context.Background(), sp.network, sp.address)
				if err != nil {
					errs <- err
					return
				}
				if _, err := h.WriteTo([]byte("x"), h.LocalAddr()); err != nil {
					errs <- err
				}
				h.Close()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if e := p.index.get(sp); e != nil {
		t.Fatalf("index holds an entry after every handle closed (in pool: %v)", p.entries[e.key] == e)
	}
	p.mu.Lock()
	n := len(p.entries)
	p.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d entries left", n)
	}
}
