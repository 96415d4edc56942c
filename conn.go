package udppool

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
)

// Conn is one reference to a pooled UDP socket. It implements
// net.PacketConn, net.Conn (as *net.UDPConn does) and
// quic.OOBCapablePacketConn, forwarding to the socket, so quic-go keeps its
// optimizations (batched reads, GSO, ECN, packet info) on a Conn.
//
// Deadlines and Close belong to the handle: closing a Conn or letting its
// deadline expire unblocks only its own operations, never those of other
// handles on the same socket. Close releases the reference; the socket
// closes when the last reference is released.
//
// A shared socket hands each datagram to exactly one reader: whichever
// handle reads first. Sharing is for handing a socket over (from an old
// configuration to a new one), not for fanning datagrams out.
type Conn struct {
	// Only what a handle needs of its own: one is allocated per acquire.
	entry  *entry
	closed atomic.Bool
	dirs   [2]dirState
	leak   *leakWatch // nil unless the pool reports leaks
}

// dirState is one direction (read or write) of a handle.
type dirState struct {
	// inflight counts operations of this handle in this direction that have
	// started; the gate reads it to know whose deadlines matter.
	inflight atomic.Int32
	// timed is set while deadline is non-zero, so the fast path can skip the
	// gate without taking its lock.
	timed atomic.Bool
	// deadline is the deadline in Unix nanoseconds, valid while timed is
	// set; guarded by the socket's gate. An int64 rather than a time.Time
	// keeps handles small; the wall clock (not a monotonic base) keeps
	// deadlines right inside testing/synctest bubbles, whose clock is fake.
	deadline int64
}

var (
	_ net.PacketConn            = (*Conn)(nil)
	_ net.Conn                  = (*Conn)(nil)
	_ quic.OOBCapablePacketConn = (*Conn)(nil)
)

// Key returns the key of the pooled socket.
func (c *Conn) Key() Key { return c.entry.key }

// effectiveDeadline is the deadline an operation of c must be woken at:
// the handle's own, or the past for a closed handle. g.mu must be held.
func (c *Conn) effectiveDeadline(dir int) time.Time {
	if c.closed.Load() {
		return pastDeadline
	}
	return c.deadline(dir)
}

// deadline returns the handle's own deadline, zero for none. g.mu must be
// held.
func (c *Conn) deadline(dir int) time.Time {
	if !c.dirs[dir].timed.Load() {
		return time.Time{}
	}
	return time.Unix(0, c.dirs[dir].deadline)
}

// expired returns the error an operation of c gets now: net.ErrClosed for a
// released handle, os.ErrDeadlineExceeded past its deadline, else nil.
// g.mu must be held for the deadline.
func (c *Conn) expired(dir int) error {
	if c.closed.Load() {
		return net.ErrClosed
	}
	if d := &c.dirs[dir]; d.timed.Load() && time.Now().UnixNano() >= d.deadline {
		return os.ErrDeadlineExceeded
	}
	return nil
}

// do runs op, a single operation on the socket, with the deadline and the
// close state of this handle. op's error comes back unchanged unless this
// handle was closed or expired, which it reports as the cause (net.ErrClosed
// or os.ErrDeadlineExceeded) for the caller to wrap.
func (c *Conn) do(dir int, op func() error) error {
	d := &c.dirs[dir]
	g := &c.entry.sock.gates[dir]
	for {
		watched := false
		d.inflight.Add(1)
		if c.closed.Load() || d.timed.Load() {
			// Rare path: the socket deadline must account for this handle.
			d.inflight.Add(-1)
			if err := g.enter(c, dir); err != nil {
				return err
			}
			watched = true
		}
		err := op()
		d.inflight.Add(-1)
		if watched || c.closed.Load() || d.timed.Load() {
			g.leave(dir)
		}
		if err == nil {
			return nil
		}
		if !isTimeout(err) {
			if c.closed.Load() {
				return net.ErrClosed
			}
			c.entry.pool.failed(c.entry, dir, err)
			return err
		}
		// The socket deadline fired: ours, our Close, or another handle's.
		if err := g.waitRetry(c, dir); err != nil {
			return err
		}
	}
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// opError wraps a cause reported by do the way the net package does, so
// callers can test errors.Is(err, net.ErrClosed) and err.(net.Error).Timeout().
func (c *Conn) opError(op string, err error, addr net.Addr) error {
	if err == nil {
		return nil
	}
	if dead := c.deadError(op, addr); dead != nil {
		return dead
	}
	if err != net.ErrClosed && err != os.ErrDeadlineExceeded {
		return err
	}
	return &net.OpError{Op: op, Net: c.entry.sock.laddr.Network(), Source: c.entry.sock.laddr, Addr: addr, Err: err}
}

func (c *Conn) read(op func() error) error {
	return c.opError("read", c.do(dirRead, op), nil)
}

func (c *Conn) write(addr net.Addr, op func() error) error {
	return c.opError("write", c.do(dirWrite, op), addr)
}

// ReadFrom implements net.PacketConn.
func (c *Conn) ReadFrom(b []byte) (n int, addr net.Addr, err error) {
	err = c.read(func() (err error) {
		var ua *net.UDPAddr
		n, ua, err = c.entry.sock.conn.ReadFromUDP(b)
		if ua != nil {
			addr = ua
		}
		return err
	})
	return n, addr, err
}

// ReadFromUDP acts like ReadFrom but returns a *net.UDPAddr.
func (c *Conn) ReadFromUDP(b []byte) (n int, addr *net.UDPAddr, err error) {
	err = c.read(func() (err error) {
		n, addr, err = c.entry.sock.conn.ReadFromUDP(b)
		return err
	})
	return n, addr, err
}

// ReadFromUDPAddrPort acts like ReadFrom but returns a netip.AddrPort.
func (c *Conn) ReadFromUDPAddrPort(b []byte) (n int, addr netip.AddrPort, err error) {
	err = c.read(func() (err error) {
		n, addr, err = c.entry.sock.conn.ReadFromUDPAddrPort(b)
		return err
	})
	return n, addr, err
}

// ReadMsgUDP reads a datagram and its control messages, as
// (*net.UDPConn).ReadMsgUDP does.
func (c *Conn) ReadMsgUDP(b, oob []byte) (n, oobn, flags int, addr *net.UDPAddr, err error) {
	err = c.read(func() (err error) {
		n, oobn, flags, addr, err = c.entry.sock.conn.ReadMsgUDP(b, oob)
		return err
	})
	return n, oobn, flags, addr, err
}

// ReadMsgUDPAddrPort is like ReadMsgUDP but returns a netip.AddrPort.
func (c *Conn) ReadMsgUDPAddrPort(b, oob []byte) (n, oobn, flags int, addr netip.AddrPort, err error) {
	err = c.read(func() (err error) {
		n, oobn, flags, addr, err = c.entry.sock.conn.ReadMsgUDPAddrPort(b, oob)
		return err
	})
	return n, oobn, flags, addr, err
}

// Read implements net.Conn. On an unconnected socket it reads a datagram
// from any sender.
func (c *Conn) Read(b []byte) (n int, err error) {
	err = c.read(func() (err error) {
		n, err = c.entry.sock.conn.Read(b)
		return err
	})
	return n, err
}

// WriteTo implements net.PacketConn. A nil addr or an address other than
// a *net.UDPAddr fails with an error wrapping ErrMissingAddr or
// ErrNotUDPAddr, before the socket sees it.
func (c *Conn) WriteTo(b []byte, addr net.Addr) (n int, err error) {
	if _, err := udpAddr(addr); err != nil {
		// The net package's EINVAL for these would not say what was wrong.
		return 0, &net.OpError{Op: "write", Net: c.entry.sock.laddr.Network(), Source: c.entry.sock.laddr, Err: err}
	}
	err = c.write(addr, func() (err error) {
		n, err = c.entry.sock.conn.WriteTo(b, addr)
		return err
	})
	return n, err
}

// WriteToUDP acts like WriteTo but takes a *net.UDPAddr.
func (c *Conn) WriteToUDP(b []byte, addr *net.UDPAddr) (n int, err error) {
	err = c.write(addr, func() (err error) {
		n, err = c.entry.sock.conn.WriteToUDP(b, addr)
		return err
	})
	return n, err
}

// WriteToUDPAddrPort acts like WriteTo but takes a netip.AddrPort.
func (c *Conn) WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (n int, err error) {
	err = c.write(net.UDPAddrFromAddrPort(addr), func() (err error) {
		n, err = c.entry.sock.conn.WriteToUDPAddrPort(b, addr)
		return err
	})
	return n, err
}

// WriteMsgUDP writes a datagram with control messages, as
// (*net.UDPConn).WriteMsgUDP does.
func (c *Conn) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error) {
	err = c.write(addr, func() (err error) {
		n, oobn, err = c.entry.sock.conn.WriteMsgUDP(b, oob, addr)
		return err
	})
	return n, oobn, err
}

// WriteMsgUDPAddrPort is like WriteMsgUDP but takes a netip.AddrPort.
func (c *Conn) WriteMsgUDPAddrPort(b, oob []byte, addr netip.AddrPort) (n, oobn int, err error) {
	err = c.write(net.UDPAddrFromAddrPort(addr), func() (err error) {
		n, oobn, err = c.entry.sock.conn.WriteMsgUDPAddrPort(b, oob, addr)
		return err
	})
	return n, oobn, err
}

// Write implements net.Conn. It fails on an unconnected socket, as it does
// for *net.UDPConn; use WriteTo.
func (c *Conn) Write(b []byte) (n int, err error) {
	err = c.write(nil, func() (err error) {
		n, err = c.entry.sock.conn.Write(b)
		return err
	})
	return n, err
}

// LocalAddr returns the local address of the socket, which stays known
// after Close.
func (c *Conn) LocalAddr() net.Addr { return c.entry.sock.laddr }

// RemoteAddr implements net.Conn; a pooled socket is unconnected, so it
// returns nil.
func (c *Conn) RemoteAddr() net.Addr { return nil }

// SetDeadline sets the read and write deadlines of this handle only.
func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// SetReadDeadline sets the read deadline of this handle only: other handles
// of the same socket keep theirs.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.setDeadline(dirRead, "set", t) }

// SetWriteDeadline sets the write deadline of this handle only.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.setDeadline(dirWrite, "set", t) }

func (c *Conn) setDeadline(dir int, op string, t time.Time) error {
	if err := c.usable(op); err != nil {
		return err
	}
	g := &c.entry.sock.gates[dir]
	g.mu.Lock()
	c.dirs[dir].deadline = t.UnixNano()
	c.dirs[dir].timed.Store(!t.IsZero())
	g.mu.Unlock()
	g.update(c, dir)
	return nil
}

// SetReadBuffer sets the socket's receive buffer size, shared by every
// handle.
func (c *Conn) SetReadBuffer(bytes int) error {
	if err := c.usable("set"); err != nil {
		return err
	}
	return c.entry.sock.conn.SetReadBuffer(bytes)
}

// SetWriteBuffer sets the socket's send buffer size, shared by every handle.
func (c *Conn) SetWriteBuffer(bytes int) error {
	if err := c.usable("set"); err != nil {
		return err
	}
	return c.entry.sock.conn.SetWriteBuffer(bytes)
}

// SyscallConn returns a raw connection to the socket. Its Read and Write
// observe this handle's deadlines and Close like the other methods, so
// reads in batches (as quic-go and golang.org/x/net do through it) stay
// direct on the socket. Closing the descriptor through it breaks the socket
// for every handle.
func (c *Conn) SyscallConn() (syscall.RawConn, error) {
	if err := c.usable("raw-conn"); err != nil {
		return nil, err
	}
	return rawConn{c}, nil
}

// usable returns the error of a method called on a released handle or on a
// socket that the pool closed (Pool.Close, or found dead), nil otherwise.
func (c *Conn) usable(op string) error {
	if c.closed.Load() || c.entry.closing.Load() {
		return c.opError(op, net.ErrClosed, nil)
	}
	return nil
}

// Close releases this handle's reference to the socket and unblocks its
// pending operations, which return an error wrapping net.ErrClosed. It
// closes the socket if this was the last reference (after the pool's linger
// time, if one is set). Calls after the first return an error wrapping
// net.ErrClosed and have no effect.
func (c *Conn) Close() error {
	if c.closed.Swap(true) {
		return c.opError("close", net.ErrClosed, nil)
	}
	if c.leak != nil {
		c.leak.closed.Store(true)
	}
	for dir := range c.dirs {
		g := &c.entry.sock.gates[dir]
		if c.dirs[dir].inflight.Load() > 0 || g.waiting.Load() > 0 {
			g.update(c, dir)
		}
	}
	return c.entry.pool.release(c.entry)
}

// rawConn is the syscall.RawConn of a handle.
type rawConn struct{ c *Conn }

func (r rawConn) Control(f func(fd uintptr)) error {
	if err := r.c.usable("raw-control"); err != nil {
		return err
	}
	return r.c.entry.sock.raw.Control(f)
}

func (r rawConn) Read(f func(fd uintptr) (done bool)) error {
	return r.c.do(dirRead, func() error { return r.c.entry.sock.raw.Read(f) })
}

func (r rawConn) Write(f func(fd uintptr) (done bool)) error {
	return r.c.do(dirWrite, func() error { return r.c.entry.sock.raw.Write(f) })
}
