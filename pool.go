package udppool

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// A Pool shares UDP sockets among the parts of a process. Each distinct
// local socket (a Key) is bound at most once; every ListenPacket of the same
// key returns a new handle (*Conn) to that socket, and the socket closes when
// the last handle is closed.
//
// A Pool is safe for concurrent use. The zero Pool is not usable; call New.
type Pool struct {
	opts options

	stackMu sync.Mutex
	stack   *stack // nil until probed conclusively

	index *index // spellings to entries, for the fast path

	dialMu sync.Mutex // serializes Dial's choice or creation of a transport

	steering poolSteering // sockets.go

	mu      sync.Mutex
	closed  atomic.Bool        // set under mu
	groups  map[Key]*sockGroup // reuseport groups steered without an Upgrader, by base key
	entries map[Key]*entry
	dead    map[*entry]struct{} // dead sockets that still have holders
	byPort  map[uint16][]*entry // for the overlap check
}

// entry is the pool's record of one key. The entry, not the socket, is
// what excludes a second bind: it stays in the map from before the bind until
// after the socket has closed, so a new acquire of its key waits instead of
// racing a socket that is still binding or closing.
type entry struct {
	pool *Pool
	key  Key
	// refs counts handles and other references. The fast path increments
	// it only while it is positive; every change from or to zero happens
	// under Pool.mu.
	refs  atomic.Int64
	ready chan struct{} // closed when the bind has finished
	sock  *socket       // set before ready is closed, if the bind succeeded
	err   error         // set before ready is closed, if the bind failed

	closing atomic.Bool   // set under Pool.mu; no new references
	done    chan struct{} // closed once the socket is closed and the entry gone

	lingerGen int // guarded by Pool.mu; invalidates pending linger timers

	qt *sharedTransport // guarded by Pool.mu; the socket's QUIC transport, if any
	// quic is set while a shared transport serves the socket (with qt, or
	// just before it is made): plain handles are refused then.
	quic atomic.Bool

	spellings []spelling // guarded by Pool.mu; its spellings in Pool.index
}

type options struct {
	reuse   bool
	linger  time.Duration
	control func(network, address string, c syscall.RawConn) error
	lookup  resolver
	split   *bool // nil: the platform's default
	onDead  func(Key, error)
	onLeak  func(Leak)
	log     *slog.Logger

	refuseForeign bool
	upgrader      *Upgrader
}

// An Option configures a Pool.
type Option func(*options)

// WithReusePort controls SO_REUSEPORT on the sockets the pool binds (on by
// default where the platform has it). With it, a new process can bind the
// same address while this one still serves it, so an upgrade never closes
// the port. The risk: the kernel splits datagrams among all sockets of a
// reuseport group by hash, so another socket of the same user on the port
// silently takes a share of the traffic. Turn it off when no other process
// should ever share the port. On Windows the pool always binds with
// SO_EXCLUSIVEADDRUSE, which this option does not change.
func WithReusePort(on bool) Option {
	return func(o *options) { o.reuse = on }
}

// WithLinger keeps a socket bound for d after its last handle is closed, so
// that a configuration reload that closes the old handle before it acquires
// the new one does not close and rebind the port. Zero (the default) closes
// at once.
//
// Nobody reads a lingering socket, so it never lingers in company: if
// another socket shares its reuseport group (a successor process, say, which
// would otherwise lose the datagrams that the kernel hashes to the lingering
// socket), it closes at once, or as soon as the company arrives. Finding
// company needs Linux; elsewhere a socket bound with SO_REUSEPORT closes at
// once, and only Windows sockets, which are exclusive, and sockets bound
// with WithReusePort(false) linger.
func WithLinger(d time.Duration) Option {
	return func(o *options) { o.linger = max(d, 0) }
}

// WithControl adds a function that is called on each new socket before it
// is bound, after the pool has set its own options, as net.ListenConfig's
// Control is. An error from it fails the bind.
func WithControl(fn func(network, address string, c syscall.RawConn) error) Option {
	return func(o *options) { o.control = fn }
}

// New returns an empty pool.
func New(opts ...Option) *Pool {
	p := &Pool{
		opts:    options{reuse: true, lookup: net.DefaultResolver, log: discardLogger},
		index:   newIndex(),
		entries: make(map[Key]*entry),
		groups:  make(map[Key]*sockGroup),
		dead:    make(map[*entry]struct{}),
		byPort:  make(map[uint16][]*entry),
	}
	for _, o := range opts {
		o(&p.opts)
	}
	if p.opts.upgrader != nil {
		p.opts.upgrader.register(p)
	}
	return p
}

var defaultPool = New()

// Default returns the pool used by the package-level ListenPacket.
func Default() *Pool { return defaultPool }

// ListenPacket acquires a handle to a socket of the default pool; see
// (*Pool).ListenPacket.
func ListenPacket(ctx context.Context, network, address string) (*Conn, error) {
	return defaultPool.ListenPacket(ctx, network, address)
}

// ListenPacket returns a new handle to the UDP socket for network ("udp",
// "udp4" or "udp6") and address (as for net.ListenPacket), binding the
// socket if the pool does not hold it yet. Two calls share one socket
// exactly when Go would bind the same local socket for them: "udp" ":443"
// and "udp" "[::]:443" share the dual-stack socket, "udp4" "127.0.0.1:443"
// and "udp" "127.0.0.1:443" share an IPv4 one. Port 0 always binds a new
// socket, which is then shared under the port it got.
//
// A "udp" wildcard binds a dual-stack socket wherever the kernel can, also
// on hosts where loopback lacks 127.0.0.1 and net.ListenPacket would bind
// IPv4 only.
//
// A request whose addresses overlap a socket the pool holds on the same port
// (for example "udp4" "0.0.0.0:443" while "udp" ":443" is dual-stack) fails
// with ErrOverlap. Errors are *Error values; a port held by another socket
// satisfies errors.Is(err, syscall.EADDRINUSE).
func (p *Pool) ListenPacket(ctx context.Context, network, address string) (*Conn, error) {
	sp := spelling{network, address}
	if c := p.fast(sp); c != nil {
		if err := ctx.Err(); err != nil {
			c.Close()
			return nil, opError("listen", network, address, c.Key(), err)
		}
		return c, nil
	}
	k, literal, err := p.parse(ctx, network, address)
	if err != nil {
		return nil, opError("listen", network, address, Key{}, err)
	}
	c, err := p.acquire(ctx, k, acquireOpts{})
	if err != nil {
		return nil, opError("listen", network, address, k, err)
	}
	if literal && k.Addr.Port() != 0 {
		// Names are resolved anew every time; literals never change.
		p.remember(sp, c.entry)
	}
	return c, nil
}

// remember indexes e under sp for the fast path, if e is still in the
// pool: an entry that has left it must not be indexed again, since
// nothing would drop it.
func (p *Pool) remember(sp spelling, e *entry) {
	p.mu.Lock()
	if p.entries[e.key] == e && !e.closing.Load() {
		p.index.put(sp, e)
	}
	p.mu.Unlock()
}

func (p *Pool) parse(ctx context.Context, network, address string) (Key, bool, error) {
	if err := ctx.Err(); err != nil {
		return Key{}, false, err
	}
	st, err := p.hostStack()
	if err != nil {
		return Key{}, false, err
	}
	return parseKey(ctx, p.opts.lookup, st, network, address)
}

// hostStack returns what the host can bind, probing it on first use. An
// inconclusive probe (no descriptor left, say) is not remembered: a
// transient failure must not make the pool serve IPv4 only for good.
func (p *Pool) hostStack() (stack, error) {
	p.stackMu.Lock()
	defer p.stackMu.Unlock()
	if p.stack == nil {
		st, err := probeStack()
		if err != nil {
			return stack{}, err
		}
		p.stack = &st
	}
	return *p.stack, nil
}

// fast returns a new handle to a socket the pool holds under spelling sp,
// or nil if the slow path must decide.
func (p *Pool) fast(sp spelling) *Conn {
	if p.closed.Load() {
		return nil
	}
	e := p.index.get(sp)
	if e == nil {
		return nil
	}
	for {
		// A count of zero means released (lingering or closing): only the
		// slow path, under p.mu, may revive it.
		r := e.refs.Load()
		if r <= 0 {
			return nil
		}
		if e.refs.CompareAndSwap(r, r+1) {
			break
		}
	}
	// Dead or closed by Pool.Close while held, or served by a QUIC
	// transport (see acquireTransport for the order of these checks): the
	// slow path binds afresh or reports why not.
	//
	// The descriptor itself is not asked here, unlike on the slow path: a
	// system call would cost more than the rest of the acquire. A
	// descriptor closed underneath the pool is found by the first
	// operation on it, which fails with ErrSocketDead and makes the next
	// acquire bind afresh; a check here could not do better, since the
	// descriptor may be closed just after it.
	if e.closing.Load() || e.quic.Load() {
		p.release(e)
		return nil
	}
	return p.newConn(e)
}

// acquireOpts says what an acquire is for.
type acquireOpts struct {
	// quic: the handle of a shared transport, not a plain handle.
	quic bool
	// fresh: the socket must be new, and bound without SO_REUSEPORT, as a
	// port 0 socket is; it takes a port chosen for another socket (the
	// IPv6 half of a split-stack port 0 Transport).
	fresh bool
	// sockets: the number of sockets of the address (WithSockets).
	sockets int
}

func (p *Pool) bindOpts(k Key, o acquireOpts) bindOpts {
	// A socket with port 0 never joins a reuseport group: Linux may pick an
	// ephemeral port that a reuseport socket of this user already holds.
	return bindOpts{reuse: p.opts.reuse && k.Addr.Port() != 0 && !o.fresh, control: p.opts.control, quic: o.quic, sockets: o.sockets}
}

func (p *Pool) acquire(ctx context.Context, k Key, o acquireOpts) (*Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if k.Addr.Port() == 0 {
		return p.acquireNew(ctx, k, o)
	}
	for {
		p.mu.Lock()
		if p.closed.Load() {
			p.mu.Unlock()
			return nil, ErrPoolClosed
		}
		e := p.entries[k]
		if e == nil {
			if err := p.checkOverlap(k); err != nil {
				p.mu.Unlock()
				return nil, err
			}
			e = p.newEntry(k)
			e.quic.Store(o.quic)
			p.insert(e)
			p.mu.Unlock()
			// The bind runs outside Pool.mu so that a slow bind (a
			// Control function, a resolver) does not hold up other keys.
			s, err := p.bindKey(ctx, k, p.bindOpts(k, o))
			if err == nil {
				if err = p.refuseForeign(k, s); err != nil {
					s.conn.Close()
				}
			}
			return p.bound(e, s, err)
		}
		if e.closing.Load() {
			done := e.done
			p.mu.Unlock()
			select {
			case <-done:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if o.fresh {
			p.mu.Unlock()
			return nil, errPortTaken
		}
		if e.quic.Load() && !o.quic {
			// Served by a transport, or claimed by one that its creator
			// is still setting up (quic is set with qt, or just before).
			qt := e.qt
			p.mu.Unlock()
			if qt == nil || !qt.closing {
				return nil, ErrOwnedByTransport
			}
			// Wait until the transport has stopped reading.
			select {
			case <-qt.done:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if e.sock != nil {
			// A socket broken underneath the pool would otherwise be
			// handed out forever: replace it.
			if err := e.sock.check(); err != nil {
				p.mu.Unlock()
				p.markDead(e, err)
				continue
			}
		}
		e.refs.Add(1)
		e.lingerGen++ // a pending linger timer must not close it now
		bound := e.sock != nil
		p.mu.Unlock()
		if !bound {
			select {
			case <-e.ready:
			case <-ctx.Done():
				p.release(e)
				return nil, ctx.Err()
			}
		}
		if e.err != nil {
			return nil, e.err
		}
		return p.newConn(e), nil
	}
}

// bound finishes the bind of e by the caller that created it.
func (p *Pool) bound(e *entry, s *socket, err error) (*Conn, error) {
	p.mu.Lock()
	if err == nil && p.closed.Load() {
		s.conn.Close()
		err = ErrPoolClosed
	}
	if err != nil {
		e.err = err
		p.remove(e)
		close(e.ready)
		p.mu.Unlock()
		return nil, err
	}
	e.sock = s
	close(e.ready)
	p.mu.Unlock()
	p.logBound(e)
	return p.newConn(e), nil
}

// acquireNew binds a socket for a port 0 key, which is never shared before
// it exists, and enters it under the port it got.
func (p *Pool) acquireNew(ctx context.Context, k Key, o acquireOpts) (*Conn, error) {
	s, err := p.bindNew(ctx, k, o)
	if err != nil {
		return nil, err
	}
	k = s.localKey(k)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed.Load() {
		s.conn.Close()
		return nil, ErrPoolClosed
	}
	if err := p.checkOverlap(k); err != nil {
		s.conn.Close()
		return nil, err
	}
	if held := p.entries[k]; held != nil {
		// The kernel gave us a port that a socket of this pool holds:
		// only possible if that socket is not ours to share.
		s.conn.Close()
		return nil, overlapError(held.key)
	}
	e := p.newEntry(k)
	e.quic.Store(o.quic)
	e.sock = s
	close(e.ready)
	p.insert(e)
	p.logBound(e)
	return p.newConn(e), nil
}

func (p *Pool) logBound(e *entry) {
	if name := e.sock.activated; name != "" {
		p.opts.log.Info("udppool: socket taken from socket activation", keyAttr(e.key), slog.String("name", name))
		return
	}
	p.opts.log.Debug("udppool: socket bound", keyAttr(e.key), slog.String("local", e.sock.laddr.String()))
}

// newEntry returns an entry holding one reference, for its creator.
func (p *Pool) newEntry(k Key) *entry {
	e := &entry{pool: p, key: k, ready: make(chan struct{}), done: make(chan struct{})}
	e.refs.Store(1)
	return e
}

func (p *Pool) newConn(e *entry) *Conn {
	c := &Conn{entry: e}
	if p.opts.onLeak != nil { // the closure would cost an allocation
		c.leak = watch(p, c, "Conn", e.key, func() { p.release(e) })
	}
	return c
}

// checkOverlap returns an ErrOverlap error if k overlaps a held key.
// p.mu must be held.
func (p *Pool) checkOverlap(k Key) error {
	for _, e := range p.byPort[k.Addr.Port()] {
		if k.overlaps(e.key) {
			return overlapError(e.key)
		}
	}
	return nil
}

// insert and remove keep entries and byPort in step. p.mu must be held.
func (p *Pool) insert(e *entry) {
	p.entries[e.key] = e
	port := e.key.Addr.Port()
	p.byPort[port] = append(p.byPort[port], e)
}

func (p *Pool) remove(e *entry) {
	if p.entries[e.key] != e {
		return
	}
	delete(p.entries, e.key)
	p.index.forget(e)
	port := e.key.Addr.Port()
	if l := slices.DeleteFunc(p.byPort[port], func(o *entry) bool { return o == e }); len(l) > 0 {
		p.byPort[port] = l
	} else {
		delete(p.byPort, port)
	}
}

// errRefCount reports a release without a matching acquire: a bug in this
// package, reported rather than driving the count negative.
var errRefCount = errors.New("udppool: reference released twice")

// release drops one reference to e and closes its socket with the last one.
func (p *Pool) release(e *entry) error {
	switch r := e.refs.Add(-1); {
	case r > 0:
		return nil
	case r < 0:
		e.refs.Add(1)
		return errRefCount
	}
	p.mu.Lock()
	if e.refs.Load() == 0 {
		delete(p.dead, e)
	}
	if e.refs.Load() > 0 || e.closing.Load() || e.sock == nil {
		// Revived by an acquire meanwhile, already closed by Pool.Close,
		// or still binding (its binder holds a reference and finishes).
		p.mu.Unlock()
		return nil
	}
	if p.opts.linger > 0 {
		gen := e.lingerGen
		p.mu.Unlock()
		p.linger(e, gen)
		return nil
	}
	e.closing.Store(true)
	p.mu.Unlock()
	return p.destroy(e)
}

// lingerPoll is how often a lingering socket looks for company in its
// reuseport group.
var lingerPoll = 100 * time.Millisecond

// linger keeps the released socket of e bound until the linger time ends,
// unless it is acquired again first (which changes e.lingerGen from gen). A
// lingering socket has no reader, so it must not stay in a reuseport group
// beside other sockets, such as a successor process's, whose datagrams it
// would swallow: it closes as soon as it has company, looked for now and
// every lingerPoll.
func (p *Pool) linger(e *entry, gen int) {
	end := time.Now().Add(p.opts.linger)
	var check func()
	check = func() {
		p.mu.Lock()
		lingering := e.lingers(gen)
		p.mu.Unlock()
		if !lingering {
			return
		}
		left := time.Until(end)
		if left <= 0 {
			p.expire(e, gen)
			return
		}
		if !e.sock.alone(e.key) {
			p.opts.log.Info("udppool: lingering socket closed: another socket shares its reuseport group", keyAttr(e.key))
			p.expire(e, gen)
			return
		}
		time.AfterFunc(min(left, lingerPoll), check)
	}
	check()
}

// lingers reports whether e is released and has not been acquired since
// the release that started linger generation gen. Pool.mu must be held.
func (e *entry) lingers(gen int) bool {
	return e.refs.Load() == 0 && !e.closing.Load() && e.lingerGen == gen
}

// expire closes e when its linger time ends, unless it was acquired since.
func (p *Pool) expire(e *entry, gen int) {
	p.mu.Lock()
	if !e.lingers(gen) {
		p.mu.Unlock()
		return
	}
	e.closing.Store(true)
	p.mu.Unlock()
	p.destroy(e)
}

// closeSocket closes the socket in destroy. Tests replace it to act at the
// moment of the close, before the entry may leave the pool.
var closeSocket = (*net.UDPConn).Close

// destroy closes the socket of an entry marked closing, then removes the
// entry. Until then the entry stays in the map and new acquires of its key
// wait on done, so they never bind beside a socket that is still open.
func (p *Pool) destroy(e *entry) error {
	socketLeft(e.sock)
	err := closeSocket(e.sock.conn)
	p.mu.Lock()
	p.remove(e)
	close(e.done)
	p.mu.Unlock()
	p.opts.log.Debug("udppool: socket closed", keyAttr(e.key))
	return err
}

// Close closes every socket of the pool, whatever handles are still open;
// their operations then fail with net.ErrClosed. Later calls of Close and
// ListenPacket fail with ErrPoolClosed.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed.Load() {
		p.mu.Unlock()
		return &Error{Op: "close", Err: ErrPoolClosed}
	}
	p.closed.Store(true)
	var live []*entry
	var transports []*sharedTransport
	for _, e := range p.entries {
		if e.sock != nil && !e.closing.Load() {
			e.closing.Store(true)
			live = append(live, e)
		}
		if e.qt != nil {
			transports = append(transports, e.qt)
		}
	}
	p.mu.Unlock()
	// Halt first, so that Accepts report the closed pool rather than the
	// failure of a transport whose socket went away.
	for _, st := range transports {
		st.halt(ErrPoolClosed)
	}
	var errs []error
	for _, e := range live {
		errs = append(errs, p.destroy(e))
	}
	return errors.Join(errs...)
}

// SocketStats describes one socket of a pool.
type SocketStats struct {
	Key       Key
	LocalAddr *net.UDPAddr
	Refs      int           // open handles; zero while lingering
	Opened    time.Time     // when the socket was bound
	Age       time.Duration // time since Opened
	// Activated is the name (LISTEN_FDNAMES) of a socket that the service
	// manager bound and passed by socket activation; empty for a socket
	// the pool bound itself.
	Activated string
	// Dead is the error that killed the socket (see ErrSocketDead). A dead
	// socket is already closed; it is listed until its holders release it.
	Dead error
	// SendErrors counts failed sends by the kind of error, for example
	// "invalid argument" for a destination with port 0. They fail the one
	// send and never close the socket.
	SendErrors map[string]uint64
	// Listeners lists the QUIC listener epochs on the socket that accept
	// or still have connections, oldest first; during a reload the old
	// epoch drains to zero connections while the new one accepts. Epoch is
	// the newest epoch's number. (An epoch is a listener's reload count on
	// its socket; Upgrader.Generation counts processes.) A listener's
	// counts are its own, over every socket of its Transport: the sockets
	// of a split-stack or WithSockets Transport list the same ones, and
	// ConnsDelivered says how many connections each socket carried.
	Listeners []ListenerStats
	Epoch     uint64
	// ConnsRefused counts QUIC connections that completed a handshake but
	// that the pool closed because no listener could take them: none was
	// open, or the newest one's accept queue was full.
	ConnsRefused uint64
	// ConnsDelivered counts QUIC connections of this socket that a
	// listener took.
	ConnsDelivered uint64
	// Rerouted counts datagrams that reached this socket while their
	// connection ID named a sibling socket of the address (WithSockets),
	// and that the pool moved to it: near zero while the kernel steers
	// right.
	Rerouted uint64
}

// Stats returns a snapshot of the pool's sockets, sorted by key.
func (p *Pool) Stats() []SocketStats {
	p.mu.Lock()
	stats := make([]SocketStats, 0, len(p.entries)+len(p.dead))
	add := func(e *entry) {
		st := SocketStats{
			Key:       e.key,
			LocalAddr: e.sock.laddr,
			Refs:      int(e.refs.Load()),
			Opened:    e.sock.opened,
			Age:       time.Since(e.sock.opened),
			Activated: e.sock.activated,

			SendErrors: e.sock.sendErrors.snapshot(),
		}
		if cause := e.sock.dead.Load(); cause != nil {
			st.Dead = *cause
		}
		stats = append(stats, st)
	}
	for _, e := range p.entries {
		if e.sock != nil && !e.closing.Load() {
			add(e)
		}
	}
	for e := range p.dead {
		add(e)
	}
	transports := make(map[int]*sharedTransport)
	for i, st := range stats {
		if e := p.entries[st.Key]; st.Dead == nil && e != nil && e.qt != nil {
			transports[i] = e.qt
		}
	}
	p.mu.Unlock()
	for i, st := range transports {
		stats[i].ConnsRefused = st.refused.Load()
		stats[i].ConnsDelivered = st.delivered.Load()
		if st.fwd != nil {
			stats[i].Rerouted = st.fwd.rerouted.Load()
		}
		stats[i].Listeners = st.stats()
		if n := len(stats[i].Listeners); n > 0 {
			stats[i].Epoch = stats[i].Listeners[n-1].Epoch
		}
	}
	slices.SortFunc(stats, func(a, b SocketStats) int {
		return cmp.Or(cmp.Compare(a.Key.Addr.Port(), b.Key.Addr.Port()),
			cmp.Compare(a.Key.Network, b.Key.Network),
			a.Key.Addr.Addr().Compare(b.Key.Addr.Addr()),
			cmp.Compare(a.Key.Socket, b.Key.Socket))
	})
	return stats
}
