package udppool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// socket is one bound UDP socket shared by every handle of its key.
type socket struct {
	conn   *net.UDPConn
	raw    syscall.RawConn
	laddr  *net.UDPAddr
	opened time.Time
	// gates coordinate the one kernel read deadline and the one write
	// deadline among handles; see gate.
	gates [2]gate

	fd         uintptr // the descriptor, for check
	inode      uint64
	reuse      bool   // bound with SO_REUSEPORT: other sockets may join its group
	activated  string // passed by socket activation, with this name
	sendErrors errorCounts
	dead       atomic.Pointer[error] // set once the socket is found dead
	group      *sockGroup            // its reuseport group, where this process steers it
}

const (
	dirRead = iota
	dirWrite
)

// bindOpts says how to create a socket.
type bindOpts struct {
	reuse   bool
	control func(network, address string, c syscall.RawConn) error
	quic    bool // for a shared QUIC transport
	sockets int  // the sockets of the address (WithSockets), one of which this is
}

// bind opens the socket of k. A dual-stack key binds an IPv6 socket and
// clears IPV6_V6ONLY itself rather than relying on the net package's probe,
// which gives up on dual-stack when loopback lacks 127.0.0.1.
func bind(ctx context.Context, k Key, o bindOpts) (*socket, error) {
	if k.Addr.Port() != 0 {
		// A socket the service manager bound for this process is the
		// socket of its key: binding beside it would split its traffic
		// or fail on a privileged port.
		if s, err := takeActivated(k); s != nil || err != nil {
			return s, err
		}
	}
	network := k.Network
	if k.dualStack() {
		network = "udp6"
	}
	lc := net.ListenConfig{Control: func(nw, addr string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if k.dualStack() {
				if serr = setDualStack(fd); serr != nil {
					serr = os.NewSyscallError("setsockopt IPV6_V6ONLY", serr)
					return
				}
			}
			if serr = setSharing(fd, o.reuse); serr != nil {
				serr = os.NewSyscallError("setsockopt port sharing", serr)
			}
		})
		if err = errors.Join(err, serr); err != nil {
			return err
		}
		if o.control != nil {
			return o.control(nw, addr, c)
		}
		return nil
	}}
	pc, err := lc.ListenPacket(ctx, network, k.Addr.String())
	if err != nil {
		return nil, err
	}
	uc, ok := pc.(*net.UDPConn)
	if !ok { // only possible if a future net package changes its types
		pc.Close()
		return nil, fmt.Errorf("unexpected %T from net.ListenPacket", pc)
	}
	s, err := newSocket(uc)
	if err != nil {
		return nil, err
	}
	s.reuse = o.reuse
	return s, nil
}

func newSocket(uc *net.UDPConn) (*socket, error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		uc.Close()
		return nil, err
	}
	s := &socket{conn: uc, raw: raw, laddr: uc.LocalAddr().(*net.UDPAddr), opened: time.Now()}
	// The inode identifies the socket in the kernel's tables (see Check);
	// 0 where the platform has none.
	s.inode, _ = socketInode(raw)
	if err := raw.Control(func(fd uintptr) { s.fd = fd }); err != nil {
		uc.Close()
		return nil, err
	}
	s.gates[dirRead].init(uc.SetReadDeadline)
	s.gates[dirWrite].init(uc.SetWriteDeadline)
	return s, nil
}

// check reports an error if the socket's descriptor was closed or replaced
// underneath the pool. It asks the descriptor number recorded at bind time
// directly, without the net package's bookkeeping, so that it costs one
// system call and no allocation on the fast path of an acquire. Once the
// pool itself has closed the socket the number may name another
// descriptor; callers look at the entry's closing flag, which is set
// before the pool closes a socket, before they believe a failure.
func (s *socket) check() error {
	if err := checkSocket(s.fd); err != nil {
		return os.NewSyscallError("getsockopt", err)
	}
	return nil
}

// alone reports whether no other socket can share the datagrams of this
// socket of k: it is not in a reuseport group, or no socket outside the
// pool has joined its group. Where that cannot be found out, the answer is
// no.
func (s *socket) alone(k Key) bool {
	if !s.reuse || runtime.GOOS == "windows" { // Windows binds exclusively
		return true
	}
	found, err := foreignSockets(k, map[uint64]bool{s.inode: true})
	return err == nil && len(found) == 0
}

// localKey returns k with the port the socket really got, for port 0.
func (s *socket) localKey(k Key) Key {
	k.Addr = netip.AddrPortFrom(k.Addr.Addr(), uint16(s.laddr.Port))
	return k
}

// probeStack finds out whether this host can bind a dual-stack wildcard and
// IPv6 at all, by binding sockets exactly as the pool would. When an IPv6
// probe fails, an IPv4 socket must bind at the same time for the answer to
// count: otherwise the failure says nothing about IPv6 (no descriptor left,
// no memory) and is returned instead of being taken for a host without
// IPv6.
func probeStack() (stack, error) {
	try := func(network string) error {
		k := Key{Network: network, Addr: netip.AddrPortFrom(netip.IPv6Unspecified(), 0)}
		if network == "udp4" {
			k.Addr = netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
		}
		s, err := bind(context.Background(), k, bindOpts{})
		if err != nil {
			return err
		}
		return s.conn.Close()
	}
	dual, v6 := try("udp"), try("udp6")
	if dual != nil || v6 != nil {
		if err := try("udp4"); err != nil {
			return stack{}, fmt.Errorf("probing the host's IP stacks: %w", err)
		}
	}
	return stack{dualStack: dual == nil, ipv6: v6 == nil}, nil
}

// pastDeadline is a deadline that has already expired: setting it on the
// socket makes every pending and future operation return at once.
var pastDeadline = time.Unix(1, 0)

// A gate shares one kernel deadline (read or write) of a socket among its
// handles, so that each handle has deadlines and a Close of its own.
//
// An operation without a deadline on an open handle takes the fast path:
// it counts itself in its handle's inflight counter and calls the socket
// directly, so quic-go keeps batched reads. Handles that have a deadline or
// were closed while an operation was in flight are watched: the socket
// deadline is the earliest effective deadline among watched handles with
// operations in flight (a closed handle's is in the past). When the socket
// deadline fires, every operation in flight returns; those whose own handle
// has not expired wait until the socket deadline moves and try again. So
// one handle's deadline or Close costs others a spurious wake-up, never an
// error or a datagram.
type gate struct {
	set func(time.Time) error

	mu      sync.Mutex
	cur     time.Time          // deadline last set on the socket
	watched map[*Conn]struct{} // handles whose in-flight operations need a deadline
	changed chan struct{}      // closed and replaced when cur or a handle's state changes
	// waiting counts operations in waitRetry. It is written under mu and
	// read without it by Close, which need not wake anyone when it is zero.
	waiting atomic.Int32
	// parked holds the socket deadline in the past, so that operations
	// wait (in waitRetry, until their own deadline or Close) instead of
	// reaching the socket: a process that handed a shared socket over to
	// its successor stops reading it. Written under mu.
	parked atomic.Bool
}

// park holds every operation of the gate's direction back, or lets them
// go again.
func (g *gate) park(on bool, dir int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.parked.Store(on)
	g.recompute(dir)
}

func (g *gate) init(set func(time.Time) error) {
	g.set = set
	g.watched = make(map[*Conn]struct{})
	g.changed = make(chan struct{})
}

// recompute sets the socket deadline to the earliest effective deadline of
// the watched handles that have operations in flight. g.mu must be held.
func (g *gate) recompute(dir int) {
	var next time.Time
	for c := range g.watched {
		d := &c.dirs[dir]
		if d.inflight.Load() == 0 {
			delete(g.watched, c)
			continue
		}
		t := c.effectiveDeadline(dir)
		if t.IsZero() {
			delete(g.watched, c)
			continue
		}
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	if g.parked.Load() {
		next = pastDeadline
	}
	if !next.Equal(g.cur) {
		g.cur = next
		// An error means the socket is closed, which every operation
		// then reports by itself.
		_ = g.set(next)
		g.notify()
	}
}

// notify wakes operations waiting in waitRetry. g.mu must be held.
func (g *gate) notify() {
	if g.waiting.Load() > 0 {
		close(g.changed)
		g.changed = make(chan struct{})
	}
}

// update re-evaluates handle c after its deadline or state changed.
func (g *gate) update(c *Conn, dir int) {
	g.mu.Lock()
	if c.dirs[dir].inflight.Load() > 0 {
		g.watched[c] = struct{}{}
	}
	g.recompute(dir)
	g.notify()
	g.mu.Unlock()
}

// enter registers an operation of c that has a deadline or whose handle is
// closed. It returns a non-nil error if the operation must not start.
func (g *gate) enter(c *Conn, dir int) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := c.expired(dir); err != nil {
		return err
	}
	c.dirs[dir].inflight.Add(1)
	g.watched[c] = struct{}{}
	g.recompute(dir)
	return nil
}

// leave is called after a watched operation of c ended.
func (g *gate) leave(dir int) {
	g.mu.Lock()
	g.recompute(dir)
	g.mu.Unlock()
}

// waitRetry waits, after an operation of c timed out because of another
// handle's deadline, until the socket deadline is no longer in the past. It
// returns an error if c itself expired or was closed meanwhile.
func (g *gate) waitRetry(c *Conn, dir int) error {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	g.mu.Lock()
	defer g.mu.Unlock()
	g.waiting.Add(1)
	defer g.waiting.Add(-1)
	for {
		if err := c.expired(dir); err != nil {
			return err
		}
		if g.cur.IsZero() || time.Now().Before(g.cur) {
			return nil
		}
		ch := g.changed
		var expire <-chan time.Time
		if t := c.deadline(dir); !t.IsZero() {
			if timer == nil {
				timer = time.NewTimer(time.Until(t))
			} else {
				timer.Reset(time.Until(t))
			}
			expire = timer.C
		}
		g.mu.Unlock()
		select {
		case <-ch:
		case <-expire:
		}
		g.mu.Lock()
	}
}
