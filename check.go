package udppool

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
)

// ErrForeignSocket reports a socket that this pool does not own bound to
// the port of a pooled socket with overlapping addresses (see
// ForeignSocket). Such a socket silently takes a share, or all of one
// family, of the pooled socket's datagrams: the "IPv4 broken, IPv6 fine"
// symptom of a stale member of a reuseport group.
var ErrForeignSocket = errors.New("foreign socket shares the port")

// A ForeignError lists the foreign sockets found beside one pooled socket.
// It wraps ErrForeignSocket.
type ForeignError struct {
	Key   Key // the pooled socket
	Found []ForeignSocket
}

func (e *ForeignError) Error() string {
	found := make([]string, len(e.Found))
	for i, f := range e.Found {
		found[i] = f.String()
	}
	return fmt.Sprintf("%s%v of %v: %s", prefix, ErrForeignSocket, e.Key, strings.Join(found, ", "))
}

// Unwrap returns ErrForeignSocket.
func (e *ForeignError) Unwrap() error { return ErrForeignSocket }

// WithRefuseForeign makes ListenPacket and Transport refuse to bind a socket
// whose port already has foreign sockets with overlapping addresses (see
// Check): the new socket is closed and the call fails with an error
// wrapping ErrForeignSocket. Detection needs Linux; elsewhere such calls
// fail with an error wrapping errors.ErrUnsupported, since the guarantee
// cannot be given.
//
// During a process upgrade (see Upgrader), the predecessor's socket that a
// successor binds beside is not foreign to it.
func WithRefuseForeign(on bool) Option {
	return func(o *options) { o.refuseForeign = on }
}

// Check looks for sockets that this pool does not own (of another process,
// or of this process outside the pool) bound to the port of a pooled socket
// with overlapping addresses. It returns nil if there are none, or an error
// joining one *ForeignError per affected pooled socket, each wrapping
// ErrForeignSocket. It asks the kernel about the sockets of the calling
// thread's network namespace (see ForeignSocket). On platforms other than Linux it returns an error
// wrapping errors.ErrUnsupported.
func (p *Pool) Check() error {
	p.mu.Lock()
	var keys []Key
	for _, e := range p.entries {
		if e.sock != nil && !e.closing.Load() {
			keys = append(keys, e.key)
		}
	}
	ours := p.inodes()
	p.mu.Unlock()
	var errs []error
	for _, k := range keys {
		if err := foreignError(k, ours); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// inodes returns the inodes of the pool's sockets. p.mu must be held.
func (p *Pool) inodes() map[uint64]bool {
	ours := make(map[uint64]bool, len(p.entries)+1)
	for _, e := range p.entries {
		if e.sock != nil {
			ours[e.sock.inode] = true
		}
	}
	return ours
}

// refuseForeign checks a socket the pool just bound for k, before anyone
// uses it, if the pool was asked to.
func (p *Pool) refuseForeign(k Key, s *socket) error {
	if !p.opts.refuseForeign {
		return nil
	}
	p.mu.Lock()
	ours := p.inodes()
	p.mu.Unlock()
	ours[s.inode] = true
	if u := p.opts.upgrader; u != nil {
		// An upgrading successor binds beside its predecessor's socket,
		// which it knows: the predecessor handed it over.
		for _, ino := range u.predecessorInodes(k) {
			ours[ino] = true
		}
	}
	err := foreignError(k, ours)
	if err != nil {
		p.opts.log.Warn("udppool: bind refused", keyAttr(k), slog.Any("error", err))
	}
	return err
}

func foreignError(k Key, ours map[uint64]bool) error {
	found, err := foreignSockets(k, ours)
	if err != nil {
		return err
	}
	if len(found) > 0 {
		return &ForeignError{Key: k, Found: found}
	}
	return nil
}
