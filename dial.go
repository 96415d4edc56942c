package udppool

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"

	"github.com/quic-go/quic-go"
)

// Dial dials addr from the QUIC transport that the pool already runs on
// local port port (any port if port is 0) and whose socket serves addr's
// address family, so that the connection leaves from, and replies come back
// to, the expected address: what NAT hole punching and peers that check the
// source port need. Among several candidates it prefers a socket of addr's
// own family to a dual-stack one, and a socket with an open listener to one
// without.
//
// The connection lives on that transport: it closes when the last Transport
// and Listener of the socket are closed. When no pooled transport can reach
// addr (for example an IPv4 address while only an IPv6-only socket is on the
// port), Dial fails at once with an error wrapping ErrFamily rather than
// timing out.
func (p *Pool) Dial(ctx context.Context, port uint16, addr net.Addr, tlsConf *tls.Config, conf *quic.Config) (*quic.Conn, error) {
	ip, err := destination("dial", addr)
	if err != nil {
		return nil, err
	}
	st := p.pickTransport(port, ip)
	if st == nil {
		where := "any port"
		if port != 0 {
			where = fmt.Sprintf("port %d", port)
		}
		return nil, &net.OpError{Op: "dial", Net: "udp", Addr: addr,
			Err: fmt.Errorf("%w: no pooled QUIC transport on %s can send to %v", ErrFamily, where, ip)}
	}
	defer st.release()
	return st.qt.Dial(ctx, addr, tlsConf, conf)
}

// pickTransport returns, with a reference, the best pooled transport on port
// for a destination ip, or nil.
func (p *Pool) pickTransport(port uint16, ip netip.Addr) *sharedTransport {
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
	var best *sharedTransport
	bestScore := 0
	for k, e := range p.entries {
		st := e.qt
		if st == nil || st.closing || e.closing.Load() || (port != 0 && k.Addr.Port() != port) {
			continue
		}
		if !k.reachesFamily(ip.Is4()) {
			continue
		}
		if s := score(st); s > bestScore {
			best, bestScore = st, s
		}
	}
	if best != nil {
		best.refs++
	}
	return best
}
