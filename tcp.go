package udppool

import (
	"context"
	"fmt"
	"net"
	"os"
)

// TCP listeners take part in upgrades without steering: both generations
// hold the one listening socket, the successor accepts on it from its
// Ready on, and the old process stops accepting when it shuts its servers
// down at Exit (http.Server.Shutdown closes the listener), finishing the
// connections it has. Every HTTP/3 server also serves HTTPS over TCP, which
// is how browsers learn of HTTP/3, so one upgrade must carry both: two
// upgraders would start two successors.

// Listen returns a TCP listener on network ("tcp", "tcp4" or "tcp6") and
// address that takes part in u's upgrades: in a successor it is the
// predecessor's listening socket for the same network and address, exactly
// as spelled, so the port never closes; otherwise a socket passed by
// systemd socket activation for that address, or a new one. A later
// Listen with the same spelling in this process (after Resumed, say)
// returns another listener on the same socket.
//
// Close the listener (http.Server.Shutdown does) once Exit's channel is
// closed: the successor accepts every new connection from then on. The
// Upgrader keeps its own copy of the socket, for successors, until Stop.
func (u *Upgrader) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, &net.OpError{Op: "listen", Net: network, Err: net.UnknownNetworkError(network)}
	}
	sp := spelling{network, address}
	u.mu.Lock()
	if u.at == stateStopped {
		u.mu.Unlock()
		return nil, ErrUpgraderStopped
	}
	f := u.tcp[sp]
	if f == nil {
		f = u.tcpInherited[sp]
		delete(u.tcpInherited, sp)
	}
	u.mu.Unlock()
	var err error
	if f == nil {
		if f, err = openTCP(ctx, network, address); err != nil {
			return nil, err
		}
	}
	ln, err := net.FileListener(f)
	if err != nil {
		f.Close()
		return nil, &net.OpError{Op: "listen", Net: network, Err: fmt.Errorf("%s: %w", address, err)}
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	switch {
	case u.at == stateStopped:
		ln.Close()
		f.Close()
		return nil, ErrUpgraderStopped
	case u.tcp[sp] == nil:
		u.tcp[sp] = f
	case u.tcp[sp] != f:
		f.Close() // a concurrent Listen of the same spelling kept its own
	}
	return ln, nil
}

// openTCP returns the listening socket of network and address as a file:
// the one socket activation passed for it, or a new one.
func openTCP(ctx context.Context, network, address string) (*os.File, error) {
	if f := takeActivatedListener(network, address); f != nil {
		return f, nil
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, network, address)
	if err != nil {
		return nil, err
	}
	defer l.Close() // the file holds a descriptor of its own
	f, err := listenerFile(l.(*net.TCPListener))
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Addr: l.Addr(), Err: err}
	}
	return f, nil
}

// closeTCP closes the Upgrader's copies of its TCP sockets, and those
// inherited that nobody listened on. u.mu must be held.
func (u *Upgrader) closeTCP(inheritedOnly bool) {
	for sp, f := range u.tcpInherited {
		f.Close()
		delete(u.tcpInherited, sp)
	}
	if inheritedOnly {
		return
	}
	for sp, f := range u.tcp {
		f.Close()
		delete(u.tcp, sp)
	}
}
