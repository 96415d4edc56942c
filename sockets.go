package udppool

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/bpf"

	"github.com/udppool/udppool/internal/quiclb"
	"github.com/udppool/udppool/internal/steer"
)

// Several sockets per address. quic-go reads each socket from one
// goroutine, which bounds what one quic.Transport receives; N sockets of one
// address in one reuseport group, each with its own quic.Transport, scale
// with cores. The kernel would spread their datagrams by the hash of the
// 4-tuple, which breaks a connection whose client changes its address:
// the new 4-tuple hashes to another socket, whose quic.Transport does not
// know it. So the sockets' connection IDs carry their socket index, and the
// group's reuseport program (internal/steer) sends each datagram to the
// socket its ID names, new handshakes spread over the N. Where the kernel's
// placement is stale for a moment, the reader of the socket that got a
// sibling's datagram moves it to the sibling in process (forwardConn).

// MaxSockets is the most sockets WithSockets accepts for one address. Each
// connection ID carries the socket index in one octet; the bound keeps a
// group's program short.
const MaxSockets = 32

// ErrSocketCount reports a WithSockets count below 1 or above MaxSockets.
var ErrSocketCount = errors.New("number of sockets per address out of range")

// ErrNoSteering reports WithSockets(n > 1) where the kernel cannot steer
// datagrams among the sockets of one address by connection ID: on systems
// other than Linux, with WithReusePort(false), with the Upgrader's
// WithInheritance, and for port 0 (bound without SO_REUSEPORT). The kernel
// would split each connection's datagrams among the sockets by hash, and a
// client that changes its address would lose its connection.
var ErrNoSteering = errors.New("no kernel steering for several sockets of one address")

// WithSockets makes a Transport serve its address from n sockets (1 to
// MaxSockets) in one reuseport group, each with its own quic.Transport,
// so that receiving scales with cores: Accept returns the connections of
// all n, Dial spreads over them, Close and Drain cover all, and Stats and
// Keys list each socket (Key.Socket is its index). Connection IDs carry the
// socket index, and a reuseport program steers each datagram to the socket
// that its ID names, so a client that changes its address or port keeps its
// connection. The default, 1, is one socket as without the option.
//
// n is a property of the address: a later Transport request with a
// different n fails with ErrTransportConfig, one without WithSockets shares
// what exists. Where the kernel cannot steer (see ErrNoSteering) n > 1
// fails.
func WithSockets(n int) TransportOption {
	return func(o *transportOptions) {
		o.sockets = n
		o.socketsSet = true
	}
}

// checkSockets validates a requested socket count n for k.
func (p *Pool) checkSockets(k Key, n int) error {
	if n < 1 || n > MaxSockets {
		return fmt.Errorf("%w: %d (1 to %d)", ErrSocketCount, n, MaxSockets)
	}
	if n == 1 {
		return nil
	}
	switch u := p.opts.upgrader; {
	case !kernelSteering:
		return fmt.Errorf("%w: this system has no reuseport programs", ErrNoSteering)
	case !p.opts.reuse:
		return fmt.Errorf("%w: the pool binds without SO_REUSEPORT (WithReusePort(false))", ErrNoSteering)
	case k.Addr.Port() == 0:
		return fmt.Errorf("%w: port 0 is bound without SO_REUSEPORT; ask for a port", ErrNoSteering)
	case u != nil && u.opts.inherit:
		return fmt.Errorf("%w: the Upgrader shares inherited sockets (WithInheritance)", ErrNoSteering)
	}
	return nil
}

// probeWait bounds the wait for a probe's marked datagram, which loopback
// delivers at once unless a foreign member took it.
var probeWait = 250 * time.Millisecond

// sockGroup is what this process knows of the reuseport group of one
// address: which socket each member index is. The kernel numbers members
// in join order and moves the last member into the slot of one that
// leaves; a member of another process (the same user may join) shifts
// them. So each socket of this process is probed when it joins (steer's
// marked datagram, before anyone reads it), and all of them again, through
// their readers, when other members leave in an order this process does
// not see (the other generation's).
type sockGroup struct {
	key Key // the base key (Socket 0)

	mu      sync.Mutex
	members []steer.Member // by member index
	socks   []*socket      // this process's socket of each member, else nil
	quic    bool           // the sockets serve QUIC
	// conns are the readers of this process's QUIC sockets by socket
	// index, replaced as a whole under mu: the receive path reads them
	// without a lock, also while a probe holds mu.
	conns atomic.Pointer[[]*forwardConn]

	// prober is set while a live probe runs: the readers report its marked
	// datagrams.
	prober atomic.Pointer[liveProbe]
}

type liveProbe struct {
	p    *steer.Prober
	slot map[*forwardConn]int // the reader's index in the probe
}

// snapshot returns the members.
func (g *sockGroup) snapshot() []steer.Member {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.members)
}

// join probes s, just bound for k into the group and not yet read, at the
// member index the group's known members leave for it (it joined last),
// and records it as m. prog returns the program for a list of members:
// the group runs it during the probe for what is known before s, and gets
// it for the members with s after. ours are the inodes of the process
// line's sockets, to name a foreign one.
func (g *sockGroup) join(k Key, s *socket, m steer.Member, prog func([]steer.Member) []bpf.Instruction, ours map[uint64]bool) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	want := len(g.members)
	index, _, err := steer.ProbeFrom([]*net.UDPConn{s.conn}, want, prog(g.members), probeWait)
	if err != nil || index[0] != want {
		ours[s.inode] = true
		for _, o := range g.socks {
			if o != nil {
				ours[o.inode] = true
			}
		}
		if ferr := foreignError(k.base(), ours); errors.Is(ferr, ErrForeignSocket) {
			return fmt.Errorf("steering %v: the reuseport group has a member outside the process line: %w", k, ferr)
		}
		if err != nil {
			return fmt.Errorf("steering %v: %w: probing the reuseport group: %w", k, ErrForeignSocket, err)
		}
		return fmt.Errorf("steering %v: %w: the socket is member %d of its reuseport group, not %d", k, ErrForeignSocket, index[0], want)
	}
	g.members = append(g.members, m)
	g.socks = append(g.socks, s)
	s.group = g
	if err := attachProgram(s.raw, prog(g.members)); err != nil {
		g.members, g.socks = g.members[:want], g.socks[:want]
		s.group = nil
		return fmt.Errorf("steering %v: %w", k, err)
	}
	return nil
}

// leave forgets s, which is closing, as the kernel does: the last member
// takes its slot.
func (g *sockGroup) leave(s *socket) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, o := range g.socks {
		if o == s {
			last := len(g.members) - 1
			g.members[i], g.socks[i] = g.members[last], g.socks[last]
			g.members, g.socks = g.members[:last], g.socks[:last]
			break
		}
	}
	if cs := g.conns.Load(); cs != nil {
		next := slices.Clone(*cs)
		for j, f := range next {
			if f != nil && f.Conn.entry.sock == s {
				next[j] = nil
			}
		}
		g.conns.Store(&next)
	}
}

// forget drops the members of other processes (the other generation's,
// gone, and foreign ones), keeping this process's in index order: what the
// group is if nobody else joined, until reprobe knows better.
func (g *sockGroup) forget() {
	g.mu.Lock()
	defer g.mu.Unlock()
	var ms []steer.Member
	var ss []*socket
	for i, m := range g.members {
		if g.socks[i] != nil {
			ms, ss = append(ms, m), append(ss, g.socks[i])
		}
	}
	g.members, g.socks = ms, ss
}

// setConn records f as the reader of socket index j.
func (g *sockGroup) setConn(j int, f *forwardConn) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var next []*forwardConn
	if cs := g.conns.Load(); cs != nil {
		next = slices.Clone(*cs)
	}
	for len(next) <= j {
		next = append(next, nil)
	}
	next[j] = f
	g.conns.Store(&next)
}

// conn returns the reader of socket index j, nil if there is none.
func (g *sockGroup) conn(j int) *forwardConn {
	cs := g.conns.Load()
	if cs == nil || j >= len(*cs) {
		return nil
	}
	f := (*cs)[j]
	if f == nil || f.Conn.closed.Load() {
		return nil
	}
	return f
}

// reprobe finds the member index of each of this process's sockets again,
// through their readers, while they serve: members it does not find are
// foreign. prog is the program the group keeps during the probe. It
// reports false, changing nothing, where a socket of the group has no
// running reader (a plain socket, a transport nobody listens or dials on):
// that socket could not report its datagram.
func (g *sockGroup) reprobe(prog []bpf.Instruction) (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var fs []*forwardConn
	var ss []*socket
	var ms []steer.Member
	for i, s := range g.socks {
		if s == nil {
			continue
		}
		var f *forwardConn
		if cs := g.conns.Load(); cs != nil {
			for _, c := range *cs {
				if c != nil && c.Conn.entry.sock == s {
					f = c
				}
			}
		}
		if f == nil || !f.reading.Load() || f.Conn.closed.Load() {
			return false, nil
		}
		fs, ss, ms = append(fs, f), append(ss, s), append(ms, g.members[i])
	}
	if len(fs) == 0 {
		return false, nil
	}
	lp := &liveProbe{p: steer.NewProber(), slot: make(map[*forwardConn]int)}
	for i, f := range fs {
		lp.slot[f] = i
	}
	g.prober.Store(lp)
	// Busy readers answer late: wait longer than for a socket nobody
	// reads yet (a foreign member costs the wait).
	index, _, err := lp.p.Run(ss[0].raw, ss[0].laddr, len(fs), 0, prog, 4*probeWait)
	g.prober.Store(nil)
	if err != nil {
		return false, fmt.Errorf("probing the reuseport group of %v: %w", g.key, err)
	}
	size := slices.Max(index) + 1
	g.members = make([]steer.Member, size)
	g.socks = make([]*socket, size)
	for i := range g.members {
		g.members[i] = steer.Member{Foreign: true}
	}
	for i, idx := range index {
		g.members[idx], g.socks[idx] = ms[i], ss[i]
	}
	return true, nil
}

// foreignMembers returns the indexes of members outside the process line.
func (g *sockGroup) foreignMembers() []int {
	g.mu.Lock()
	defer g.mu.Unlock()
	var idx []int
	for i, m := range g.members {
		if m.Foreign {
			idx = append(idx, i)
		}
	}
	return idx
}

// probed reports whether f's reader took b for a live probe's datagram.
func (f *forwardConn) probed(b []byte) bool {
	if len(b) != steer.MarkLen || f.group == nil {
		return false
	}
	lp := f.group.prober.Load()
	if lp == nil {
		return false
	}
	slot, ok := lp.slot[f]
	return ok && lp.p.Seen(slot, b)
}

// sibling returns the reader of this process's sibling socket that the
// connection ID of b names, if it is not f's: the kernel's placement was
// stale (a program being replaced, a member that moved). Only an ID that
// this generation issued counts, checked by its keyed octets.
func (f *forwardConn) sibling(st *routeState, b []byte) *forwardConn {
	h := quiclb.ParseHeader(b)
	if h.DCID == nil {
		return nil
	}
	fl, ok := quiclb.Parse(h.DCID)
	if !ok || fl.Gen != st.self || int(fl.Socket) == f.socket {
		return nil
	}
	if _, ok := f.codec.Verify(h.DCID); !ok {
		return nil
	}
	if to := f.group.conn(int(fl.Socket)); to != nil && to != f {
		return to
	}
	return nil
}

// poolSteering is the connection-ID codec and generation of a pool without
// an Upgrader that serves an address from several sockets.
type poolSteering struct {
	once  sync.Once
	codec *cidCodec
}

// poolGen is the generation in the IDs of a pool without an Upgrader.
const poolGen = 1

func (p *Pool) steerCodec() *cidCodec {
	p.steering.once.Do(func() {
		var k cidKey
		rand.Read(k[:])
		p.steering.codec = newCIDCodec(k)
	})
	return p.steering.codec
}

// group returns the pool's record of the reuseport group of k's address,
// for a pool without an Upgrader.
func (p *Pool) group(k Key) *sockGroup {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := k.base()
	g := p.groups[b]
	if g == nil {
		g = &sockGroup{key: b}
		p.groups[b] = g
	}
	return g
}

// aloneProgram is the program of a group that only this pool's sockets
// serve: each datagram to the socket its ID names, new connections spread
// over the sockets.
func aloneProgram(ms []steer.Member) []bpf.Instruction {
	return steer.Program(steer.Group{Members: ms, Accept: poolGen, QUIC: true})
}

// joinAlone probes and steers s, one of several sockets bound for k's
// address by a pool without an Upgrader.
func (p *Pool) joinAlone(k Key, s *socket) error {
	p.mu.Lock()
	ours := p.inodes()
	p.mu.Unlock()
	g := p.group(k)
	g.mu.Lock()
	g.quic = true
	g.mu.Unlock()
	return g.join(k, s, steer.Member{Gen: poolGen, Socket: uint8(k.Socket)}, aloneProgram, ours)
}

// socketLeft updates the group of s, which the pool closes.
func socketLeft(s *socket) {
	g := s.group
	if g == nil {
		return
	}
	g.leave(s)
}

// memberIndex returns the index of s in its reuseport group as this
// process knows it, 0 where it steers none.
func (s *socket) memberIndex() int {
	g := s.group
	if g == nil {
		return 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, o := range g.socks {
		if o == s {
			return i
		}
	}
	return 0
}

// addPredMember records the predecessor's socket of k at member index i of
// its address's group; indexes it names no socket at are foreign.
func (u *Upgrader) addPredMember(k Key, i int, gen uint16) {
	b := k.base()
	ms := u.predMembers[b]
	for len(ms) <= i {
		ms = append(ms, steer.Member{Foreign: true})
	}
	ms[i] = steer.Member{Gen: gen, Socket: uint8(k.Socket)}
	u.predMembers[b] = ms
}
