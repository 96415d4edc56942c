package udppool

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/net/bpf"
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
	// ErrUpgraderExists reports a second NewUpgrader in one process: the
	// predecessor's sockets and the connection ID secret come once, and
	// two Upgraders would start two successors.
	ErrUpgraderExists = errors.New("udppool: NewUpgrader called twice in one process")
)

// upgradeEnv names the environment variable through which a process
// started by Upgrade finds its control and forwarding descriptors.
const upgradeEnv = "UDPPOOL_UPGRADE"

// The Upgrader's states, as its fields under mu hold them, and what each
// event does in each. Every transition takes mu; the receive path sees
// the result through publish (routeState), the kernel through resteer.
//
//	state                         fields
//	Joining   successor, before Ready   pred != nil, !ready
//	Sharing   successor, pred drains    pred != nil, ready
//	Alone     serving, no other         pred == nil, succ == nil, !handed
//	Starting  Upgrade waits for Ready   upgrading, starting != nil
//	Handed    successor took over       handed, succ != nil (exited once Exit closed)
//	Stopped   after Stop                stopped
//
//	event             Joining          Sharing           Alone     Starting                      Handed                        Stopped
//	successor ready   -                -                 -         Handed: publish, park plain   -                             successor killed,
//	                                                               sockets taken, settle, close                                ErrUpgraderStopped
//	                                                               Exit
//	successor gone    -                -                 -         Alone: kill, resteer, log,    Alone: accept, resteer,       -
//	                                                               ErrUpgradeFailed              shared reset, log, Resumed
//	                                                                                             closed, new Exit, unpark
//	predecessor gone  Joining, alone   Alone: resteer    -         -                             -                             -
//	                  in its groups    (errors logged),
//	                                   predGone closed
//	Ready             Sharing (or      nil               nil       -                             -                             ErrUpgraderStopped
//	                  rolled back)
//	Upgrade           waits for        waits for         Starting  ErrUpgradeInProgress          ErrUpgradeInProgress          ErrUpgraderStopped
//	                  predecessor gone predecessor gone
//	Stop              Stopped          Stopped           Stopped   Stopped: the wait for Ready   Stopped: 'gone' to the        ErrUpgraderStopped
//	                                                               ends, successor killed        successor
//
// Signals are the application's: examples/upgrade
// makes SIGHUP an Upgrade (refused with a line while one runs or while it
// drains) and SIGTERM/SIGINT a drain and Stop; signals during a drain do
// nothing but print a line.

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
	log   *slog.Logger // with this process's pid and generation
	key   cidKey
	codec *cidCodec
	gen   uint16
	first bool // not started by Upgrade

	state atomic.Pointer[routeState]
	// forwarded counts the datagrams this process forwarded to the other
	// generation: near zero where the kernel steers.
	forwarded atomic.Uint64

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
	// tcp holds this process's copy of each TCP listening socket (see
	// Listen), by the spelling it was asked for; tcpInherited those of the
	// predecessor nobody has listened on yet.
	tcp          map[spelling]*os.File
	tcpInherited map[spelling]*os.File
	// anyPort lists, in the predecessor's order, its sockets bound for a
	// port 0 key, which this process's port 0 keys of the same address
	// take over; ephemeral holds this process's own, for its successor.
	anyPort       []Key
	ephemeral     map[Key]bool
	ephemeralLive int // len(ephemeral) at its last pruning
	upgrading     bool
	announced     bool // Ready has told the service manager and the PID file
	handed        bool // a successor took over
	stopped       bool
	ready         bool
	pred          *peer
	succ          *peer

	hsMu       sync.Mutex
	handshakes map[*handshake]struct{}
	hsSettled  chan struct{} // closed when handshakes empties

	predGone chan struct{}   // closed once no predecessor is left
	exit     chan struct{}   // closed at the hand-over to a successor
	exited   bool            // exit is closed
	resumed  chan struct{}   // closed when the successor of the last hand-over died
	taken    map[string]bool // the sockets that successor took over, by Key.String()
	starting *peer           // a successor not yet ready
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
	pid  int
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
	pidFile      string
	log          *slog.Logger
	noSupervisor bool
	serverID     ServerID // serverid.go
}

// WithUpgradeLogger makes the Upgrader log through l what an operator
// wants to know about upgrades: successors started (Info), ready (Info)
// and failed before ready (Error), a successor that exited after taking
// over (Error), and predecessors gone (Info). Each record carries this
// process's pid and process generation ("pid", "process_generation"), and
// the other process's where there is one ("peer_pid", "peer_generation").
// Without this option the Upgrader is silent.
func WithUpgradeLogger(l *slog.Logger) UpgradeOption {
	return func(o *upgradeOptions) {
		if l != nil {
			o.log = l
		}
	}
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

// upgraderMade records the NewUpgrader call of this process.
var upgraderMade atomic.Bool

// NewUpgrader returns the Upgrader of this process. In a process started by
// Upgrade it connects to the predecessor and receives its sockets; call it
// once, early in main, before the pools it serves bind anything. A second
// call fails with ErrUpgraderExists, also after the first failed or its
// Upgrader stopped.
//
// In the first process of a PID namespace (PID 1 of a container), whose
// exit would kill every other process of the namespace and with them the
// successor, NewUpgrader does not return: the process becomes a small
// supervisor that starts the program again as its first serving
// generation (with the command of WithUpgradeCommand), forwards SIGHUP,
// SIGINT, SIGTERM, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH to the serving
// generation, follows the hand-overs, reaps every process that ends, and
// exits with the status of the last generation once no process is left.
// WithSupervisor(false) turns this off.
//
// Under systemd (NOTIFY_SOCKET set) the Upgrader speaks the notify
// protocol: READY=1 when the first generation is ready, RELOADING=1 when an
// upgrade starts, MAINPID= of the successor with READY=1 at the hand-over
// (sent by the old main process, which waits until systemd has read it),
// READY=1 again after a failed upgrade, and STOPPING=1 when the last
// generation stops; a unit with Type=notify follows its upgrades. See
// WithPIDFile for units with PIDFile=.
func NewUpgrader(opts ...UpgradeOption) (*Upgrader, error) {
	if upgraderMade.Swap(true) {
		return nil, ErrUpgraderExists
	}
	env, ok := os.LookupEnv(upgradeEnv)
	if ok {
		os.Unsetenv(upgradeEnv) // not for the successor's own children
	}
	return newUpgrader(env, ok, opts...)
}

// newUpgrader builds an Upgrader, of a successor if started is set (with
// env the value of upgradeEnv), of a first generation otherwise.
func newUpgrader(env string, started bool, opts ...UpgradeOption) (*Upgrader, error) {
	u := &Upgrader{
		opts:         upgradeOptions{readyTimeout: time.Minute, log: discardLogger},
		conns:        make(map[string]*forwardConn),
		socks:        make(map[Key]*socket),
		predQUIC:     make(map[Key]bool),
		joined:       make(map[Key]bool),
		shared:       make(map[Key]bool),
		predKeys:     make(map[Key]bool),
		predInodes:   make(map[Key]uint64),
		inherited:    make(map[Key]*os.File),
		tcp:          make(map[spelling]*os.File),
		tcpInherited: make(map[spelling]*os.File),
		ephemeral:    make(map[Key]bool),
		predGone:     make(chan struct{}),
		exit:         make(chan struct{}),
		resumed:      make(chan struct{}),
		handshakes:   make(map[*handshake]struct{}),
	}
	for _, o := range opts {
		o(&u.opts)
	}
	if !started {
		if !u.opts.noSupervisor {
			u.superviseIfPID1() // in PID 1, never returns
		}
		u.first = true
		if _, err := rand.Read(u.key[:]); err != nil {
			return nil, err
		}
		u.gen = 1
		u.codec = newCIDCodec(u.key)
		u.ready = true
		u.log = u.opts.log.With(slog.Int("pid", os.Getpid()), processGenAttr(u.gen))
		close(u.predGone)
		u.publish()
		return u, nil
	}
	u.log = u.opts.log.With(slog.Int("pid", os.Getpid()))
	if err := u.connectPredecessor(env); err != nil {
		return nil, fmt.Errorf("udppool: upgrade from predecessor: %w", err)
	}
	return u, nil
}

func processGenAttr(gen uint16) slog.Attr { return slog.Uint64("process_generation", uint64(gen)) }

func peerAttrs(s *peer) []any {
	return []any{slog.Int("peer_pid", s.pid), slog.Uint64("peer_generation", uint64(s.gen))}
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
// stop accepting, let connections finish, call Stop and exit. After
// Resumed's channel closes it returns a new channel, for the next
// hand-over.
func (u *Upgrader) Exit() <-chan struct{} {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.exit
}

// Resumed returns a channel that is closed when the successor of the last
// hand-over exits before this process has called Stop: this process then
// takes every new handshake again, as before the upgrade (the kernel and
// the forwarding send them here within a moment of the successor's death),
// and may Upgrade again. An application that stopped accepting at Exit
// listens again; the connections it drains are not affected. Call it after
// Exit's channel has closed: before, it returns a channel that never
// closes.
func (u *Upgrader) Resumed() <-chan struct{} {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.resumed
}

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
	for _, f := range u.transports() {
		f.kick()
	}
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
	if !steer || !s.reuse { // an activated socket may lack SO_REUSEPORT
		return s, nil
	}
	if predHolds {
		if err := u.checkGroup(k, s); err != nil {
			s.conn.Close()
			u.tellPredecessor(err)
			return nil, err
		}
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

// bindNew binds the socket of a port 0 key k for p.
func (p *Pool) bindNew(ctx context.Context, k Key, o acquireOpts) (*socket, error) {
	if u := p.opts.upgrader; u != nil {
		return u.bindNew(ctx, k, p.bindOpts(k, o))
	}
	return bind(ctx, k, p.bindOpts(k, o))
}

// bindNew binds a socket for the port 0 key k. A successor takes over the
// predecessor's socket that was bound for the same key, so that an
// upgrade keeps the port the kernel chose: such a socket is in no
// reuseport group, and the generations share it.
func (u *Upgrader) bindNew(ctx context.Context, k Key, o bindOpts) (*socket, error) {
	u.mu.Lock()
	var from Key
	var f *os.File
	for i, ik := range u.anyPort {
		if ik.Network == k.Network && ik.Addr.Addr() == k.Addr.Addr() && u.inherited[ik] != nil {
			from, f = ik, u.inherited[ik]
			u.anyPort = slices.Delete(u.anyPort, i, i+1)
			break
		}
	}
	u.mu.Unlock()
	var s *socket
	var err error
	if f != nil {
		s, err = u.adopt(from, f)
	} else {
		s, err = bind(ctx, k, o)
	}
	if err != nil {
		return nil, err
	}
	lk := s.localKey(k)
	u.mu.Lock()
	u.ephemeral[lk] = true
	prune := len(u.ephemeral) >= 2*u.ephemeralLive+16
	u.mu.Unlock()
	if prune {
		u.pruneEphemeral(lk)
	}
	return s, nil
}

// pruneEphemeral forgets the port 0 sockets closed since, once their
// number has doubled: temporary transports of Pool.Dial come and go.
// The socket of keep is not in its pool yet.
func (u *Upgrader) pruneEphemeral(keep Key) {
	u.mu.Lock()
	pools := slices.Clone(u.pools)
	u.mu.Unlock()
	live := map[Key]bool{keep: true}
	for _, p := range pools { // Pool.mu is taken before u.mu, never under it
		p.mu.Lock()
		for k := range p.entries {
			live[k] = true
		}
		p.mu.Unlock()
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for k := range u.ephemeral {
		if !live[k] {
			delete(u.ephemeral, k)
		} else {
			n++
		}
	}
	u.ephemeralLive = n
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
		// Not ready: the predecessor's own program, which sends
		// everything to it. Attaching it, rather than leaving the group's
		// as it is, also undoes a ready program of a Ready that failed.
		prog = steerProgram([]uint16{u.pred.gen}, 0, false)
	}
	if err := attachProgram(raw, prog); err != nil {
		return fmt.Errorf("steering %v: %w", k, err)
	}
	return nil
}

// checkGroup makes sure that s, just bound into the predecessor's
// reuseport group of k, is at index 1 of it, behind the predecessor's
// socket alone: the index that the programs of both generations assume.
// A socket outside the process line (a stale server, anything of the same
// user with SO_REUSEPORT) that joined the group before would otherwise
// take the index meant for this process, and with it every new handshake.
//
// The check attaches a probe program that sends a marked datagram to index
// 1 and everything else to index 0, as the predecessor's program does,
// sends the marked datagram from loopback and waits for it on s, which
// nobody reads yet. s joined last, so it is at index 1 exactly when the
// group has two members. The group gets the predecessor's program back
// before checkGroup returns. A member at index 1 that is not s receives
// the marked datagram: 16 octets no QUIC stack takes for a packet.
func (u *Upgrader) checkGroup(k Key, s *socket) error {
	var mark [16]byte
	rand.Read(mark[:])
	probe := []bpf.Instruction{
		bpf.LoadExtension{Num: bpf.ExtLen},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(len(mark)), SkipFalse: 5},
		bpf.LoadAbsolute{Off: 0, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: binary.BigEndian.Uint32(mark[0:]), SkipFalse: 3},
		bpf.LoadAbsolute{Off: 4, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: binary.BigEndian.Uint32(mark[4:]), SkipFalse: 1},
		bpf.RetConstant{Val: 1},
		bpf.RetConstant{Val: 0},
	}
	if err := attachProgram(s.raw, probe); err != nil {
		return fmt.Errorf("steering %v: probing the reuseport group: %w", k, err)
	}
	found := probeGroup(k, s, mark[:])
	u.mu.Lock()
	var pred uint16
	if u.pred != nil {
		pred = u.pred.gen
	}
	ino := u.predInodes[k]
	u.mu.Unlock()
	if err := attachProgram(s.raw, steerProgram([]uint16{pred}, 0, false)); err != nil {
		return fmt.Errorf("steering %v: %w", k, err)
	}
	if found {
		return nil
	}
	ours := map[uint64]bool{s.inode: true}
	if ino != 0 {
		ours[ino] = true
	}
	if err := foreignError(k, ours); errors.Is(err, ErrForeignSocket) {
		return fmt.Errorf("udppool: upgrade refused, the reuseport group has a member outside the process line: %w", err)
	}
	return fmt.Errorf("udppool: upgrade refused: %w of %v: this process's socket is not the second member of its reuseport group", ErrForeignSocket, k)
}

// probeGroup sends mark to k's address from loopback and reports whether
// s receives it, trying a few times: loopback seldom drops, never thrice.
func probeGroup(k Key, s *socket, mark []byte) bool {
	var dsts []netip.Addr
	switch a := k.Addr.Addr(); {
	case !a.IsUnspecified():
		dsts = []netip.Addr{a}
	case k.Network == "udp4":
		dsts = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	case k.Network == "udp6":
		dsts = []netip.Addr{netip.IPv6Loopback()}
	default: // dual-stack: whichever loopback the host has
		dsts = []netip.Addr{netip.IPv6Loopback(), netip.MustParseAddr("127.0.0.1")}
	}
	buf := make([]byte, 64)
	for _, dst := range dsts {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, k.Addr.Port())))
		if err != nil {
			continue
		}
		for range 3 {
			if _, err := c.Write(mark); err != nil {
				break
			}
			s.conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			for {
				n, err := s.conn.Read(buf)
				if err != nil {
					break // the deadline: not here, or lost
				}
				if bytes.Equal(buf[:n], mark) {
					s.conn.SetReadDeadline(time.Time{})
					c.Close()
					return true
				}
			}
		}
		c.Close()
	}
	s.conn.SetReadDeadline(time.Time{})
	return false
}

// tellPredecessor sends a successor's reason to give up to the
// predecessor, whose Upgrade returns it; the successor exits after.
func (u *Upgrader) tellPredecessor(err error) {
	u.mu.Lock()
	s := u.pred
	u.mu.Unlock()
	if s == nil {
		return
	}
	msg := strings.ReplaceAll(err.Error(), "\n", " ")
	s.ctrl.Write(append(append([]byte{msgFailed}, msg...), '\n'))
}

// attachProgram is attachSteering, replaced by tests that make it fail.
var attachProgram = attachSteering

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
	if !u.announced {
		// Before a predecessor hears of it: it exits once it has.
		if err := u.announceReady(); err != nil {
			return err
		}
		u.announced = true
	}
	if u.ready {
		return nil
	}
	// Accept before the kernel sends handshakes here: until then this
	// process would forward them to the predecessor.
	u.ready = true
	u.publish()
	if err := u.resteer(); err != nil {
		// Every group back to the predecessor's program, also those that
		// took this process's before one failed.
		u.ready = false
		u.publish()
		return errors.Join(err, u.resteer())
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
	msgReady  = 'R' // successor to predecessor: serving
	msgFailed = 'F' // successor to predecessor: gives up, a line says why
	msgGone   = 'G' // predecessor to successor: its sockets are closed
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
	u.notifyReloading()
	s, err := u.start(ctx)
	if err != nil {
		u.log.Error("udppool: starting a successor failed", slog.Any("cause", err))
		u.notifyUpgradeFailed(err)
		return fmt.Errorf("udppool: upgrade: %w", err)
	}
	u.log.Info("udppool: successor started", peerAttrs(s)...)
	u.mu.Lock()
	u.starting = s // for Stop to end
	stopped := u.stopped
	u.mu.Unlock()
	err = ErrUpgraderStopped
	var taken map[string]bool
	if !stopped {
		taken, err = u.awaitReady(ctx, s)
	}
	if err != nil {
		u.mu.Lock()
		u.starting = nil
		if u.stopped {
			err = errors.Join(ErrUpgraderStopped, err)
		}
		u.mu.Unlock()
		u.log.Error("udppool: successor failed before ready; this process serves on",
			append(peerAttrs(s), slog.Any("cause", err))...)
		s.kill()
		u.notifyUpgradeFailed(err)
		u.mu.Lock()
		// The successor may have attached its program before it died:
		// put this process's back.
		rerr := u.resteer()
		u.mu.Unlock()
		return errors.Join(fmt.Errorf("udppool: upgrade: %w: %w", ErrUpgradeFailed, err), rerr)
	}
	u.mu.Lock()
	stopped = u.stopped
	u.mu.Unlock()
	if !stopped {
		// The service manager must know the successor before this
		// process can exit.
		u.notifyHandOver(s.pid)
	}
	u.mu.Lock()
	u.starting = nil
	if u.stopped {
		// Stop came first: this process ends without a hand-over, and so
		// does the upgrade it began.
		u.mu.Unlock()
		u.log.Info("udppool: successor ready after Stop; ending it", peerAttrs(s)...)
		s.kill()
		return ErrUpgraderStopped
	}
	u.log.Info("udppool: successor ready; handing over", peerAttrs(s)...)
	s.release()
	u.succ = s
	u.handed = true
	u.resumed = make(chan struct{})
	u.taken = taken
	u.publish()
	u.mu.Unlock()
	u.parkTaken(true)
	go u.receive(s)
	go u.watch(s)
	// New handshakes go to the successor from now on; those already begun
	// here finish here before the application closes its listeners.
	u.settle()
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.succ != s {
		// It died while this process settled: watch took the handshakes
		// back, and the application has nothing to leave.
		return fmt.Errorf("udppool: upgrade: %w: successor exited right after ready", ErrUpgradeFailed)
	}
	close(u.exit)
	u.exited = true
	return nil
}

// awaitReady waits for the successor's ready message.
func (u *Upgrader) awaitReady(ctx context.Context, s *peer) (taken map[string]bool, err error) {
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
		return nil, ctx.Err()
	case err != nil:
		return nil, fmt.Errorf("successor exited: %w", err)
	case b == msgFailed:
		why, _ := r.ReadString('\n')
		return nil, fmt.Errorf("successor gave up: %s", strings.TrimSuffix(why, "\n"))
	case b != msgReady:
		return nil, fmt.Errorf("unexpected control message %q", b)
	}
	taken = make(map[string]bool)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return nil, fmt.Errorf("successor exited: %w", err)
		}
		if line == "\n" {
			break
		}
		taken[strings.TrimSuffix(line, "\n")] = true
	}
	if err := s.ctrl.SetReadDeadline(time.Time{}); err != nil {
		return nil, err
	}
	// Only the sockets this successor took over are shared; one that an
	// earlier successor took over and this one binds anew is not.
	for _, f := range u.transports() {
		f.shared.Store(taken[f.keyStr])
	}
	return taken, nil
}

// parkTaken stops (on) or resumes this process's reads of the plain
// sockets that the successor took over and reads itself: the datagrams
// of a plain socket are the newest generation's, and a shared socket
// gives each to whichever process reads first. The handles keep their
// writes, deadlines and Close. Pool.mu is taken, so u.mu must not be held.
func (u *Upgrader) parkTaken(on bool) {
	u.mu.Lock()
	pools, taken := slices.Clone(u.pools), u.taken
	u.mu.Unlock()
	for _, p := range pools {
		p.mu.Lock()
		for k, e := range p.entries {
			if taken[k.String()] && e.sock != nil && e.qt == nil && !e.quic.Load() {
				e.sock.gates[dirRead].park(on, dirRead)
			}
		}
		p.mu.Unlock()
	}
}

// watch notices the successor's exit. One that exits before this process
// has stopped leaves the port to it: this process takes new handshakes
// back, its own program steers them here again, and it reads its shared
// sockets again.
func (u *Upgrader) watch(s *peer) {
	var b [1]byte
	for {
		if _, err := s.ctrl.Read(b[:]); err != nil {
			break
		}
	}
	close(s.gone)
	if u.successorGone(s) {
		u.parkTaken(false)
		u.mu.Lock()
		u.taken = nil
		u.mu.Unlock()
		// The service manager took the successor for the main process.
		u.notifyResumed()
	}
}

// successorGone forgets successor s, which has exited, and reports
// whether this process takes the port back.
func (u *Upgrader) successorGone(s *peer) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.succ != s {
		return false
	}
	u.succ = nil
	s.close()
	if u.stopped {
		u.publish()
		return false
	}
	u.log.Error("udppool: successor exited after taking over; this process takes new handshakes back", peerAttrs(s)...)
	u.handed = false
	for _, f := range u.transports() {
		f.shared.Store(false)
	}
	u.publish()
	if err := u.resteer(); err != nil {
		u.log.Error("udppool: steering back to this process failed", slog.Any("cause", err))
	}
	if u.exited {
		u.exit = make(chan struct{})
		u.exited = false
		close(u.resumed)
	}
	return true
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
	u.log.Info("udppool: predecessor gone; this process serves alone", peerAttrs(s)...)
	for k, f := range u.inherited {
		f.Close()
		delete(u.inherited, k)
	}
	u.closeTCP(true)
	// Alone now: each socket of this process is the only one, at index 0,
	// and must keep later joiners off until they are ready.
	clear(u.joined)
	if err := u.resteer(); err != nil {
		// The kernel falls back to hashing where a program names the gone
		// predecessor's index; the other generation's IDs are forwarded.
		u.log.Error("udppool: steering to this process alone failed", slog.Any("cause", err))
	}
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
	if s := u.starting; s != nil {
		s.ctrl.SetReadDeadline(pastDeadline) // Upgrade ends it
	}
	pools := slices.Clone(u.pools)
	last := !u.handed
	u.mu.Unlock()
	if last {
		u.notifyStopping()
	}
	var errs []error
	for _, p := range pools {
		if err := p.Close(); err != nil && !errors.Is(err, ErrPoolClosed) {
			errs = append(errs, err)
		}
	}
	u.mu.Lock()
	u.closeTCP(false)
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
func (u *Upgrader) settle() { u.settleFor(settleMax) }

// settleFor is settle with one deadline, max from now, for every wait in
// it: the transports flush side by side, and one that never answers (no
// quic-go server reads it) costs the others nothing.
func (u *Upgrader) settleFor(max time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), max)
	defer cancel()
	var wg sync.WaitGroup
	for _, f := range u.transports() {
		if f.serving() {
			wg.Go(func() { f.flush(ctx.Done()) })
		}
	}
	wg.Wait()
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
	case <-ctx.Done():
		u.hsMu.Lock()
		if u.hsSettled == ch {
			u.hsSettled = nil
		}
		u.hsMu.Unlock()
	}
}
