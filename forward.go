package udppool

import (
	"encoding/binary"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/net/ipv4"

	"github.com/udppool/udppool/internal/fwdframe"
	"github.com/udppool/udppool/internal/quiclb"
)

// forwardConn is the PacketConn that a QUIC transport of an upgrading pool
// reads through. Datagrams that arrive on the socket go to quic-go as
// before, in batches and directly from the socket, unless another
// generation is alive and the datagram is that generation's: then it is
// forwarded to that process, with its source address and control messages,
// over the upgrade's datagram socket pair. Datagrams forwarded by the other
// process are merged into the reads. While only one generation runs the
// only cost is one atomic load per batch.
type forwardConn struct {
	*Conn  // quic-go's handle: writes, socket options, LocalAddr
	u      *Upgrader
	st     *sharedTransport // nil in benchmarks
	key    Key
	keyStr string
	// shared: the other generation holds this very socket (inherited one
	// way or the other), so only one generation reads it at a time.
	shared atomic.Bool
	batch  *ipv4.PacketConn

	// Sockets of one address (WithSockets): group is the reuseport group
	// (nil where the kernel does not steer), socket this one's index, and
	// multi set where the transport has siblings, whose datagrams route
	// moves to them. alone is the route state of a pool without an
	// Upgrader.
	group    *sockGroup
	socket   int
	multi    bool
	codec    *cidCodec
	alone    *routeState
	rerouted atomic.Uint64 // datagrams moved to a sibling
	reading  atomic.Bool   // quic-go's reader has started

	mu       sync.Mutex
	pending  []forwarded
	deadline time.Time // quic-go's read deadline
	woken    bool      // the handle's deadline was moved to wake a read
	notify   chan struct{}
	flushed  chan struct{} // closed when flush's marker comes back
}

// forwarded is a datagram received from the other generation.
type forwarded struct {
	addr *net.UDPAddr
	oob  []byte
	data []byte
}

// maxPending bounds the forwarded datagrams waiting for a read; beyond it
// they are dropped, as a full socket buffer drops them.
const maxPending = 1024

var _ quic.OOBCapablePacketConn = (*forwardConn)(nil)

// setupTransport makes qt issue this generation's connection IDs and read
// through a forwardConn. Pool.mu is held.
func (u *Upgrader) setupTransport(qt *quic.Transport, st *sharedTransport) {
	qt.ConnectionIDLength = 0
	qt.ConnectionIDGenerator = newCIDGenerator(u.codec, u.opts.serverID, u.gen, uint8(st.entry.key.Socket))
	u.trackHandshakes(qt)
	f := newForwardConn(st, u.codec)
	f.u = u
	st.fwd = f
	u.mu.Lock()
	f.shared.Store(u.shared[f.key])
	u.mu.Unlock()
	u.connsMu.Lock()
	u.forgetClosed()
	u.conns[f.keyStr] = f
	u.connsMu.Unlock()
	qt.Conn = f
}

// newForwardConn returns the reader of st's socket, without an Upgrader.
func newForwardConn(st *sharedTransport, codec *cidCodec) *forwardConn {
	k := st.entry.key
	f := &forwardConn{
		Conn: st.conn, st: st, key: k, keyStr: k.String(),
		notify: make(chan struct{}, 1),
		group:  st.entry.sock.group, socket: k.Socket, multi: st.sockets > 1, codec: codec,
	}
	f.batch = ipv4.NewPacketConn(f.Conn)
	if f.group != nil {
		f.group.setConn(k.Socket, f)
	}
	return f
}

// setupSteered makes qt, one of several sockets of its address in a pool
// without an Upgrader, issue IDs that name its socket and read through a
// forwardConn. Pool.mu is held.
func (p *Pool) setupSteered(qt *quic.Transport, st *sharedTransport) {
	codec := p.steerCodec()
	qt.ConnectionIDLength = 0
	qt.ConnectionIDGenerator = newCIDGenerator(codec, ServerID{}, poolGen, uint8(st.entry.key.Socket))
	f := newForwardConn(st, codec)
	f.alone = &routeState{self: poolGen, accepting: true}
	st.fwd = f
	qt.Conn = f
}

// state returns the receive path's view of the generations.
func (f *forwardConn) state() *routeState {
	if f.u == nil {
		return f.alone
	}
	return f.u.state.Load()
}

// forgetClosed drops the transports closed since. u.connsMu must be held.
func (u *Upgrader) forgetClosed() {
	for k, f := range u.conns {
		if f.Conn.closed.Load() {
			delete(u.conns, k)
		}
	}
}

// transports returns the open transports of this process, forgetting
// closed ones.
func (u *Upgrader) transports() []*forwardConn {
	u.connsMu.Lock()
	defer u.connsMu.Unlock()
	u.forgetClosed()
	fs := make([]*forwardConn, 0, len(u.conns))
	for _, f := range u.conns {
		fs = append(fs, f)
	}
	return fs
}

// serving reports whether a quic-go server reads f, which is what answers
// flush's marker: a transport that only dials, or whose listeners closed,
// has no handshakes of its own to settle.
func (f *forwardConn) serving() bool {
	if f.st == nil {
		return true
	}
	f.st.mu.Lock()
	defer f.st.mu.Unlock()
	return f.st.real != nil
}

// lookup returns the transport of key, forgetting closed ones. A key of a
// socket index this process does not have (the generations may differ in
// WithSockets) falls back to the address's first socket, whose reader
// moves the datagram on to the sibling its ID names.
func (u *Upgrader) lookup(key string) *forwardConn {
	u.connsMu.Lock()
	defer u.connsMu.Unlock()
	f := u.conns[key]
	if f != nil && f.Conn.closed.Load() {
		delete(u.conns, key)
		f = nil
	}
	if base, _, ok := strings.Cut(key, " #"); f == nil && ok {
		if f = u.conns[base]; f != nil && f.Conn.closed.Load() {
			delete(u.conns, base)
			f = nil
		}
	}
	return f
}

// readsSocket reports whether this process reads the socket now. A shared
// (inherited) socket is read by the accepting generation only, so that the
// other gets its datagrams by forwarding instead of taking a share of the
// new generation's; a socket of its own is always read.
func (f *forwardConn) readsSocket(st *routeState) bool {
	return !f.shared.Load() || st.accepting || st.peer == nil
}

// kick wakes a read so that it reconsiders where to read from.
func (f *forwardConn) kick() {
	f.mu.Lock()
	f.wake()
	f.mu.Unlock()
}

// wake interrupts a read on the socket and a wait for forwarded datagrams.
// f.mu must be held.
func (f *forwardConn) wake() {
	select {
	case f.notify <- struct{}{}:
	default:
	}
	if !f.woken {
		f.woken = true
		f.Conn.SetReadDeadline(pastDeadline)
	}
}

// enqueue adds a datagram forwarded by the other generation.
func (f *forwardConn) enqueue(pkt forwarded) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.pending) >= maxPending {
		return
	}
	f.pending = append(f.pending, pkt)
	f.wake()
}

// SetReadDeadline records quic-go's deadline, which it sets to stop its
// reader, and applies it unless a wake-up is under way (which restores it).
func (f *forwardConn) SetReadDeadline(t time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deadline = t
	select {
	case f.notify <- struct{}{}:
	default:
	}
	if f.woken {
		return nil
	}
	return f.Conn.SetReadDeadline(t)
}

// SetDeadline sets both deadlines, the read one as SetReadDeadline does.
func (f *forwardConn) SetDeadline(t time.Time) error {
	if err := f.SetReadDeadline(t); err != nil {
		return err
	}
	return f.Conn.SetWriteDeadline(t)
}

// woke reports whether a read that failed with err was interrupted by
// wake, and if so restores quic-go's deadline.
func (f *forwardConn) woke(err error) bool {
	if !isTimeout(err) {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.woken {
		return false
	}
	f.woken = false
	f.Conn.SetReadDeadline(f.deadline)
	return true
}

// takePending moves forwarded datagrams into ms.
func (f *forwardConn) takePending(ms []ipv4.Message) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for n < len(ms) && n < len(f.pending) {
		pkt := f.pending[n]
		m := &ms[n]
		m.N = copy(m.Buffers[0], pkt.data)
		m.NN = copy(m.OOB, pkt.oob)
		m.Addr = pkt.addr
		m.Flags = 0
		n++
	}
	f.pending = f.pending[n:]
	if len(f.pending) == 0 {
		f.pending = nil
	}
	return n
}

// ReadBatch reads datagrams for quic-go (which uses it instead of its own
// batch reads when the conn has it): forwarded ones first, then a batch
// from the socket, from which it forwards the other generation's.
func (f *forwardConn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	if !f.reading.Load() {
		f.reading.Store(true)
	}
	for {
		if n := f.takePending(ms); n > 0 {
			return n, nil
		}
		st := f.state()
		if !f.readsSocket(st) {
			if err := f.waitPending(); err != nil {
				return 0, err
			}
			continue
		}
		n, err := f.batch.ReadBatch(ms, flags)
		if err != nil {
			if f.woke(err) {
				continue
			}
			return 0, err
		}
		// The state may have changed while the read was blocked.
		if st = f.state(); st.peer != nil || f.multi || f.group != nil && f.group.prober.Load() != nil {
			n = f.route(st, ms[:n])
		}
		if n > 0 {
			return n, nil
		}
	}
}

// waitPending waits, while the socket is the other generation's to read,
// until a datagram is forwarded, the state changes or quic-go's deadline
// passes.
func (f *forwardConn) waitPending() error {
	f.mu.Lock()
	n, dl := len(f.pending), f.deadline
	f.woken = false // nothing is blocked on the socket now
	f.Conn.SetReadDeadline(dl)
	f.mu.Unlock()
	if n > 0 {
		return nil
	}
	var expire <-chan time.Time
	if !dl.IsZero() {
		d := time.Until(dl)
		if d <= 0 {
			return &net.OpError{Op: "read", Net: "udp", Source: f.LocalAddr(), Err: os.ErrDeadlineExceeded}
		}
		t := time.NewTimer(d)
		defer t.Stop()
		expire = t.C
	}
	select {
	case <-f.notify:
	case <-expire:
	}
	return nil
}

// ReadFrom serves quic-go where it reads single datagrams (systems without
// its batch reads), through ReadBatch.
func (f *forwardConn) ReadFrom(b []byte) (int, net.Addr, error) {
	ms := []ipv4.Message{{Buffers: [][]byte{b}}}
	if _, err := f.ReadBatch(ms, 0); err != nil {
		return 0, nil, err
	}
	return ms[0].N, ms[0].Addr, nil
}

// route forwards the datagrams of ms that belong to the other generation
// and moves the rest to the front, returning their number. Datagrams are
// copied, not their buffers swapped: quic-go ties each buffer to its index.
func (f *forwardConn) route(st *routeState, ms []ipv4.Message) int {
	kept := 0
	for i := range ms {
		m := &ms[i]
		b := m.Buffers[0][:m.N]
		if f.probed(b) {
			continue
		}
		if f.multi {
			if to := f.sibling(st, b); to != nil {
				f.rerouted.Add(1)
				ua, _ := m.Addr.(*net.UDPAddr)
				to.enqueue(forwarded{addr: ua, oob: slices.Clone(m.OOB[:m.NN]), data: slices.Clone(b)})
				continue
			}
		}
		if st.peer != nil && f.u.owner(st, b) != nil {
			f.u.forward(st.peer, f.keyStr, m)
			continue
		}
		if kept != i {
			k := &ms[kept]
			k.N = copy(k.Buffers[0], m.Buffers[0][:m.N])
			k.NN = copy(k.OOB, m.OOB[:m.NN])
			k.Addr, k.Flags = m.Addr, m.Flags
		}
		kept++
	}
	return kept
}

// owner returns the peer that a datagram belongs to, or nil if it is this
// generation's.
func (u *Upgrader) owner(st *routeState, b []byte) *peer {
	if st.peer == nil {
		return nil
	}
	h := quiclb.ParseHeader(b)
	if h.DCID != nil {
		// The check is worth computing only for the IDs of a generation
		// that runs, and for a short header not for our own: the kernel
		// sends those here, and a short header is a handshake's only if
		// it looks like nobody's.
		f, _ := quiclb.Parse(h.DCID)
		if f.Gen == st.self && !h.Long {
			return nil
		}
		if f.Gen == st.self || f.Gen == st.peer.gen {
			if _, ok := u.codec.Verify(h.DCID); ok {
				if f.Gen == st.self {
					return nil
				}
				return st.peer
			}
		}
	}
	if h.QUIC && !h.Handshake {
		return nil
	}
	// A handshake, or not QUIC: the accepting generation's.
	if st.accepting {
		return nil
	}
	return st.peer
}

// forward sends a datagram to the other generation. A full socket pair
// drops it, as a full socket buffer would.
func (u *Upgrader) forward(to *peer, key string, m *ipv4.Message) {
	u.forwarded.Add(1)
	ua, _ := m.Addr.(*net.UDPAddr)
	if ua == nil {
		return
	}
	bp := fwdBufs.Get().(*[]byte)
	if b := fwdframe.Append((*bp)[:0], key, ua.AddrPort(), m.OOB[:m.NN], m.Buffers[0][:m.N]); b != nil {
		sendForward(to, b)
		*bp = b
	}
	fwdBufs.Put(bp)
}

var fwdBufs = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// receive moves the datagrams that the other generation forwards into the
// reads of this process's transports, until the socket pair closes.
func (u *Upgrader) receive(s *peer) {
	buf := make([]byte, 1<<16+1024)
	for {
		n, err := s.fwd.Read(buf)
		if err != nil {
			return
		}
		fr, err := fwdframe.Parse(buf[:n])
		if err != nil {
			continue
		}
		if f := u.lookup(fr.Key); f != nil {
			if f.multi {
				// Forwarded to the socket it arrived on there, which
				// is not always the one of its ID here.
				if to := f.sibling(u.state.Load(), fr.Payload); to != nil {
					f = to
				}
			}
			f.enqueue(forwarded{
				addr: net.UDPAddrFromAddrPort(fr.From),
				oob:  append([]byte(nil), fr.OOB...),
				data: append([]byte(nil), fr.Payload...),
			})
		}
	}
}

// flush returns once quic-go has processed every datagram that ReadBatch
// returned before, or when stop fires. quic-go hands datagrams to its
// server in order, and the server answers a long-header packet of an
// unknown version with a Version Negotiation packet written through this
// conn: a marker of that kind, merged into the reads from an address no
// client has, comes back through WriteMsgUDP (or WriteTo) after every
// datagram read before it has been through the server, and so after the
// ConnContext of every handshake those began.
func (f *forwardConn) flush(stop <-chan struct{}) {
	ch := make(chan struct{})
	f.mu.Lock()
	f.flushed = ch
	f.mu.Unlock()
	marker := make([]byte, 1200) // quic-go answers unknown versions from this size on
	marker[0] = quiclb.LongHeader | quiclb.FixedBit
	binary.BigEndian.PutUint32(marker[1:], 0x0a1a2a3a) // reserved for forcing version negotiation
	marker[5] = 8                                      // destination ID length; the IDs stay zero
	marker[14] = 8                                     // source ID length
	retry := time.NewTicker(100 * time.Millisecond)    // quic-go drops a marker when its queue is full
	defer retry.Stop()
	for {
		f.enqueue(forwarded{addr: markerAddr, data: marker})
		select {
		case <-ch:
			return
		case <-stop:
			f.mu.Lock()
			if f.flushed == ch {
				f.flushed = nil
			}
			f.mu.Unlock()
			return
		case <-retry.C:
		}
	}
}

// markerAddr is the source address of flush's marker: port 0, which no
// datagram really comes from.
var markerAddr = &net.UDPAddr{IP: net.IPv6unspecified, Port: 0}

func isMarker(addr net.Addr) bool {
	ua, ok := addr.(*net.UDPAddr)
	return ok && ua.Port == 0 && ua.IP.Equal(net.IPv6unspecified)
}

// marked swallows the answer to flush's marker.
func (f *forwardConn) marked(addr net.Addr) bool {
	if !isMarker(addr) {
		return false
	}
	f.mu.Lock()
	if f.flushed != nil {
		close(f.flushed)
		f.flushed = nil
	}
	f.mu.Unlock()
	return true
}

// WriteMsgUDP is the socket's, except for the answer to flush's marker.
func (f *forwardConn) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error) {
	if f.marked(addr) {
		return len(b), len(oob), nil
	}
	return f.Conn.WriteMsgUDP(b, oob, addr)
}

// WriteTo is the socket's, except for the answer to flush's marker.
func (f *forwardConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if f.marked(addr) {
		return len(b), nil
	}
	return f.Conn.WriteTo(b, addr)
}
