// Package udppool shares UDP sockets, and the QUIC transports on them,
// among the parts of one process. Every part that asks for an address (the
// old and the new configuration during a reload, a QUIC server and the
// connections it dials out from its port) gets a reference to the one
// socket for it, and the socket stays open until the last reference is
// closed.
//
// It exists because UDP sockets fail quietly. A dual-stack wildcard socket,
// handed to quic-go through a thin wrapper, answered IPv6 clients while
// every IPv4 handshake timed out; a stale socket left in a SO_REUSEPORT
// group took every IPv4 datagram of its port; and quic-go allows one
// transport per socket and one listener per transport, so a reload that
// replaces either refuses handshakes or drops connections. udppool binds
// each local socket once, refuses binds that would overlap one it holds,
// keeps quic-go's fast path (batched reads, GSO, ECN, packet info), and
// hands QUIC listeners over without closing the port.
//
// # Three ways to use it
//
// Shared sockets. [Pool.ListenPacket] returns a [*Conn], a handle to the
// socket for a network ("udp", "udp4" or "udp6") and an address, binding
// it on first use. A Conn is a [net.PacketConn] and a drop-in for
// [*net.UDPConn]; its deadlines and Close are its own, so closing one
// handle never disturbs another. Each datagram goes to one reader: sharing
// hands a socket from one owner to the next, it does not fan datagrams
// out.
//
// Shared QUIC transports. [Pool.Transport] returns a [*Transport], a
// reference to the one [quic.Transport] on the socket (quic-go allows one
// per socket, and closing it closes every connection on it).
// [Transport.Listen] and [Transport.ListenEarly] open logical listeners
// ([*Listener]): several may be open at once, each handshake goes to the
// newest one serving the ALPN protocol the client asked for, and closing
// a Listener closes none of the connections it accepted. A Listener
// satisfies http3.QUICListener, so (*http3.Server).ServeListener serves
// HTTP/3 on it. [Pool.Dial] dials from a pooled transport, or from one the
// pool binds for the dial and closes after it.
//
// Test helpers. Package [github.com/udppool/udppool/udppooltest] gives
// tests loopback sockets, a certificate authority, connected QUIC pairs,
// simulated IPv4-only, IPv6-only and dual-stack hosts in network
// namespaces, and a check that nothing leaked.
//
// # Rules
//
// One key, one socket. Requests are normalized to a [Key], the socket Go
// would really bind: "udp" ":443", "udp" "0.0.0.0:443" and "udp"
// "[::]:443" are all the dual-stack socket on [::]:443, and share it. Port
// 0 always binds a new socket, known afterwards by the port it got. A
// "udp" wildcard serves both families where the host has both, from one
// dual-stack socket or, where dual-stack and quic-go do not mix (the BSDs)
// or with [WithSplitStack], from an IPv4 and an IPv6-only socket behind
// the same Transport.
//
// Plain or QUIC. Each datagram goes to one reader, and quic-go must see
// every datagram of its socket, so a socket is served either by
// ListenPacket handles or by one QUIC transport ([ErrHasConns],
// [ErrOwnedByTransport]); other UDP traffic on a QUIC port goes through
// [Transport.ReadNonQUICPacket] and [Transport.WriteTo].
//
// No overlapping sockets. A request whose addresses overlap a socket the
// pool holds on the same port, such as "udp4" "0.0.0.0:443" beside the
// dual-stack "udp" ":443", fails with [ErrOverlap]: the kernel would give
// the more specific socket every datagram of its family.
//
// Reloads open first and close second. To change a QUIC server's
// configuration, open a Listener with the new configuration on the same
// Transport, then Close the old one, or better [Listener.Drain] it: its
// connections are asked to go and closed when a grace period ends, so no
// connection made with the old configuration outlives it. The port never
// closes, no handshake is refused, and [Pool.Stats] shows each listener
// epoch draining. Package h3 does all of this for HTTP/3.
//
// Across processes, a new binary takes over with an [Upgrader]
// ([NewUpgrader], [WithUpgrader]): the running process starts its
// successor, which binds into the port's SO_REUSEPORT group or inherits the
// sockets, says it is [Upgrader.Ready], and from then on takes every new
// handshake, while the old process stops accepting, drains and exits. QUIC
// connection IDs carry the process generation, so the old process keeps
// every datagram of its connections: on Linux a classic BPF program on the
// reuseport group steers them (no privilege needed), elsewhere they are
// forwarded between the processes. Without an Upgrader the pool only sets
// SO_REUSEPORT on Linux, the BSDs and macOS (unless [WithReusePort] turns it
// off), so that a new process can bind while the old one serves, and the
// kernel then splits datagrams by hash between them, so some datagrams of
// the old process's connections reach the new one; on Windows it binds
// exclusively. [Pool.Check] finds sockets outside the pool on a pooled port
// (Linux only).
//
// # Watching it
//
// [Pool.Stats] lists sockets, references, send errors by kind and listener
// epochs with the connections they accepted. [WithLogger] logs, with
// log/slog, sockets bound and closed, listener epochs opened, retired and
// drained, and everything that went wrong; the pool is silent without it.
// [Pool.Check] and [WithRefuseForeign] look for foreign sockets,
// [WithDeadSocketHook] reports sockets the pool had to replace, and
// [WithLeakReport] reports handles garbage-collected without Close.
//
// # Errors
//
// Errors of ListenPacket and Transport are [*Error] values that name the
// request and wrap a sentinel such as [ErrOverlap] or [ErrPortRange], or
// the system's error: errors.Is(err, syscall.EADDRINUSE) works. Operations
// on handles and connections return [*net.OpError] values as the net
// package does.
package udppool
