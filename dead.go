package udppool

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"sync"
)

// ErrSocketDead reports an operation on a pooled socket whose descriptor is
// gone: closed or replaced underneath the pool (through SyscallConn, for
// example), so that the socket can never work again. The pool closes such a
// socket at once and the next acquire of its key binds a fresh one; holders
// of the dead socket get errors wrapping ErrSocketDead.
//
// Errors that depend on a peer, a destination, the arguments of a call or
// an address that may come back (EINVAL for a destination with port 0 or
// for a source address that was removed, ENETDOWN, EADDRNOTAVAIL,
// EHOSTUNREACH) never kill a socket: anyone on the network can provoke them,
// for example by spoofing a source port of 0, and they say nothing about the
// socket. They fail the one operation and are counted in
// SocketStats.SendErrors.
var ErrSocketDead = errors.New("socket is dead")

// WithDeadSocketHook calls fn when the pool finds a socket dead (see
// ErrSocketDead), with the socket's key and the error that showed it. fn
// runs on the goroutine whose operation found it and must not block.
func WithDeadSocketHook(fn func(k Key, cause error)) Option {
	return func(o *options) { o.onDead = fn }
}

// failed looks at a failed operation in direction dir on e's socket. The
// operation's own error decides nothing: the descriptor is asked directly
// (one getsockopt, on the error path only), so that no errno list has to
// be kept per platform and no outsider-made error can pass for death.
func (p *Pool) failed(e *entry, dir int, err error) {
	if errors.Is(err, net.ErrClosed) {
		return // closed by the pool: every holder sees net.ErrClosed
	}
	if cerr := e.sock.check(); cerr != nil {
		p.markDead(e, cerr) // no-op if the pool closed it meanwhile
		return
	}
	if dir == dirWrite && e.sock.sendErrors.add(err) {
		p.opts.log.Warn("udppool: send failed; the socket stays, and further errors of this kind are only counted in Stats",
			keyAttr(e.key), slog.Any("error", err))
	}
}

// markDead closes a dead socket and takes its entry out of the pool, so that
// the next acquire of the key binds a fresh socket. The dead socket leaves
// its reuseport group at once instead of taking a share of the traffic.
func (p *Pool) markDead(e *entry, cause error) {
	p.mu.Lock()
	if e.closing.Load() {
		// Closed already, by Pool.Close or an earlier finding.
		p.mu.Unlock()
		return
	}
	e.sock.dead.Store(&cause)
	e.closing.Store(true)
	p.remove(e)
	if e.refs.Load() > 0 {
		p.dead[e] = struct{}{}
	}
	st := e.qt
	p.mu.Unlock()
	if st != nil {
		st.halt(fmt.Errorf("socket %v is dead: %w", e.key, cause))
	}
	socketLeft(e.sock)
	e.sock.conn.Close()
	close(e.done)
	p.opts.log.Error("udppool: socket dead; the next acquire binds a new one", keyAttr(e.key), slog.Any("cause", cause))
	if p.opts.onDead != nil {
		p.opts.onDead(e.key, cause)
	}
}

// deadError is the error of an operation on a socket known dead.
func (c *Conn) deadError(op string, addr net.Addr) error {
	cause := c.entry.sock.dead.Load()
	if cause == nil {
		return nil
	}
	return &net.OpError{Op: op, Net: c.entry.sock.laddr.Network(), Source: c.entry.sock.laddr, Addr: addr,
		Err: fmt.Errorf("%w: %w", ErrSocketDead, *cause)}
}

// errorCounts counts failed operations of a socket by the kind of their
// innermost error ("invalid argument", "network is unreachable", ...). It
// is touched on the error path only.
type errorCounts struct {
	mu sync.Mutex
	m  map[string]uint64
}

// add counts err and reports whether it is the first of its kind.
func (ec *errorCounts) add(err error) (first bool) {
	for {
		inner := errors.Unwrap(err)
		if inner == nil {
			break
		}
		err = inner
	}
	kind := err.Error()
	ec.mu.Lock()
	if ec.m == nil {
		ec.m = make(map[string]uint64)
	}
	if _, ok := ec.m[kind]; !ok && len(ec.m) >= maxErrorKinds {
		kind = "other"
	}
	ec.m[kind]++
	first = ec.m[kind] == 1
	ec.mu.Unlock()
	return first
}

// snapshot returns a copy of the counts, nil if there are none.
func (ec *errorCounts) snapshot() map[string]uint64 {
	ec.mu.Lock()
	defer ec.mu.Unlock()
	return maps.Clone(ec.m)
}

// maxErrorKinds bounds the kinds counted per socket, in case some error
// text carries a varying detail.
const maxErrorKinds = 32
