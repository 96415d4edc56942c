package udppool

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Sentinel errors. Every error returned by a Pool is an *Error that wraps one
// of these (or an error from the operating system, the resolver or the
// context), so callers test them with errors.Is.
var (
	// ErrUnknownNetwork reports a network other than "udp", "udp4" or "udp6".
	ErrUnknownNetwork = errors.New("unknown network")
	// ErrInvalidAddress reports an address that is not host:port, a host that
	// does not resolve, or a host of the wrong family for the network.
	ErrInvalidAddress = errors.New("invalid address")
	// ErrPortRange reports a port outside 0-65535.
	ErrPortRange = errors.New("port out of range")
	// ErrPoolClosed reports use of a Pool after Close.
	ErrPoolClosed = errors.New("pool closed")
	// ErrOverlap reports a request for a socket whose addresses overlap a
	// socket the pool already holds on the same port, for example "udp4
	// 0.0.0.0:443" while dual-stack "udp [::]:443" is held. With SO_REUSEPORT
	// both binds would succeed and the more specific socket would silently
	// receive every datagram of its family, so the pool refuses instead.
	ErrOverlap = errors.New("overlaps a pooled socket")
	// ErrOwnedByTransport reports a ListenPacket for a socket that a QUIC
	// Transport serves: a plain reader would take datagrams from quic-go.
	// Other traffic on a QUIC port goes through the Transport's
	// ReadNonQUICPacket and WriteTo.
	ErrOwnedByTransport = errors.New("socket is served by a QUIC transport (use Transport.ReadNonQUICPacket and WriteTo)")
	// ErrHasConns reports a Transport request for a socket that plain
	// handles from ListenPacket hold: their reads would take datagrams from
	// quic-go. Close them first.
	ErrHasConns = errors.New("socket is held by plain handles, which would take datagrams from quic-go")
	// ErrNoNextProtos reports a Listen or ListenEarly whose tls.Config has
	// no NextProtos and no GetConfigForClient that could supply them. QUIC
	// requires an ALPN protocol, so such a listener could never complete a
	// handshake; it is refused instead of accepting nothing forever.
	ErrNoNextProtos = errors.New("tls.Config.NextProtos is empty: QUIC needs an ALPN protocol, so no handshake could complete")
)

// errPortTaken reports that the port chosen for the IPv6 half of a
// split-stack port 0 Transport is held in the pool already.
var errPortTaken = fmt.Errorf("port taken by a pooled socket: %w", errAddrInUse)

// Sentinel errors of sending and dialling, wrapped in the *net.OpError that
// Dial, DialEarly and WriteTo return, so that a bad destination fails at
// once with a clear cause instead of reaching quic-go, which a nil address
// crashes, or the kernel, whose EINVAL does not say what was wrong.
var (
	// ErrMissingAddr reports a destination that is nil (a nil net.Addr or
	// a nil *net.UDPAddr) or, for Dial and Transport.WriteTo, has no valid
	// IP address or port 0.
	ErrMissingAddr = errors.New("missing destination address")
	// ErrNotUDPAddr reports a destination that is not a *net.UDPAddr, such
	// as a *net.TCPAddr.
	ErrNotUDPAddr = errors.New("destination is not a *net.UDPAddr")
	// ErrNoTransport reports a Dial from a local port (WithLocalPort) on
	// which the pool runs no QUIC transport that can send to the
	// destination (none at all, or only sockets bound to loopback for a
	// destination elsewhere).
	ErrNoTransport = errors.New("no pooled QUIC transport on the local port")
)

// prefix starts the text of the errors of this package that stand alone.
const prefix = "udppool: "

// Error describes a failed pool operation. It names the operation and the
// network and address exactly as the caller gave them, plus the normalized
// key where one was computed.
type Error struct {
	Op   string // operation, such as "listen"
	Net  string // network as given by the caller
	Addr string // address as given by the caller
	Key  Key    // normalized key; zero if the input did not parse
	Err  error  // underlying cause
}

func (e *Error) Error() string {
	s := prefix + e.Op
	if e.Net != "" || e.Addr != "" {
		s += " " + e.Net + " " + strconv.Quote(e.Addr)
	}
	if e.Key.IsValid() {
		s += " (socket " + e.Key.String() + ")"
	}
	// A cause from this package (a *ForeignError, say) names the package
	// too; once is enough.
	return s + ": " + strings.TrimPrefix(e.Err.Error(), prefix)
}

// Unwrap returns the underlying cause, so errors.Is(err, syscall.EADDRINUSE)
// and errors.Is(err, ErrOverlap) see through an *Error.
func (e *Error) Unwrap() error { return e.Err }

func opError(op, network, address string, k Key, err error) error {
	return &Error{Op: op, Net: network, Addr: address, Key: k, Err: err}
}

func overlapError(held Key) error {
	return fmt.Errorf("%w %v", ErrOverlap, held)
}
