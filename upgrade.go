package udppool

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
)

// Errors of process upgrades.
var (
	// ErrUpgradeInProgress reports an Upgrade while another one runs, or
	// after this process has handed over to a successor.
	ErrUpgradeInProgress = errors.New("upgrade in progress or done")
	// ErrUpgradeFailed reports a successor that exited, or did not call
	// Ready in time; this process keeps serving as before.
	ErrUpgradeFailed = errors.New("successor failed before ready")
	// ErrUpgraderStopped reports use of an Upgrader after Stop.
	ErrUpgraderStopped = errors.New("upgrader stopped")
)

// upgradeEnv names the environment variable through which a process
// started by Upgrade finds its control and forwarding descriptors.
const upgradeEnv = "UDPPOOL_UPGRADE"

// An Upgrader hands the sockets of its pools over from a running process to
// a new one (a new binary, typically) without closing the port and without
// breaking a connection, for QUIC as well as for plain UDP.
//
// The running process calls Upgrade, which starts the successor and waits
// until the successor calls Ready. From then on the successor receives every
// new QUIC handshake and every non-QUIC datagram, while every datagram of a
// connection the old process accepted still reaches the old process, also
// after the client's address changes: connection IDs carry the generation
// of the process that issued them (see WithUpgrader), and on Linux a
// reuseport program steers by them in the kernel; elsewhere, and for the odd
// datagram the kernel cannot place, the processes forward each other's
// datagrams over a socket pair. Exit's channel closes in the old process at
// the hand-over: it stops accepting, lets its connections finish within a
// grace period of its choice, calls Stop and exits.
//
// A successor that exits or fails to call Ready in time is killed, and the
// old process serves as before.
//
// At most two generations run at once: Upgrade in a process whose
// predecessor still drains waits until the predecessor has stopped.
//
// Upgrades need a Unix system; on Linux the kernel steers, elsewhere the
// generations share the predecessor's sockets and forward in user space.
type Upgrader struct {
	opts  upgradeOptions
	key   cidKey
	codec *cidCodec
	gen   uint16

	state atomic.Pointer[routeState]

	// connsMu guards conns only; it is taken under Pool.mu when a
	// transport is created, so nothing is locked while holding it.
	connsMu sync.Mutex
	conns   map[string]*forwardConn // QUIC transports of this process, by Key.String()

	mu       sync.Mutex
	pools    []*Pool
	socks    map[Key]*socket // sockets this process bound (not inherited)
	joined   map[Key]bool    // sockets bound into the predecessor's group
	shared   map[Key]bool    // sockets inherited from the predecessor
	predKeys map[Key]bool    // sockets the predecessor holds
	// predInodes identify the predecessor's sockets, which a successor
	// expects beside its own in a reuseport group (see WithRefuseForeign).
	predInodes map[Key]uint64
	predQUIC   map[Key]bool     // ... and serves QUIC on
	inherited  map[Key]*os.File // the predecessor's sockets, not (yet) used
	upgrading  bool
	handed     bool // a successor took over
	stopped    bool
	ready      bool
	pred       *peer
	succ       *peer

	hsMu       sync.Mutex
	handshakes map[*handshake]struct{}
	hsSettled  chan struct{} // closed when handshakes empties

	predGone chan struct{} // closed once no predecessor is left
	exit     chan struct{} // closed at the hand-over to a successor
}

// routeState is what the receive path needs to know, replaced as a whole
// whenever it changes.
type routeState struct {
	self      uint16
	accepting bool  // this generation takes new handshakes
	peer      *peer // the other live generation, if any
}

// peer is the other process of an upgrade.
type peer struct {
	gen  uint16
	ctrl *net.UnixConn
	fwd  *net.UnixConn // forwarded datagrams, both ways
	raw  syscall.RawConn
	cmd  *exec.Cmd // a successor's process
	gone chan struct{}
}

// An UpgradeOption configures an Upgrader.
type UpgradeOption func(*upgradeOptions)

type upgradeOptions struct {
	command      func(ctx context.Context) (*exec.Cmd, error)
	readyTimeout time.Duration
	inherit      bool
	serverID     ServerID // serverid.go
}

// WithUpgradeCommand sets the function that returns the successor's command,
// unstarted. By default it is os.Executable() with this process's arguments
// and environment, standard input, output and error. The Upgrader adds its
// descriptors after the command's ExtraFiles and its variable to Env.
func WithUpgradeCommand(fn func(ctx context.Context) (*exec.Cmd, error)) UpgradeOption {
	return func(o *upgradeOptions) { o.command = fn }
}

// WithReadyTimeout bounds the time from starting a successor to its Ready
// call (default one minute); a successor that takes longer is killed.
// Upgrade's context can end it earlier.
func WithReadyTimeout(d time.Duration) UpgradeOption {
	return func(o *upgradeOptions) { o.readyTimeout = d }
}

// WithInheritance makes a successor use the predecessor's sockets rather
// than bind its own, on every platform. The generations then share each
// socket: the accepting one reads it and forwards the other's datagrams to
// it in user space. Without this option the successor inherits a socket
// only where it cannot bind the address (a privileged port without the
// capability, a pool without SO_REUSEPORT) or where the kernel cannot steer
// (every system but Linux).
func WithInheritance(on bool) UpgradeOption {
	return func(o *upgradeOptions) { o.inherit = on }
}

// WithUpgrader makes the pool's sockets take part in u's upgrades. The QUIC
// transports of the pool then issue connection IDs that carry u's
// generation, replacing any ConnectionIDGenerator or ConnectionIDLength of
// WithQUICTransport.
func WithUpgrader(u *Upgrader) Option {
	return func(o *options) { o.upgrader = u }
}

// NewUpgrader returns the Upgrader of this process. In a process started by
// Upgrade it connects to the predecessor and receives its sockets; call it
// once, before the pools it serves bind anything.
func NewUpgrader(opts ...UpgradeOption) (*Upgrader, error) {
	u := &Upgrader{
		opts:       upgradeOptions{readyTimeout: time.Minute},
		conns:      make(map[string]*forwardConn),
		socks:      make(map[Key]*socket),
		predQUIC:   make(map[Key]bool),
		joined:     make(map[Key]bool),
		shared:     make(map[Key]bool),
		predKeys:   make(map[Key]bool),
		predInodes: make(map[Key]uint64),
		inherited:  make(map[Key]*os.File),
		predGone:   make(chan struct{}),
		exit:       make(chan struct{}),
		handshakes: make(map[*handshake]struct{}),
	}
	for _, o := range opts {
		o(&u.opts)
	}
	env, ok := os.LookupEnv(upgradeEnv)
	if !ok {
		if _, err := rand.Read(u.key[:]); err != nil {
			return nil, err
		}
		u.gen = 1
		u.codec = newCIDCodec(u.key)
		u.ready = true
		close(u.predGone)
		u.publish()
		return u, nil
	}
	os.Unsetenv(upgradeEnv) // not for the successor's own children
	if err := u.connectPredecessor(env); err != nil {
		return nil, fmt.Errorf("udppool: upgrade from predecessor: %w", err)
	}
	return u, nil
}

// predecessorInode returns the inode of the predecessor's socket for k,
// which a successor expects beside its own in the reuseport group while
// the predecessor drains; 0 if there is none.
func (u *Upgrader) predecessorInode(k Key) uint64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.predKeys[k] || u.pred == nil {
		return 0
	}
	return u.predInodes[k]
}

// Generation returns this process's generation: 1 for a process not started
// by Upgrade, one more than the predecessor's otherwise.
func (u *Upgrader) Generation() uint16 { return u.gen }

// Exit returns a channel that is closed when a successor has taken over:
// stop accepting, let connections finish, call Stop and exit.
func (u *Upgrader) Exit() <-chan struct{} { return u.exit }

// HasPredecessor reports whether an older generation still runs.
func (u *Upgrader) HasPredecessor() bool {
	select {
	case <-u.predGone:
		return false
	default:
		return true
	}
}

// publish replaces the receive path's view. u.mu must be held, or u not
// yet shared.
func (u *Upgrader) publish() {
	st := &routeState{self: u.gen, accepting: u.ready && !u.handed}
	if u.succ != nil && u.handed {
		st.peer = u.succ
	} else if u.pred != nil {
		st.peer = u.pred
	}
	u.state.Store(st)
	u.connsMu.Lock()
	for _, f := range u.conns {
		f.kick()
	}
	u.connsMu.Unlock()
}

func (u *Upgrader) register(p *Pool) {
	u.mu.Lock()
	u.pools = append(u.pools, p)
	u.mu.Unlock()
}

// bindKey binds the socket of k for pool p, with the upgrader's part: into
// the predecessor's reuseport group or from its inherited descriptor, and
// with the group's steering program.
func (p *Pool) bindKey(ctx context.Context, k Key, o bindOpts) (*socket, error) {
	if u := p.opts.upgrader; u != nil {
		return u.bind(ctx, k, o)
	}
	return bind(ctx, k, o)
}

func (u *Upgrader) bind(ctx context.Context, k Key, o bindOpts) (*socket, error) {
	u.mu.Lock()
	f := u.inherited[k]
	predHolds := u.predKeys[k] && u.pred != nil
	steer := kernelSteering && o.reuse && !u.opts.inherit
	u.mu.Unlock()
	if f != nil && !steer {
		return u.adopt(k, f)
	}
	s, err := bind(ctx, k, o)
	if err != nil {
		if f != nil && bindBlocked(err) {
			return u.adopt(k, f) // the predecessor's socket is the way in
		}
		return nil, err
	}
	if !steer {
		return s, nil
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if f != nil {
		f.Close()
		delete(u.inherited, k)
	}
	if predHolds {
		u.joined[k] = true
	}
	if err := u.steer(k, s.raw); err != nil {
		s.conn.Close()
		return nil, err
	}
	u.socks[k] = s
	return s, nil
}

// adopt turns the predecessor's socket of k into this process's.
func (u *Upgrader) adopt(k Key, f *os.File) (*socket, error) {
	pc, err := net.FilePacketConn(f)
	u.mu.Lock()
	f.Close()
	delete(u.inherited, k)
	if err == nil {
		u.shared[k] = true
	}
	u.mu.Unlock()
	if err != nil {
		return nil, err
	}
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return nil, fmt.Errorf("inherited socket of %v is a %T", k, pc)
	}
	return newSocket(uc)
}

// steer attaches the reuseport program of k's group as this process sees
// it: alone at index 0, or at index 1 behind the predecessor. u.mu must be
// held.
func (u *Upgrader) steer(k Key, raw syscall.RawConn) error {
	if !kernelSteering {
		return nil
	}
	prog := steerProgram([]uint16{u.gen}, 0, false)
	switch {
	case u.joined[k] && u.pred != nil && u.ready:
		// Only the predecessor's QUIC connections need steering by ID;
		// the datagrams of a plain socket go to the newest generation.
		prog = steerProgram([]uint16{u.pred.gen, u.gen}, 1, u.predQUIC[k])
	case u.joined[k] && u.pred != nil:
		return nil // the predecessor's program sends everything to it
	}
	if err := attachSteering(raw, prog); err != nil {
		return fmt.Errorf("steering %v: %w", k, err)
	}
	return nil
}

// resteer recomputes the programs of every socket this process holds.
// u.mu must be held.
func (u *Upgrader) resteer() error {
	var errs []error
	for k, s := range u.socks {
		if err := u.steer(k, s.raw); err != nil {
			if errors.Is(err, net.ErrClosed) || errors.Is(err, errBadDescriptor) {
				delete(u.socks, k) // closed since: nothing to steer
				continue
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Ready announces that this process serves: from now on it takes every new
// handshake, and a predecessor stops accepting. In a process not started by
// Upgrade it does nothing.
func (u *Upgrader) Ready() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.stopped {
		return ErrUpgraderStopped
	}
	if u.ready {
		return nil
	}
	// Accept before the kernel sends handshakes here: until then this
	// process would forward them to the predecessor.
	u.ready = true
	u.publish()
	if err := u.resteer(); err != nil {
		u.ready = false
		u.publish()
		return err
	}
	if u.pred != nil {
		// The ready message lists the sockets this process took over from
		// the predecessor, which it must stop reading.
		msg := []byte{msgReady}
		for k := range u.shared {
			msg = append(msg, k.String()...)
			msg = append(msg, '\n')
		}
		msg = append(msg, '\n')
		if _, err := u.pred.ctrl.Write(msg); err != nil {
			// The predecessor is gone: this process serves alone.
			u.predecessorGone()
		}
	}
	return nil
}

// Control messages after the hello.
const (
	msgReady = 'R' // successor to predecessor: serving
	msgGone  = 'G' // predecessor to successor: its sockets are closed
)

// Upgrade starts a successor and waits until it is ready, then hands over
// (see Upgrader). If the successor exits, ctx ends or the ready timeout
// passes first, the successor is killed and this process serves on; the
// error then wraps ErrUpgradeFailed. Upgrade waits for a predecessor that
// still drains to stop first.
func (u *Upgrader) Upgrade(ctx context.Context) error {
	u.mu.Lock()
	switch {
	case u.stopped:
		u.mu.Unlock()
		return ErrUpgraderStopped
	case u.upgrading || u.handed:
		u.mu.Unlock()
		return ErrUpgradeInProgress
	}
	u.upgrading = true
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		u.upgrading = false
		u.mu.Unlock()
	}()
	select {
	case <-u.predGone:
	case <-ctx.Done():
		return fmt.Errorf("udppool: upgrade: waiting for the predecessor to stop: %w", ctx.Err())
	}
	if err := u.Ready(); err != nil {
		return err
	}
	s, err := u.start(ctx)
	if err != nil {
		return fmt.Errorf("udppool: upgrade: %w", err)
	}
	if err := u.awaitReady(ctx, s); err != nil {
		s.kill()
		u.mu.Lock()
		// The successor may have attached its program before it died:
		// put this process's back.
		rerr := u.resteer()
		u.mu.Unlock()
		return errors.Join(fmt.Errorf("udppool: upgrade: %w: %w", ErrUpgradeFailed, err), rerr)
	}
	u.mu.Lock()
	s.release()
	u.succ = s
	u.handed = true
	u.publish()
	u.mu.Unlock()
	go u.receive(s)
	go u.watch(s)
	// New handshakes go to the successor from now on; those already begun
	// here finish here before the application closes its listeners.
	u.settle()
	close(u.exit)
	return nil
}

// awaitReady waits for the successor's ready message.
func (u *Upgrader) awaitReady(ctx context.Context, s *peer) error {
	ctx, cancel := context.WithTimeout(ctx, u.opts.readyTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { s.ctrl.SetReadDeadline(pastDeadline) })
	defer stop()
	// The successor sends nothing after the ready message, so a buffered
	// reader takes nothing from later reads.
	r := bufio.NewReader(s.ctrl)
	b, err := r.ReadByte()
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case err != nil:
		return fmt.Errorf("successor exited: %w", err)
	case b != msgReady:
		return fmt.Errorf("unexpected control message %q", b)
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("successor exited: %w", err)
		}
		if line == "\n" {
			break
		}
		if f := u.lookup(strings.TrimSuffix(line, "\n")); f != nil {
			f.shared.Store(true)
		}
	}
	s.ctrl.SetReadDeadline(time.Time{})
	return nil
}

// watch notices the successor's exit.
func (u *Upgrader) watch(s *peer) {
	var b [1]byte
	for {
		if _, err := s.ctrl.Read(b[:]); err != nil {
			break
		}
	}
	close(s.gone)
	u.mu.Lock()
	if u.succ == s {
		u.succ = nil
		u.publish()
	}
	u.mu.Unlock()
}

// watchPredecessor waits until the predecessor has closed its sockets (or
// died), then takes this process's sockets to the front of their groups.
func (u *Upgrader) watchPredecessor(s *peer) {
	var b [1]byte
	for {
		if _, err := s.ctrl.Read(b[:]); err != nil || b[0] == msgGone {
			break
		}
	}
	u.mu.Lock()
	u.predecessorGone()
	u.mu.Unlock()
}

// predecessorGone forgets the predecessor. u.mu must be held.
func (u *Upgrader) predecessorGone() {
	s := u.pred
	if s == nil {
		return
	}
	u.pred = nil
	s.close()
	for k, f := range u.inherited {
		f.Close()
		delete(u.inherited, k)
	}
	// Alone now: each socket of this process is the only one, at index 0,
	// and must keep later joiners off until they are ready.
	clear(u.joined)
	u.resteer()
	u.publish()
	close(u.predGone)
}

// Stop ends this process's part: it closes the pools registered with u
// (and with them their sockets), tells a successor that they are closed and
// closes the upgrade channels. Call it before exiting after a hand-over.
func (u *Upgrader) Stop() error {
	u.mu.Lock()
	if u.stopped {
		u.mu.Unlock()
		return ErrUpgraderStopped
	}
	u.stopped = true
	pools := slices.Clone(u.pools)
	u.mu.Unlock()
	var errs []error
	for _, p := range pools {
		if err := p.Close(); err != nil && !errors.Is(err, ErrPoolClosed) {
			errs = append(errs, err)
		}
	}
	u.mu.Lock()
	if s := u.succ; s != nil {
		s.ctrl.Write([]byte{msgGone})
		s.close()
		u.succ = nil
	}
	u.predecessorGone()
	u.publish()
	u.mu.Unlock()
	return errors.Join(errs...)
}

func (s *peer) close() {
	s.ctrl.Close()
	s.fwd.Close()
}

// Handshakes in flight. A handshake that the old generation began before
// the hand-over must still reach the application of the old generation, so
// Exit closes (and the application closes its listeners) only once every
// handshake that began before has been accepted or has failed.
type handshakeKey struct{}

// handshake is a token; it must not be of size zero, or every token could
// have the same address.
type handshake struct{ _ byte }

// settleMax bounds the wait for handshakes in flight: quic-go gives up on
// a handshake after twice its handshake idle timeout (5 s by default).
const settleMax = 10 * time.Second

// trackHandshakes makes qt's new connections count as handshakes in flight
// until a listener's Accept returns them or they close.
func (u *Upgrader) trackHandshakes(qt *quic.Transport) {
	user := qt.ConnContext
	qt.ConnContext = func(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
		h := &handshake{}
		u.hsMu.Lock()
		u.handshakes[h] = struct{}{}
		u.hsMu.Unlock()
		// quic-go cancels the context it passes in when the connection
		// closes, also when its handshake fails.
		context.AfterFunc(ctx, func() { u.handshakeEnd(h) })
		if user != nil {
			var err error
			if ctx, err = user(ctx, info); err != nil {
				return ctx, err
			}
		}
		return context.WithValue(ctx, handshakeKey{}, h), nil
	}
}

// handshakeDone ends the handshake of conn, which Accept returns.
func (st *sharedTransport) handshakeDone(conn *quic.Conn) {
	if u := st.pool.opts.upgrader; u != nil {
		if h, ok := conn.Context().Value(handshakeKey{}).(*handshake); ok {
			u.handshakeEnd(h)
		}
	}
}

func (u *Upgrader) handshakeEnd(h *handshake) {
	u.hsMu.Lock()
	delete(u.handshakes, h)
	if len(u.handshakes) == 0 && u.hsSettled != nil {
		close(u.hsSettled)
		u.hsSettled = nil
	}
	u.hsMu.Unlock()
}

// settle waits until quic-go has seen every datagram this process kept
// before the hand-over and the handshakes they began have ended, or until
// settleMax has passed.
func (u *Upgrader) settle() {
	deadline := time.NewTimer(settleMax)
	defer deadline.Stop()
	u.connsMu.Lock()
	var conns []*forwardConn
	for _, f := range u.conns {
		conns = append(conns, f)
	}
	u.connsMu.Unlock()
	for _, f := range conns {
		f.flush(deadline.C)
	}
	u.hsMu.Lock()
	if len(u.handshakes) == 0 {
		u.hsMu.Unlock()
		return
	}
	ch := make(chan struct{})
	u.hsSettled = ch
	u.hsMu.Unlock()
	select {
	case <-ch:
	case <-deadline.C:
	}
}
