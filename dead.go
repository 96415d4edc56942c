package udppool

import (
	"errors"
	"fmt"
	"net"
	"syscall"
)

// ErrSocketDead reports an operation on a pooled socket that failed with an
// error that will not clear (its descriptor closed underneath the pool, or
// sends failing again and again with EINVAL, ENETDOWN or EADDRNOTAVAIL). The
// pool closes such a socket at once and the next acquire of its key binds a
// fresh one; holders of the dead socket get errors wrapping ErrSocketDead.
var ErrSocketDead = errors.New("socket is dead")

// deadAfter is how many consecutive failures with an error that may be
// transient (EINVAL for one bad destination, ENETDOWN while an interface
// flaps) mark a socket dead. Any success resets the count.
const deadAfter = 8

// WithDeadSocketHook calls fn when the pool finds a socket dead (see
// ErrSocketDead), with the socket's key and the error that killed it. fn
// runs on the goroutine whose operation found it and must not block.
func WithDeadSocketHook(fn func(k Key, cause error)) Option {
	return func(o *options) { o.onDead = fn }
}

// failed notes a failed operation on e's socket and marks the socket dead
// if err shows it cannot recover.
func (p *Pool) failed(e *entry, err error) {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return
	}
	switch errno {
	case syscall.EBADF, syscall.ENOTSOCK:
		// The descriptor was closed or replaced underneath the pool.
	case syscall.EINVAL, syscall.ENETDOWN, syscall.EADDRNOTAVAIL:
		if e.sock.failures.Add(1) < deadAfter {
			return
		}
	default:
		return
	}
	p.markDead(e, err)
}

// markDead closes a dead socket and takes its entry out of the pool, so that
// the next acquire of the key binds a fresh socket. The dead socket leaves
// its reuseport group at once instead of taking a share of the traffic.
func (p *Pool) markDead(e *entry, cause error) {
	if !e.sock.dead.CompareAndSwap(nil, &cause) {
		return
	}
	p.mu.Lock()
	if e.closing.Load() {
		p.mu.Unlock()
		return
	}
	e.closing.Store(true)
	p.remove(e)
	if e.refs.Load() > 0 {
		p.dead[e] = struct{}{}
	}
	st := e.qt
	p.mu.Unlock()
	e.sock.conn.Close()
	close(e.done)
	if st != nil {
		st.halt()
	}
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
