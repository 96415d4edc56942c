//go:build linux

package udppool

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// socketInode returns the inode number of the socket behind raw, the number
// under which /proc/net/udp and /proc/net/udp6 list it.
func socketInode(raw syscall.RawConn) (uint64, error) {
	var st unix.Stat_t
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, os.NewSyscallError("fstat", serr)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return 0, fmt.Errorf("descriptor is not a socket (mode %#o)", st.Mode)
	}
	return uint64(st.Ino), nil
}

// foreignSockets lists the UDP sockets of the calling thread's network
// namespace that are bound to the port of k with addresses overlapping those
// of k, except the sockets whose inode is in ours and sockets with inode 0.
// Only sockets that receive some datagram that the socket of k would
// receive are listed: on the same port, a foreign socket either joins the
// reuseport group of k (same address) and takes a hashed share of its
// datagrams, or is more or less specific than k and takes, or leaves to k,
// every datagram of the addresses both cover.
//
// The kernel's tables have no IPV6_V6ONLY column, so an IPv6 socket bound to
// [::] counts as possibly dual-stack: it overlaps IPv4 keys too, which may
// report an IPv6-only socket that does not in fact take IPv4 datagrams. An
// IPv6 socket bound to an IPv4-mapped address (::ffff:a.b.c.d) receives the
// IPv4 datagrams of a.b.c.d and counts as that IPv4 address. The tables do
// not list the zone (interface) of a link-local address either, so a
// foreign fe80::1 on another interface is reported too.
//
// Connected sockets (non-zero remote address) are skipped: a connected UDP
// socket receives only datagrams from its one peer and the kernel prefers it
// only for that peer's datagrams, so it does not take the traffic that
// clients send to the listening socket (on current kernels: before a 2019
// fix, a connected member of a reuseport group could still be hashed other
// datagrams). Such sockets are typical of clients that bind a server's port
// to reach one peer, and reporting them would be noise.
func foreignSockets(k Key, ours map[uint64]bool) ([]ForeignSocket, error) {
	if !k.IsValid() {
		return nil, errors.New("foreign socket detection: invalid key")
	}
	if k.Addr.Port() == 0 {
		return nil, nil // only bound sockets are listed, and none has port 0
	}
	files, err := openProcUDP()
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, f := range files {
			if f.f != nil {
				f.f.Close()
			}
		}
	}()
	var found []ForeignSocket
	for _, f := range files {
		if f.f == nil {
			continue
		}
		entries, err := parseProcUDP(f.f, f.v6, binary.NativeEndian)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.f.Name(), err)
		}
		found = append(found, filterForeign(k, ours, f.v6, entries)...)
	}
	return found, nil
}

// filterForeign returns the entries of one socket table (IPv6 if v6) that
// foreignSockets reports for k, in table order.
func filterForeign(k Key, ours map[uint64]bool, v6 bool, entries []procEntry) []ForeignSocket {
	var found []ForeignSocket
	for _, e := range entries {
		if e.inode == 0 || ours[e.inode] || e.local.Port() != k.Addr.Port() || e.connected() {
			continue
		}
		if !collides(k, e.key()) {
			continue
		}
		network := "udp4"
		if v6 {
			network = "udp6"
		}
		found = append(found, ForeignSocket{Network: network, Local: e.local, Inode: e.inode, UID: e.uid})
	}
	return found
}

// procFile is one opened socket table; f is nil for a missing udp6 table
// (IPv6 disabled in the kernel).
type procFile struct {
	f  *os.File
	v6 bool
}

// openProcUDP opens the IPv4 and IPv6 UDP socket tables of the calling
// thread's network namespace. /proc/self/net (and /proc/net, a link to it)
// follows the namespace of the process's main thread, which differs from
// the caller's when a locked thread has entered another namespace, so the
// tables are opened under /proc/thread-self (Linux 3.17 and later), falling
// back to /proc/net. A table is bound to its namespace when it is opened, so
// the thread is locked only while both are opened.
func openProcUDP() (files []procFile, err error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	dir := "/proc/thread-self/net"
	if _, err := os.Stat(dir); err != nil {
		dir = "/proc/net"
	}
	v4, err := os.Open(dir + "/udp")
	if err != nil {
		return nil, fmt.Errorf("foreign socket detection: %w", err)
	}
	v6, err := os.Open(dir + "/udp6")
	if errors.Is(err, fs.ErrNotExist) {
		v6, err = nil, nil // no IPv6 in this kernel: no IPv6 sockets
	}
	if err != nil {
		v4.Close()
		return nil, fmt.Errorf("foreign socket detection: %w", err)
	}
	return []procFile{{f: v4}, {f: v6, v6: true}}, nil
}

// procEntry is one socket of /proc/net/udp or /proc/net/udp6.
type procEntry struct {
	local, remote netip.AddrPort
	uid           uint32
	inode         uint64
}

// connected reports whether the socket is connected to a peer.
func (e procEntry) connected() bool {
	return e.remote.Port() != 0 || !e.remote.Addr().IsUnspecified()
}

// key returns the key that describes the addresses the socket receives:
// an IPv6 wildcard counts as dual-stack (the tables do not tell) and an
// IPv4-mapped IPv6 address as its IPv4 address.
func (e procEntry) key() Key {
	ip, port := e.local.Addr(), e.local.Port()
	switch {
	case ip.Is4():
		return Key{Network: "udp4", Addr: e.local}
	case ip.Is4In6():
		return Key{Network: "udp4", Addr: netip.AddrPortFrom(ip.Unmap(), port)}
	case ip.IsUnspecified():
		return Key{Network: "udp", Addr: e.local}
	default:
		return Key{Network: "udp6", Addr: e.local}
	}
}

// collides reports whether the socket of f receives some datagram that the
// socket of k receives on k's port: the same key (a reuseport peer) or an
// overlapping one. The kernel lists no zones, so k's zone is ignored.
func collides(k, f Key) bool {
	k.Addr = netip.AddrPortFrom(k.Addr.Addr().WithZone(""), k.Addr.Port())
	return k == f || k.overlaps(f)
}

// parseProcUDP parses a socket table in the format of /proc/net/udp (v6
// false) or /proc/net/udp6 (v6 true). The kernel prints each 32-bit word of
// an address as a hexadecimal number in the host's byte order (order),
// and the port as a hexadecimal number. Header lines and blank lines are
// skipped; any other line that does not parse is an error, so that a
// changed format fails loudly rather than hiding sockets.
//
//	sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
//	 1: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 17520 2 0000000000000000 0
func parseProcUDP(r io.Reader, v6 bool, order binary.ByteOrder) ([]procEntry, error) {
	var entries []procEntry
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || fields[0] == "sl" {
			continue
		}
		e, err := parseProcLine(fields, v6, order)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		entries = append(entries, e)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return entries, nil
}

// Columns of the socket tables that parseProcLine reads.
const (
	colSlot   = 0
	colLocal  = 1
	colRemote = 2
	colUID    = 7
	colInode  = 9
)

func parseProcLine(fields []string, v6 bool, order binary.ByteOrder) (procEntry, error) {
	var e procEntry
	if len(fields) <= colInode {
		return e, fmt.Errorf("%d columns, want at least %d", len(fields), colInode+1)
	}
	if !strings.HasSuffix(fields[colSlot], ":") {
		return e, fmt.Errorf("slot %q does not end with a colon", fields[colSlot])
	}
	var err error
	if e.local, err = parseProcAddr(fields[colLocal], v6, order); err != nil {
		return e, fmt.Errorf("local address: %w", err)
	}
	if e.remote, err = parseProcAddr(fields[colRemote], v6, order); err != nil {
		return e, fmt.Errorf("remote address: %w", err)
	}
	uid, err := strconv.ParseUint(fields[colUID], 10, 32)
	if err != nil {
		return e, fmt.Errorf("uid: %w", err)
	}
	e.uid = uint32(uid)
	if e.inode, err = strconv.ParseUint(fields[colInode], 10, 64); err != nil {
		return e, fmt.Errorf("inode: %w", err)
	}
	return e, nil
}

// parseProcAddr parses "ADDR:PORT" with ADDR 8 (IPv4) or 32 (IPv6)
// hexadecimal digits, each group of 8 one 32-bit word in byte order order,
// and PORT a hexadecimal number.
func parseProcAddr(s string, v6 bool, order binary.ByteOrder) (netip.AddrPort, error) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("%q has no port", s)
	}
	if len(p) == 0 || len(p) > 4 {
		return netip.AddrPort{}, fmt.Errorf("port %q is not 1 to 4 hexadecimal digits", p)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port %q: %w", p, err)
	}
	words := 1
	if v6 {
		words = 4
	}
	if len(h) != 8*words {
		return netip.AddrPort{}, fmt.Errorf("address %q is not %d hexadecimal digits", h, 8*words)
	}
	var b [16]byte
	for i := range words {
		w, err := strconv.ParseUint(h[8*i:8*i+8], 16, 32)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("address %q: %w", h, err)
		}
		order.PutUint32(b[4*i:], uint32(w))
	}
	var ip netip.Addr
	if v6 {
		ip = netip.AddrFrom16(b)
	} else {
		ip = netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrPortFrom(ip, uint16(port)), nil
}
