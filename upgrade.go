package udppool

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/udppool/udppool/internal/steer"
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

// The Upgrader's states and what each event does in each are a table in
// upgrade_state.go, beside the one function that changes the state. Signals
// are the application's: examples/upgrade makes SIGHUP an Upgrade (refused
// with a line while one runs or while it drains) and SIGTERM/SIGINT a
// drain and Stop; signals during a drain do nothing but print a line.
//
// Where each part lives: the states and their transitions in
// upgrade_state.go; the events of the table (Upgrade, Ready, the watches of
// the other generation, Stop) and the settling of handshakes in flight in
// upgrade_handover.go; binding into the predecessor's reuseport
// group, adopting its sockets and steering in upgrade_bind.go; starting the
// successor and the hello in upgrade_unix.go; forwarding datagrams between
// the generations in forward.go.

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
	stats struct{ started, succeeded, failed atomic.Uint64 }

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
	predQUIC   map[Key]bool // ... and serves QUIC on
	// predMembers are the predecessor's sockets by their member index in
	// the reuseport group of each address (base key), as its hello says;
	// groups are this process's view of each group it steers (sockets.go).
	predMembers map[Key][]steer.Member
	groups      map[Key]*sockGroup
	inherited   map[Key]*os.File // the predecessor's sockets, not (yet) used
	// predDups hold the predecessor's sockets of the addresses this
	// process joined, so that they stay in the reuseport groups after the
	// predecessor closes them, until this process takes them out one by
	// one, each with the program for the order the kernel leaves
	// (closePredecessorSockets).
	predDups map[Key]*os.File
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

	// at is the state (see upgrade_state.go), changed by on only. The
	// peers are its data: pred in Joining and Sharing, starting in
	// Starting, succ in Settling and Handed (each until Stop forgets it).
	at       upgradeState
	pred     *peer
	starting *peer // a successor not yet ready
	succ     *peer
	// upgradeCall is held by the one Upgrade call that runs: it spans
	// states (an Upgrade waits in Joining or Sharing for the predecessor),
	// so it is a guard of calls, not a state.
	upgradeCall atomic.Bool

	hsMu       sync.Mutex
	handshakes map[*handshake]struct{}
	hsSettled  chan struct{} // closed when handshakes empties

	predGone chan struct{}   // closed once no predecessor is left
	exit     chan struct{}   // closed at Settling→Handed
	resumed  chan struct{}   // closed at Handed→Alone: the successor died
	taken    map[string]bool // the sockets that successor took over, by Key.String()
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
		predMembers:  make(map[Key][]steer.Member),
		groups:       make(map[Key]*sockGroup),
		joined:       make(map[Key]bool),
		shared:       make(map[Key]bool),
		predKeys:     make(map[Key]bool),
		predInodes:   make(map[Key]uint64),
		inherited:    make(map[Key]*os.File),
		predDups:     make(map[Key]*os.File),
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
		u.at = stateFresh
		u.log = u.opts.log.With(slog.Int("pid", os.Getpid()), processGenAttr(u.gen))
		close(u.predGone)
		u.publish()
		return u, nil
	}
	u.log = u.opts.log.With(slog.Int("pid", os.Getpid()))
	u.at = stateJoining
	if err := u.connectPredecessor(env); err != nil {
		return nil, fmt.Errorf("udppool: upgrade from predecessor: %w", err)
	}
	return u, nil
}

func processGenAttr(gen uint16) slog.Attr { return slog.Uint64("process_generation", uint64(gen)) }

func peerAttrs(s *peer) []any {
	return []any{slog.Int("peer_pid", s.pid), slog.Uint64("peer_generation", uint64(s.gen))}
}

// UpgradeStats counts the upgrades this process has made as the
// predecessor: Started is every Upgrade that began a successor (or tried
// to), Succeeded those that handed over (Exit closed), Failed the rest.
type UpgradeStats struct {
	Started, Succeeded, Failed uint64
}

// Stats returns this process's upgrade counts.
func (u *Upgrader) Stats() UpgradeStats {
	return UpgradeStats{
		Started:   u.stats.started.Load(),
		Succeeded: u.stats.succeeded.Load(),
		Failed:    u.stats.failed.Load(),
	}
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

// publish replaces the receive path's view with the state's: whether this
// process accepts, and the other generation (at most one runs beside it:
// Upgrade waits for the predecessor to go). u.mu must be held, or u not yet
// shared.
func (u *Upgrader) publish() {
	st := &routeState{self: u.gen, accepting: u.at.accepting(), peer: u.succ}
	if st.peer == nil {
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
