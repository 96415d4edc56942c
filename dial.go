package udppool

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"

	"github.com/quic-go/quic-go"
)

// A DialOption configures (*Pool).Dial.
type DialOption func(*dialOptions)

type dialOptions struct {
	port uint16 // 0: any pooled transport, or a temporary one
}

// WithLocalPort makes Dial leave from the QUIC transport that the pool
// already runs on local port port, so that replies come back to, and NAT
// mappings are made for, that port: what hole punching and peers that
// check the source port need. Dial then never creates a transport: with
// none on the port that can send to the destination it fails with
// ErrNoTransport, or with ErrFamily if those on the port serve only the
// other address family.
func WithLocalPort(port uint16) DialOption {
	return func(o *dialOptions) { o.port = port }
}

// Dial dials addr over QUIC from a pooled socket. It uses the pooled
// transport, on any port, whose socket serves addr's address family,
// preferring a socket of that family to a dual-stack one and a socket with
// an open listener to one without (WithLocalPort restricts the choice to
// one port). If the pool runs no transport that can send to addr, Dial
// binds one for addr's family on an ephemeral port ("udp4" "0.0.0.0:0" or
// "udp6" "[::]:0"), which later Dials share.
//
// The connection keeps its transport, and so its socket, open until the
// connection closes, even if every Transport and Listener of the socket
// is closed meanwhile; a transport that Dial created closes with the last
// connection dialled on it. Closing the Pool closes every connection.
//
// Errors are *net.OpError values. A destination that is nil, not a
// *net.UDPAddr, or without an IP address or port fails at once with an
// error wrapping ErrMissingAddr or ErrNotUDPAddr; errors of quic-go's
// handshake are returned as they are.
func (p *Pool) Dial(ctx context.Context, addr net.Addr, tlsConf *tls.Config, conf *quic.Config, opts ...DialOption) (*quic.Conn, error) {
	var o dialOptions
	for _, opt := range opts {
		opt(&o)
	}
	ip, err := destination("dial", addr)
	if err != nil {
		return nil, err
	}
	st, err := p.dialTransport(ctx, o.port, ip)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "udp", Addr: addr, Err: err}
	}
	conn, err := st.qt.Dial(ctx, addr, tlsConf, conf)
	if err != nil {
		st.noticeClosed(err)
		st.release()
		return nil, err
	}
	context.AfterFunc(conn.Context(), st.release)
	return conn, nil
}

// dialTransport returns, with a reference, the pooled transport to dial ip
// from: on port, or, with port 0, the best one on any port or a new one.
func (p *Pool) dialTransport(ctx context.Context, port uint16, ip netip.Addr) (*sharedTransport, error) {
	if p.closed.Load() {
		return nil, ErrPoolClosed
	}
	if port != 0 {
		st, found := p.pickTransport(port, ip)
		switch {
		case st != nil:
			return st, nil
		case found == foundNone:
			return nil, fmt.Errorf("%w %d", ErrNoTransport, port)
		case found == foundOtherFamily:
			return nil, fmt.Errorf("%w: no pooled QUIC transport on port %d can send to %v", ErrFamily, port, ip)
		}
		return nil, fmt.Errorf("%w %d that can send to %v: those on it are bound to loopback", ErrNoTransport, port, ip)
	}
	// One transport per family for all dials: concurrent first dials must
	// not bind one socket each.
	p.dialMu.Lock()
	defer p.dialMu.Unlock()
	if st, _ := p.pickTransport(0, ip); st != nil {
		return st, nil
	}
	network, address := "udp6", "[::]:0"
	if ip.Is4() {
		network, address = "udp4", "0.0.0.0:0"
	}
	k, _, err := p.parse(ctx, network, address)
	if err != nil {
		return nil, err
	}
	return p.acquireTransport(ctx, k, nil, false, 0)
}

// What pickTransport found on a port when no transport there fits.
const (
	foundNone        = iota // no transport at all
	foundOtherFamily        // only transports of the other address family
	foundLoopback           // only transports bound to loopback, for another destination
)

// pickTransport returns, with a reference, the best pooled transport on port
// (any port if port is 0) for a destination ip, or nil and what it found
// instead.
func (p *Pool) pickTransport(port uint16, ip netip.Addr) (best *sharedTransport, found int) {
	score := func(st *sharedTransport) int {
		s := 1
		if !st.entry.key.dualStack() {
			s += 2 // the destination's own family: no mapped addresses
		}
		st.mu.Lock()
		if len(st.listeners) > 0 {
			s++ // the listening socket: replies come from the known port
		}
		st.mu.Unlock()
		return s
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	bestScore := 0
	for k, e := range p.entries {
		st := e.qt
		if st == nil || st.closing || e.closing.Load() || (port != 0 && k.Addr.Port() != port) {
			continue
		}
		if !k.reachesFamily(ip.Is4()) {
			found = max(found, foundOtherFamily)
			continue
		}
		// A socket bound to a loopback address cannot send anywhere else.
		if k.Addr.Addr().Unmap().IsLoopback() && !ip.IsLoopback() {
			found = foundLoopback
			continue
		}
		if s := score(st); s > bestScore {
			best, bestScore = st, s
		}
	}
	if best != nil {
		best.refs++
	}
	return best, found
}
