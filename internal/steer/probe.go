package steer

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/bpf"
)

// ErrNotMember reports a socket that Probe did not find in the reuseport
// group of the others.
var ErrNotMember = errors.New("socket is not a member of the reuseport group")

// markLen is the length of a probe's datagram: 8 octets of mark, 4 of the
// member index it was sent for.
const markLen = 12

// Marked returns prog preceded by a test that sends the datagram whose
// first 8 octets are mark to member i, and every other datagram through
// prog as before. mark's first octet must have the QUIC fixed bit clear,
// so that the datagram is not QUIC to anyone who sees it.
func Marked(prog []bpf.Instruction, mark [8]byte, i uint32) []bpf.Instruction {
	pre := []bpf.Instruction{
		bpf.LoadExtension{Num: bpf.ExtLen},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: markLen, SkipFalse: 5},
		bpf.LoadAbsolute{Off: 0, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: binary.BigEndian.Uint32(mark[0:]), SkipFalse: 3},
		bpf.LoadAbsolute{Off: 4, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: binary.BigEndian.Uint32(mark[4:]), SkipFalse: 1},
		bpf.RetConstant{Val: i},
	}
	return append(pre, prog...)
}

// Probe finds the member index of each of socks in their reuseport group:
// socks[j] is member index[j]. Indexes follow join order, and when a member
// leaves the last takes its slot, so a process that steers by index must
// know them, and a member of another process (the same user may join the
// group) shifts them; foreign lists the indexes that none of socks holds.
//
// For each index in turn, Probe attaches prog with a test in front that
// sends one marked datagram to that index (Marked), sends it to the group's
// address from loopback, and sees which socket reads it. The group's other
// datagrams go through prog meanwhile, but a datagram that prog sends to
// one of socks during the probe is read and dropped: probe before anyone
// else reads socks (before quic-go serves them, or while prog keeps
// everything off them), or let their readers report the marked datagrams
// (Prober). A marked datagram that none of socks reads within wait went to
// a foreign member (loopback loses none unless a receive buffer is full);
// after 8 of those Probe gives up, with ErrNotMember for the sockets not
// found. Probe ends by attaching prog alone, and leaves socks without read
// deadlines.
func Probe(socks []*net.UDPConn, prog []bpf.Instruction, wait time.Duration) (index, foreign []int, err error) {
	return ProbeFrom(socks, 0, prog, wait)
}

// ProbeFrom is Probe starting at member index from, for sockets that
// joined behind from members known otherwise (a predecessor's).
func ProbeFrom(socks []*net.UDPConn, from int, prog []bpf.Instruction, wait time.Duration) (index, foreign []int, err error) {
	if len(socks) == 0 {
		return nil, nil, nil
	}
	raw, err := socks[0].SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	p := NewProber()
	done := make(chan struct{})
	var wg sync.WaitGroup
	for j, s := range socks {
		wg.Go(func() {
			buf := make([]byte, 2048)
			for {
				n, err := s.Read(buf)
				if err != nil {
					return
				}
				p.seen(j, buf[:n], done)
			}
		})
	}
	defer func() {
		close(done)
		for _, s := range socks {
			s.SetReadDeadline(time.Unix(1, 0))
		}
		wg.Wait()
		for _, s := range socks {
			s.SetReadDeadline(time.Time{})
		}
	}()
	return p.Run(raw, socks[0].LocalAddr().(*net.UDPAddr), len(socks), from, prog, wait)
}

// A Prober finds member indexes as Probe does, with datagrams that the
// sockets' own readers report (Seen), so that sockets may be probed while
// they serve: the marked datagrams are 12 octets that no QUIC stack takes
// for a packet, and the group's other datagrams keep their way.
type Prober struct {
	mark [8]byte
	hits chan hit
}

type hit struct {
	sock int
	i    uint32
}

// MarkLen is the length of every probe datagram: readers need look at no
// other.
const MarkLen = markLen

// NewProber returns a Prober with a random mark.
func NewProber() *Prober {
	p := &Prober{hits: make(chan hit, 64)}
	rand.Read(p.mark[:])
	p.mark[0] &^= 0x40 // not QUIC
	return p
}

// Seen reports whether b is one of p's datagrams, and if so that socket
// sock (an index into the sockets given to Run) read it.
func (p *Prober) Seen(sock int, b []byte) bool {
	return p.seen(sock, b, nil)
}

func (p *Prober) seen(sock int, b []byte, done <-chan struct{}) bool {
	if len(b) != markLen || !bytes.Equal(b[:8], p.mark[:]) {
		return false
	}
	select {
	case p.hits <- hit{sock, binary.BigEndian.Uint32(b[8:])}:
	case <-done:
	default: // a late duplicate: Run no longer waits for it
	}
	return true
}

// Run probes the group of raw, whose address is addr, for n sockets whose
// readers call Seen, from member index from on (see Probe), and ends by
// attaching prog.
func (p *Prober) Run(raw syscall.RawConn, addr *net.UDPAddr, n, from int, prog []bpf.Instruction, wait time.Duration) (index, foreign []int, err error) {
	dst, err := loopbackOf(addr)
	if err != nil {
		return nil, nil, err
	}
	tx, err := net.DialUDP(dst.Network(), nil, dst)
	if err != nil {
		return nil, nil, fmt.Errorf("probe of %v: %w", addr, err)
	}
	defer tx.Close()
	defer func() {
		if aerr := Attach(raw, prog); err == nil {
			err = aerr
		}
	}()
	index = make([]int, n)
	for j := range index {
		index[j] = -1
	}
	found := 0
	// record takes a socket's answer, also a late one for an index probed
	// before (a reader that was slow to report it, as a busy one may be:
	// the kernel placed the datagram when it was sent, so the answer holds).
	// An answer for another index from a socket found already means a
	// marked datagram went past the group's end and the kernel hashed it.
	record := func(h hit) error {
		switch {
		case h.sock < 0 || h.sock >= n:
		case index[h.sock] < 0:
			index[h.sock] = int(h.i)
			found++
			foreign = slices.DeleteFunc(foreign, func(f int) bool { return f == int(h.i) })
		case index[h.sock] != int(h.i):
			return notMembers(addr, index)
		}
		return nil
	}
	// A marked datagram for an index past the group's end goes where the
	// kernel's hash sends it, which may be a foreign member: Run gives up
	// after maxForeign of them.
	const maxForeign = 8
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for i := uint32(from); found < n && len(foreign) <= maxForeign; i++ {
		if err := Attach(raw, Marked(prog, p.mark, i)); err != nil {
			return nil, nil, err
		}
		pkt := binary.BigEndian.AppendUint32(p.mark[:], i)
		if _, err := tx.Write(pkt); err != nil {
			return nil, nil, fmt.Errorf("probe of %v: %w", addr, err)
		}
		timer.Reset(wait)
		answered := false
		for !answered && found < n {
			select {
			case h := <-p.hits:
				if err := record(h); err != nil {
					return nil, nil, err
				}
				answered = h.i == i
			case <-timer.C:
				foreign = append(foreign, int(i))
				answered = true
			}
		}
	}
	// Late answers of slow readers, for as long again.
	timer.Reset(wait)
	for found < n {
		select {
		case h := <-p.hits:
			if err := record(h); err != nil {
				return nil, nil, err
			}
			continue
		case <-timer.C:
		}
		break
	}
	if found < n {
		return nil, nil, notMembers(addr, index)
	}
	return index, foreign, nil
}

func notMembers(addr *net.UDPAddr, index []int) error {
	var errs []error
	for j, idx := range index {
		if idx < 0 {
			errs = append(errs, fmt.Errorf("%v (socket %d): %w", addr, j, ErrNotMember))
		}
	}
	return errors.Join(errs...)
}

// loopbackOf returns the address a probe is sent to: a's, or loopback of
// its family where a is unspecified.
func loopbackOf(a *net.UDPAddr) (*net.UDPAddr, error) {
	if a == nil {
		return nil, errors.New("probe: socket has no local address")
	}
	d := *a
	switch {
	case a.IP.To4() != nil && a.IP.IsUnspecified():
		d.IP = net.IPv4(127, 0, 0, 1)
	case a.IP.IsUnspecified():
		d.IP = net.IPv6loopback
	}
	return &d, nil
}
