package udppool

import (
	"net"
	"net/netip"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/udppool/udppool/internal/systemd"
)

// Sockets passed by socket activation (systemd's LISTEN_FDS), read on the
// first bind of any pool and kept until a pool binds their key. A unit
// binds a privileged port for an unprivileged service this way.
var activation struct {
	once  sync.Once
	mu    sync.Mutex
	socks map[Key]activated
	// others are the activated descriptors that are not UDP sockets,
	// kept from the garbage collector's finalizer: they belong to other
	// code, which finds them by number.
	others []*os.File
}

type activated struct {
	conn *net.UDPConn
	name string // from LISTEN_FDNAMES
}

func loadActivation() {
	files, _ := systemd.ListenFiles() // a malformed LISTEN_FDS passes nothing
	activation.socks = make(map[Key]activated)
	all := true
	for _, f := range files {
		k, uc := activatedUDP(f)
		if uc == nil {
			all = false // another kind of socket, for other code to claim
			activation.others = append(activation.others, f)
			continue
		}
		f.Close() // uc holds its own descriptor
		if _, dup := activation.socks[k]; dup {
			uc.Close() // two sockets of one key would split its datagrams
			continue
		}
		activation.socks[k] = activated{conn: uc, name: f.Name()}
	}
	if all {
		systemd.UnsetListenEnv()
	}
}

// activatedUDP returns the key of the UDP socket f and the socket, or nil
// if f is not a bound UDP socket.
func activatedUDP(f *os.File) (Key, *net.UDPConn) {
	pc, err := net.FilePacketConn(f)
	if err != nil {
		return Key{}, nil
	}
	uc, ok := pc.(*net.UDPConn)
	var k Key
	if ok {
		k, ok = activatedKey(f, uc.LocalAddr().(*net.UDPAddr))
	}
	if !ok {
		pc.Close()
		return Key{}, nil
	}
	return k, uc
}

// activatedKey names the socket the way the pool's keys do, so that a
// request for the address finds it: "udp" for a dual-stack wildcard.
func activatedKey(f *os.File, la *net.UDPAddr) (Key, bool) {
	ap := la.AddrPort()
	if ap.Port() == 0 {
		return Key{}, false // not bound
	}
	ip := ap.Addr()
	if z := ip.Zone(); z != "" {
		if zi, err := kernelZone(ip); err == nil {
			ip = zi
		}
	}
	fd := int(f.Fd())
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return Key{}, false
	}
	if domain == unix.AF_INET {
		return Key{Network: "udp4", Addr: netip.AddrPortFrom(ip.Unmap(), ap.Port())}, true
	}
	v6only, err := unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
	if err == nil && v6only == 0 && ip.IsUnspecified() {
		return Key{Network: "udp", Addr: netip.AddrPortFrom(netip.IPv6Unspecified(), ap.Port())}, true
	}
	return Key{Network: "udp6", Addr: netip.AddrPortFrom(ip, ap.Port())}, true
}

// takeActivated returns the activated socket of k, which from then on
// belongs to the caller, or nil if there is none.
func takeActivated(k Key) (*socket, error) {
	activation.once.Do(loadActivation)
	activation.mu.Lock()
	a, ok := activation.socks[k]
	delete(activation.socks, k)
	activation.mu.Unlock()
	if !ok {
		return nil, nil
	}
	s, err := newSocket(a.conn)
	if err != nil {
		return nil, err
	}
	reuse, err := unix.GetsockoptInt(int(s.fd), unix.SOL_SOCKET, unix.SO_REUSEPORT)
	s.reuse = err == nil && reuse != 0
	s.activated = a.name
	return s, nil
}

// takeActivatedListener returns the activated TCP listening socket whose
// address is the one network and address name, or nil.
func takeActivatedListener(network, address string) *os.File {
	want, err := net.ResolveTCPAddr(network, address)
	if err != nil {
		return nil
	}
	activation.once.Do(loadActivation)
	activation.mu.Lock()
	defer activation.mu.Unlock()
	for i, f := range activation.others {
		if listens(f, want) {
			activation.others = append(activation.others[:i], activation.others[i+1:]...)
			return f
		}
	}
	return nil
}

// listens reports whether f is a listening TCP socket bound to want's
// address: the same port, and the same address or both wildcards.
func listens(f *os.File, want *net.TCPAddr) bool {
	rc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	var sa unix.Sockaddr
	var ok bool
	rc.Control(func(fd uintptr) {
		typ, err1 := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
		acc, err2 := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		var err3 error
		sa, err3 = unix.Getsockname(int(fd))
		ok = err1 == nil && err2 == nil && err3 == nil && typ == unix.SOCK_STREAM && acc == 1
	})
	if !ok {
		return false
	}
	var ip net.IP
	var port int
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		ip, port = sa.Addr[:], sa.Port
	case *unix.SockaddrInet6:
		ip, port = sa.Addr[:], sa.Port
	default:
		return false
	}
	if port != want.Port {
		return false
	}
	if want.IP == nil || want.IP.IsUnspecified() {
		return ip.IsUnspecified()
	}
	return ip.Equal(want.IP)
}
