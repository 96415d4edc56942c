package udppool

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"syscall"
	"time"

	"golang.org/x/net/bpf"
)

// predecessorInode returns the inode of the predecessor's socket for k,
// which a successor expects beside its own in the reuseport group while
// the predecessor drains; 0 if there is none.
func (u *Upgrader) predecessorInode(k Key) uint64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.predKeys[k] || u.pred == nil {
		return 0
	}
	return u.predInodes[k]
}

// bindKey binds the socket of k for pool p, with the upgrader's part: into
// the predecessor's reuseport group or from its inherited descriptor, and
// with the group's steering program.
func (p *Pool) bindKey(ctx context.Context, k Key, o bindOpts) (*socket, error) {
	if u := p.opts.upgrader; u != nil {
		return u.bind(ctx, k, o)
	}
	return bind(ctx, k, o)
}

func (u *Upgrader) bind(ctx context.Context, k Key, o bindOpts) (*socket, error) {
	u.mu.Lock()
	f := u.inherited[k]
	predHolds := u.predKeys[k] && u.pred != nil
	steer := kernelSteering && o.reuse && !u.opts.inherit
	u.mu.Unlock()
	if f != nil && !steer {
		return u.adopt(k, f)
	}
	s, err := bind(ctx, k, o)
	if err != nil {
		if f != nil && bindBlocked(err) {
			return u.adopt(k, f) // the predecessor's socket is the way in
		}
		return nil, err
	}
	if !steer || !s.reuse { // an activated socket may lack SO_REUSEPORT
		return s, nil
	}
	if predHolds {
		if err := u.checkGroup(k, s); err != nil {
			s.conn.Close()
			u.tellPredecessor(err)
			return nil, err
		}
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if f != nil {
		f.Close()
		delete(u.inherited, k)
	}
	if predHolds {
		u.joined[k] = true
	}
	if err := u.steer(k, s.raw); err != nil {
		s.conn.Close()
		return nil, err
	}
	u.socks[k] = s
	return s, nil
}

// bindNew binds the socket of a port 0 key k for p.
func (p *Pool) bindNew(ctx context.Context, k Key, o acquireOpts) (*socket, error) {
	if u := p.opts.upgrader; u != nil {
		return u.bindNew(ctx, k, p.bindOpts(k, o))
	}
	return bind(ctx, k, p.bindOpts(k, o))
}

// bindNew binds a socket for the port 0 key k. A successor takes over the
// predecessor's socket that was bound for the same key, so that an
// upgrade keeps the port the kernel chose: such a socket is in no
// reuseport group, and the generations share it.
func (u *Upgrader) bindNew(ctx context.Context, k Key, o bindOpts) (*socket, error) {
	u.mu.Lock()
	var from Key
	var f *os.File
	for i, ik := range u.anyPort {
		if ik.Network == k.Network && ik.Addr.Addr() == k.Addr.Addr() && u.inherited[ik] != nil {
			from, f = ik, u.inherited[ik]
			u.anyPort = slices.Delete(u.anyPort, i, i+1)
			break
		}
	}
	u.mu.Unlock()
	var s *socket
	var err error
	if f != nil {
		s, err = u.adopt(from, f)
	} else {
		s, err = bind(ctx, k, o)
	}
	if err != nil {
		return nil, err
	}
	lk := s.localKey(k)
	u.mu.Lock()
	u.ephemeral[lk] = true
	prune := len(u.ephemeral) >= 2*u.ephemeralLive+16
	u.mu.Unlock()
	if prune {
		u.pruneEphemeral(lk)
	}
	return s, nil
}

// pruneEphemeral forgets the port 0 sockets closed since, once their
// number has doubled: temporary transports of Pool.Dial come and go.
// The socket of keep is not in its pool yet.
func (u *Upgrader) pruneEphemeral(keep Key) {
	u.mu.Lock()
	pools := slices.Clone(u.pools)
	u.mu.Unlock()
	live := map[Key]bool{keep: true}
	for _, p := range pools { // Pool.mu is taken before u.mu, never under it
		p.mu.Lock()
		for k := range p.entries {
			live[k] = true
		}
		p.mu.Unlock()
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for k := range u.ephemeral {
		if !live[k] {
			delete(u.ephemeral, k)
		} else {
			n++
		}
	}
	u.ephemeralLive = n
}

// adopt turns the predecessor's socket of k into this process's.
func (u *Upgrader) adopt(k Key, f *os.File) (*socket, error) {
	pc, err := net.FilePacketConn(f)
	u.mu.Lock()
	f.Close()
	delete(u.inherited, k)
	if err == nil {
		u.shared[k] = true
	}
	u.mu.Unlock()
	if err != nil {
		return nil, err
	}
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return nil, fmt.Errorf("inherited socket of %v is a %T", k, pc)
	}
	return newSocket(uc)
}

// steer attaches the reuseport program of k's group as this process sees
// it: alone at index 0, or at index 1 behind the predecessor. u.mu must be
// held.
func (u *Upgrader) steer(k Key, raw syscall.RawConn) error {
	if !kernelSteering {
		return nil
	}
	prog := steerProgram([]uint16{u.gen}, 0, false)
	switch {
	case u.joined[k] && u.pred != nil && u.at.accepting():
		// Only the predecessor's QUIC connections need steering by ID;
		// the datagrams of a plain socket go to the newest generation.
		prog = steerProgram([]uint16{u.pred.gen, u.gen}, 1, u.predQUIC[k])
	case u.joined[k] && u.pred != nil:
		// Not ready: the predecessor's own program, which sends
		// everything to it. Attaching it, rather than leaving the group's
		// as it is, also undoes a ready program of a Ready that failed.
		prog = steerProgram([]uint16{u.pred.gen}, 0, false)
	}
	if err := attachProgram(raw, prog); err != nil {
		return fmt.Errorf("steering %v: %w", k, err)
	}
	return nil
}

// checkGroup makes sure that s, just bound into the predecessor's
// reuseport group of k, is at index 1 of it, behind the predecessor's
// socket alone: the index that the programs of both generations assume.
// A socket outside the process line (a stale server, anything of the same
// user with SO_REUSEPORT) that joined the group before would otherwise
// take the index meant for this process, and with it every new handshake.
//
// The check attaches a probe program that sends a marked datagram to index
// 1 and everything else to index 0, as the predecessor's program does,
// sends the marked datagram from loopback and waits for it on s, which
// nobody reads yet. s joined last, so it is at index 1 exactly when the
// group has two members. The group gets the predecessor's program back
// before checkGroup returns. A member at index 1 that is not s receives
// the marked datagram: 16 octets no QUIC stack takes for a packet.
func (u *Upgrader) checkGroup(k Key, s *socket) error {
	var mark [16]byte
	rand.Read(mark[:])
	probe := []bpf.Instruction{
		bpf.LoadExtension{Num: bpf.ExtLen},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(len(mark)), SkipFalse: 5},
		bpf.LoadAbsolute{Off: 0, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: binary.BigEndian.Uint32(mark[0:]), SkipFalse: 3},
		bpf.LoadAbsolute{Off: 4, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: binary.BigEndian.Uint32(mark[4:]), SkipFalse: 1},
		bpf.RetConstant{Val: 1},
		bpf.RetConstant{Val: 0},
	}
	if err := attachProgram(s.raw, probe); err != nil {
		return fmt.Errorf("steering %v: probing the reuseport group: %w", k, err)
	}
	found := probeGroup(k, s, mark[:])
	u.mu.Lock()
	var pred uint16
	if u.pred != nil {
		pred = u.pred.gen
	}
	ino := u.predInodes[k]
	u.mu.Unlock()
	if err := attachProgram(s.raw, steerProgram([]uint16{pred}, 0, false)); err != nil {
		return fmt.Errorf("steering %v: %w", k, err)
	}
	if found {
		return nil
	}
	ours := map[uint64]bool{s.inode: true}
	if ino != 0 {
		ours[ino] = true
	}
	if err := foreignError(k, ours); errors.Is(err, ErrForeignSocket) {
		return fmt.Errorf("udppool: upgrade refused, the reuseport group has a member outside the process line: %w", err)
	}
	return fmt.Errorf("udppool: upgrade refused: %w of %v: this process's socket is not the second member of its reuseport group", ErrForeignSocket, k)
}

// probeGroup sends mark to k's address from loopback and reports whether
// s receives it, trying a few times: loopback seldom drops, never thrice.
func probeGroup(k Key, s *socket, mark []byte) bool {
	var dsts []netip.Addr
	switch a := k.Addr.Addr(); {
	case !a.IsUnspecified():
		dsts = []netip.Addr{a}
	case k.Network == "udp4":
		dsts = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	case k.Network == "udp6":
		dsts = []netip.Addr{netip.IPv6Loopback()}
	default: // dual-stack: whichever loopback the host has
		dsts = []netip.Addr{netip.IPv6Loopback(), netip.MustParseAddr("127.0.0.1")}
	}
	buf := make([]byte, 64)
	for _, dst := range dsts {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, k.Addr.Port())))
		if err != nil {
			continue
		}
		for range 3 {
			if _, err := c.Write(mark); err != nil {
				break
			}
			s.conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			for {
				n, err := s.conn.Read(buf)
				if err != nil {
					break // the deadline: not here, or lost
				}
				if bytes.Equal(buf[:n], mark) {
					s.conn.SetReadDeadline(time.Time{})
					c.Close()
					return true
				}
			}
		}
		c.Close()
	}
	s.conn.SetReadDeadline(time.Time{})
	return false
}

// attachProgram is attachSteering, replaced by tests that make it fail.
var attachProgram = attachSteering

// resteer recomputes the programs of every socket this process holds.
// u.mu must be held.
func (u *Upgrader) resteer() error {
	var errs []error
	for k, s := range u.socks {
		if err := u.steer(k, s.raw); err != nil {
			if errors.Is(err, net.ErrClosed) || errors.Is(err, errBadDescriptor) {
				delete(u.socks, k) // closed since: nothing to steer
				continue
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
