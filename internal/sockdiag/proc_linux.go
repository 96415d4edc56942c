package sockdiag

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
)

// procUDP lists the UDP sockets of the calling thread's network namespace
// from /proc/net/udp and /proc/net/udp6. It is the fallback where the
// kernel offers no sock_diag for UDP: gVisor, and kernels built without
// CONFIG_INET_UDP_DIAG, still have these tables. They lack an IPV6_V6ONLY
// column, so every IPv6 socket comes back with V6Only false.
func procUDP() ([]Socket, error) {
	files, err := openProcUDP()
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, f := range files {
			f.f.Close()
		}
	}()
	var all []Socket
	for _, f := range files {
		found, err := parseProcUDP(f.f, f.v6, binary.NativeEndian)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.f.Name(), err)
		}
		all = append(all, found...)
	}
	return all, nil
}

// procFile is one opened socket table.
type procFile struct {
	f  *os.File
	v6 bool
}

// openProcUDP opens the IPv4 and, if the kernel has IPv6, the IPv6 UDP
// socket tables of the calling thread's network namespace. /proc/self/net
// (and /proc/net, a link to it) follows the namespace of the process's main
// thread, which differs from the caller's when a locked thread has entered
// another namespace, so the tables are opened under /proc/thread-self
// (Linux 3.17 and later), falling back to /proc/net. A table is bound to
// its namespace when it is opened, so the thread is locked only while both
// are opened.
func openProcUDP() ([]procFile, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	dir := "/proc/thread-self/net"
	if _, err := os.Stat(dir); err != nil {
		dir = "/proc/net"
	}
	v4, err := os.Open(dir + "/udp")
	if err != nil {
		return nil, err
	}
	v6, err := os.Open(dir + "/udp6")
	if errors.Is(err, fs.ErrNotExist) {
		return []procFile{{f: v4}}, nil // no IPv6 in this kernel: no IPv6 sockets
	}
	if err != nil {
		v4.Close()
		return nil, err
	}
	return []procFile{{f: v4}, {f: v6, v6: true}}, nil
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
func parseProcUDP(r io.Reader, v6 bool, order binary.ByteOrder) ([]Socket, error) {
	var entries []Socket
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

// parseProcLine parses the fields of one entry of a socket table.
func parseProcLine(fields []string, v6 bool, order binary.ByteOrder) (Socket, error) {
	var e Socket
	if len(fields) <= colInode {
		return e, fmt.Errorf("%d columns, want at least %d", len(fields), colInode+1)
	}
	if !strings.HasSuffix(fields[colSlot], ":") {
		return e, fmt.Errorf("slot %q does not end with a colon", fields[colSlot])
	}
	var err error
	if e.Local, err = parseProcAddr(fields[colLocal], v6, order); err != nil {
		return e, fmt.Errorf("local address: %w", err)
	}
	if e.Remote, err = parseProcAddr(fields[colRemote], v6, order); err != nil {
		return e, fmt.Errorf("remote address: %w", err)
	}
	uid, err := strconv.ParseUint(fields[colUID], 10, 32)
	if err != nil {
		return e, fmt.Errorf("uid: %w", err)
	}
	e.UID = uint32(uid)
	if e.Inode, err = strconv.ParseUint(fields[colInode], 10, 64); err != nil {
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
