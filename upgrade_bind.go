package udppool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"

	"golang.org/x/net/bpf"

	"github.com/udppool/udppool/internal/steer"
)

// predecessorInodes returns the inodes of the predecessor's sockets of k's
// address, which a successor expects beside its own in the reuseport group
// while the predecessor drains.
func (u *Upgrader) predecessorInodes(k Key) []uint64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.predecessorInodesLocked(k)
}

func (u *Upgrader) predecessorInodesLocked(k Key) []uint64 {
	if u.pred == nil {
		return nil
	}
	var inos []uint64
	for pk, ino := range u.predInodes {
		if pk.base() == k.base() && u.predKeys[pk] && ino != 0 {
			inos = append(inos, ino)
		}
	}
	return inos
}

// reprobe finds the member indexes of this process's sockets again, in
// every group, while no other generation runs. A group whose sockets are
// not all read by a transport of this process cannot be probed live; it
// is taken to hold this process's sockets alone, in index order, as the
// kernel has it when nobody else joined. It returns the groups with
// foreign members. u.mu must be held.
func (u *Upgrader) reprobe() ([]*sockGroup, error) {
	var errs []error
	var foreign []*sockGroup
	for _, g := range u.groups {
		g.mu.Lock()
		ms, quic := slices.Clone(g.members), g.quic
		g.mu.Unlock()
		ok, err := g.reprobe(u.mode(g.key).program(ms, quic))
		if err != nil {
			errs = append(errs, err)
		}
		if !ok {
			g.forget()
		}
		if len(g.foreignMembers()) > 0 {
			foreign = append(foreign, g)
		}
	}
	return foreign, errors.Join(errs...)
}

// groupInodes returns the inodes of this process's sockets in g.
func (u *Upgrader) groupInodes(g *sockGroup) map[uint64]bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	ours := make(map[uint64]bool)
	for _, s := range g.socks {
		if s != nil {
			ours[s.inode] = true
		}
	}
	return ours
}

// bindKey binds the socket of k for pool p, with the upgrader's part: into
// the predecessor's reuseport group or from its inherited descriptor, and
// with the group's steering program.
func (p *Pool) bindKey(ctx context.Context, k Key, o bindOpts) (*socket, error) {
	if u := p.opts.upgrader; u != nil {
		return u.bind(ctx, p, k, o)
	}
	s, err := bind(ctx, k, o)
	if err != nil || o.sockets <= 1 || !o.reuse || !s.reuse {
		return s, err
	}
	if err := p.joinAlone(k, s); err != nil {
		s.conn.Close()
		return nil, err
	}
	return s, nil
}

func (u *Upgrader) bind(ctx context.Context, p *Pool, k Key, o bindOpts) (*socket, error) {
	u.mu.Lock()
	f := u.inherited[k]
	predHolds := u.predHolds(k)
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
	if err := u.join(p, k, s, o.quic); err != nil {
		s.conn.Close()
		if predHolds {
			err = fmt.Errorf("udppool: upgrade refused: %w", err)
			u.tellPredecessor(err)
		}
		return nil, err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if predHolds {
		u.joined[k] = true
		u.holdPredecessorSockets(k) // f among them
	} else if f != nil {
		f.Close()
		delete(u.inherited, k)
	}
	if err := u.steer(k, s); err != nil {
		s.conn.Close()
		return nil, err
	}
	u.socks[k] = s
	return s, nil
}

// holdPredecessorSockets keeps the predecessor's sockets of k's address
// (this process has duplicates of their descriptors, from the hello) until
// closePredecessorSockets: while this process holds them, the predecessor's
// own close does not take them out of the reuseport group, so the kernel
// does not move this process's sockets into their slots behind its back,
// between the predecessor's exit and this process's hearing of it. Nobody
// reads them then; the program sends them only the predecessor's
// connections' datagrams, which have ended. u.mu must be held.
func (u *Upgrader) holdPredecessorSockets(k Key) {
	for pk, f := range u.inherited {
		if pk.base() == k.base() {
			u.predDups[pk] = f
			delete(u.inherited, pk)
		}
	}
}

// closePredecessorSockets takes the predecessor's sockets out of the
// reuseport groups, once it is gone, one at a time: the kernel moves the
// last member into the slot of each, so this process knows the order that
// results, and attaches the program for it right after each close. u.mu
// must be held.
func (u *Upgrader) closePredecessorSockets() error {
	var errs []error
	for _, g := range u.groups {
		for {
			g.mu.Lock()
			i, f := -1, (*os.File)(nil)
			for j := len(g.members) - 1; j >= 0; j-- {
				m := g.members[j]
				k := g.key
				k.Socket = int(m.Socket)
				if g.socks[j] == nil && !m.Foreign && m.Gen != u.gen && u.predDups[k] != nil {
					i, f = j, u.predDups[k]
					delete(u.predDups, k)
					break
				}
			}
			var own *socket
			if i >= 0 {
				f.Close()
				last := len(g.members) - 1
				g.members[i], g.socks[i] = g.members[last], g.socks[last]
				g.members, g.socks = g.members[:last], g.socks[:last]
				for _, s := range g.socks {
					if s != nil {
						own = s
					}
				}
			}
			ms, quic := slices.Clone(g.members), g.quic
			g.mu.Unlock()
			if i < 0 {
				break
			}
			if own != nil {
				if err := attachProgram(own.raw, u.mode(g.key).program(ms, quic)); err != nil {
					errs = append(errs, fmt.Errorf("steering %v: %w", g.key, err))
				}
			}
		}
	}
	for k, f := range u.predDups { // of members the group did not list
		f.Close()
		delete(u.predDups, k)
	}
	return errors.Join(errs...)
}

// predHolds reports whether the predecessor holds a socket of k's address.
// u.mu must be held.
func (u *Upgrader) predHolds(k Key) bool {
	return u.pred != nil && len(u.predMembers[k.base()]) > 0
}

// join probes s, just bound for k, into the reuseport group of its
// address, behind the members this process knows of (the predecessor's,
// as its hello listed them, and its own): a socket outside the process
// line that joined before would otherwise take the member index meant for
// s, and with it what the program sends there.
func (u *Upgrader) join(p *Pool, k Key, s *socket, quic bool) error {
	p.mu.Lock()
	ours := p.inodes()
	p.mu.Unlock()
	u.mu.Lock()
	g := u.groups[k.base()]
	if g == nil {
		g = &sockGroup{key: k.base()}
		if u.pred != nil {
			g.members = slices.Clone(u.predMembers[k.base()])
			g.socks = make([]*socket, len(g.members))
		}
		u.groups[k.base()] = g
	}
	for _, ino := range u.predecessorInodesLocked(k) {
		ours[ino] = true
	}
	mode := u.mode(k)
	u.mu.Unlock()
	g.mu.Lock()
	g.quic = g.quic || quic
	q := g.quic
	g.mu.Unlock()
	return g.join(k, s, steer.Member{Gen: u.gen, Socket: uint8(k.Socket)}, func(ms []steer.Member) []bpf.Instruction {
		return mode.program(ms, q)
	}, ours)
}

// steerMode is what the program of a group depends on besides its members.
type steerMode struct {
	self, pred uint16
	hasPred    bool // a predecessor runs
	ready      bool
	predQUIC   bool // the predecessor serves QUIC on the address
}

// mode returns the Upgrader's steering mode for k's address. u.mu must be
// held.
func (u *Upgrader) mode(k Key) steerMode {
	m := steerMode{self: u.gen, ready: u.at.accepting(), predQUIC: u.predQUIC[k.base()]}
	if u.pred != nil {
		m.pred, m.hasPred = u.pred.gen, true
	}
	return m
}

// program returns the program of a group with members ms, whose sockets
// of this process serve QUIC if quic is set. Until this process is ready
// its predecessor's members take new connections, after it its own; the
// predecessor's QUIC connections keep their sockets, and so do those of
// this process where it has several sockets of the address. A group of
// plain sockets sends everything to the accepting generation.
func (m steerMode) program(ms []steer.Member, quic bool) []bpf.Instruction {
	g := steer.Group{Members: ms, Accept: m.self}
	predIn, own := false, 0
	for _, x := range ms {
		switch {
		case x.Foreign:
		case m.hasPred && x.Gen == m.pred:
			predIn = true
		case x.Gen == m.self:
			own++
		}
	}
	if predIn && !m.ready {
		g.Accept = m.pred
	}
	g.QUIC = predIn && m.predQUIC || quic && own > 1
	return steer.Program(g)
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

// steer attaches the reuseport program of the group of k's socket s as
// this process sees it (see steerMode.program). u.mu must be held.
func (u *Upgrader) steer(k Key, s *socket) error {
	if !kernelSteering {
		return nil
	}
	var prog []bpf.Instruction
	if g := s.group; g != nil {
		g.mu.Lock()
		ms, quic := slices.Clone(g.members), g.quic
		g.mu.Unlock()
		prog = u.mode(k).program(ms, quic)
	} else {
		// A socket this process steers without knowing its group (tests
		// set them up so): behind the predecessor's one, or alone.
		prog = steerProgram([]uint16{u.gen}, 0, false)
		switch {
		case u.joined[k] && u.pred != nil && u.at.accepting():
			prog = steerProgram([]uint16{u.pred.gen, u.gen}, 1, u.predQUIC[k])
		case u.joined[k] && u.pred != nil:
			prog = steerProgram([]uint16{u.pred.gen}, 0, false)
		}
	}
	if err := attachProgram(s.raw, prog); err != nil {
		return fmt.Errorf("steering %v: %w", k, err)
	}
	return nil
}

// attachProgram is attachSteering, replaced by tests that make it fail.
var attachProgram = attachSteering

// resteer recomputes the programs of every socket this process holds.
// Where no other generation runs, it first finds its sockets' member
// indexes again: the other generation's sockets have left (or never
// became ready), and the kernel moved the last members into their slots,
// a foreign one perhaps (see sockGroup.reprobe). u.mu must be held.
func (u *Upgrader) resteer() error {
	var errs []error
	var foreign []*sockGroup
	if u.pred == nil && u.succ == nil {
		errs = append(errs, u.closePredecessorSockets())
		var err error
		foreign, err = u.reprobe()
		errs = append(errs, err)
	}
	defer func() {
		// After the programs: a reader of the log may rely on them.
		for _, g := range foreign {
			u.log.Error("udppool: a socket outside the process line is in the reuseport group; it gets nothing",
				keyAttr(g.key), slog.Any("members", g.foreignMembers()), slog.Any("found", foreignError(g.key, u.groupInodes(g))))
		}
	}()
	for k, s := range u.socks {
		if err := u.steer(k, s); err != nil {
			if errors.Is(err, net.ErrClosed) || errors.Is(err, errBadDescriptor) {
				delete(u.socks, k) // closed since: nothing to steer
				continue
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
