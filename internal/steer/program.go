// Package steer builds and attaches the classic BPF program that a
// reuseport group runs on each datagram to choose the socket that receives
// it, by the connection ID's generation and socket index (see package
// quiclb for the layout).
//
// The program finds the fields by arithmetic on the ID's first octet,
// whose length bits say how long the server ID is, so it needs no
// configuration of its own and reads the IDs of generations configured with
// different server IDs. Its cost per datagram is constant in the number of
// sockets: one compare per generation in the group (at most two run at
// once), then the socket index plus the generation's first member index,
// where the generation's sockets sit in the group in the order of their
// socket indexes (as they do when a process binds them in that order). Only
// a generation whose sockets the kernel reordered (a member left and the
// last took its slot) gets a chain of compares over its sockets.
package steer

import (
	"golang.org/x/net/bpf"

	"github.com/udppool/udppool/internal/quiclb"
)

// Member is a socket of a reuseport group, as its connection IDs name it.
type Member struct {
	Gen    uint16
	Socket uint8
	// Foreign marks a member outside the process line (a stale server,
	// another program of the same user): the program sends it nothing.
	Foreign bool
}

// Group is what the program knows of a reuseport group.
type Group struct {
	// Members lists the sockets by their index in the group.
	Members []Member
	// Accept is the generation that takes new connections: datagrams that
	// no member's ID names (handshakes with a client's ID, unknown or
	// foreign IDs, datagrams that are not QUIC) go to its sockets, spread
	// over them by the client's destination ID (long headers) or the
	// kernel's flow hash (rxhash), which keep a handshake on one socket.
	Accept uint16
	// QUIC: steer by connection ID. Without it every datagram goes to the
	// accepting generation.
	QUIC bool
}

// NoSocket, returned by a program, is an index past the end of any group:
// the kernel then chooses by its own hash of the 4-tuple.
const NoSocket = 0xffffffff

// Offsets in a datagram, from the ID's length L (the low 5 bits of its
// first octet, so the server ID is L - quiclb.NonceLen octets): the
// generation of an ID in a short header sits at octet L - shortGenBack, in
// a long header at L - longGenBack; the socket index follows it.
const (
	shortGenBack = quiclb.NonceLen - 2 // octet 0, ID's octet 0, server ID
	longGenBack  = quiclb.NonceLen - 7 // octets 0-5, ID's octet 0, server ID
	socketAfter  = 2
	minL         = quiclb.MinLen - 1
	maxL         = quiclb.MaxLen - 1
	unroutable   = quiclb.Unroutable << 5
)

// Program returns the program of g.
func Program(g Group) []bpf.Instruction {
	var a asm
	if !g.QUIC || len(g.Members) < 2 {
		a.fallback(g)
		return a.assemble()
	}
	const (
		fb          = "fallback"
		long        = "long"
		fields      = "fields"
		legacyShort = "legacyShort"
		legacyLong  = "legacyLong"
		legacyGen   = "legacyGen"
	)
	// Scratch: M[0] the ID's length L.
	a.add(bpf.LoadExtension{Num: bpf.ExtLen})
	a.jumpIf(bpf.JumpLessThan, quiclb.ShortDCIDOff+quiclb.LegacyLen, fb, "")
	a.add(bpf.LoadAbsolute{Off: 0, Size: 1})
	a.jumpIf(bpf.JumpBitsSet, quiclb.FixedBit, "", fb)
	a.jumpIf(bpf.JumpBitsSet, quiclb.LongHeader, long, "")

	// Short header: the ID starts at octet 1 and must fit the datagram.
	a.add(bpf.LoadAbsolute{Off: quiclb.ShortDCIDOff, Size: 1})
	a.jumpIf(bpf.JumpEqual, quiclb.LegacyFirst, legacyShort, "")
	a.idLength(fb)
	a.add(bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: quiclb.ShortDCIDOff + 1})
	a.fits(fb)
	a.add(bpf.ALUOpConstant{Op: bpf.ALUOpSub, Val: shortGenBack})
	a.add(bpf.TAX{})
	a.jump(fields)

	// Long header: the ID's length octet must agree with the ID's first.
	a.label(long)
	a.add(bpf.LoadAbsolute{Off: quiclb.LongDCIDLenOff, Size: 1})
	a.add(bpf.TAX{})
	a.add(bpf.LoadAbsolute{Off: quiclb.LongDCIDOff, Size: 1})
	a.jumpIf(bpf.JumpEqual, quiclb.LegacyFirst, legacyLong, "")
	a.idLength(fb)
	a.add(bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 1})
	a.jumpIfX(bpf.JumpEqual, "", fb)
	a.add(bpf.LoadScratch{Dst: bpf.RegA, N: 0})
	a.add(bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: quiclb.LongDCIDOff + 1})
	a.fits(fb)
	a.add(bpf.ALUOpConstant{Op: bpf.ALUOpSub, Val: longGenBack})
	a.add(bpf.TAX{})

	// X is the generation's offset, and stays so for the blocks to load
	// the socket index. (Not through scratch memory: the kernel's check
	// that a load from it follows a store does not follow a return.)
	a.label(fields)
	a.add(bpf.LoadIndirect{Off: 0, Size: 2})
	// One compare per generation, each followed by a far jump to the
	// generation's block: the blocks follow the fallback, so that the
	// header's checks above reach the fallback within a conditional
	// jump's 255 instructions however many sockets the blocks cover.
	gens := generations(g.Members)
	for _, gen := range gens {
		a.jumpIf(bpf.JumpEqual, uint32(gen.gen), "", a.skipOne())
		a.jump(gen.label())
	}
	a.jump(fb)

	// Legacy IDs (a predecessor of the previous layout): the generation
	// after the first octet, one socket per generation.
	a.label(legacyShort)
	a.add(bpf.LoadExtension{Num: bpf.ExtLen})
	a.jumpIf(bpf.JumpLessThan, quiclb.ShortDCIDOff+quiclb.LegacyLen, fb, "")
	a.add(bpf.LoadAbsolute{Off: quiclb.ShortDCIDOff + 1, Size: 2})
	a.jump(legacyGen)
	a.label(legacyLong)
	a.add(bpf.TXA{})
	a.jumpIf(bpf.JumpEqual, quiclb.LegacyLen, "", fb)
	a.add(bpf.LoadExtension{Num: bpf.ExtLen})
	a.jumpIf(bpf.JumpLessThan, quiclb.LongDCIDOff+quiclb.LegacyLen, fb, "")
	a.add(bpf.LoadAbsolute{Off: quiclb.LongDCIDOff + 1, Size: 2})
	a.label(legacyGen)
	for _, gen := range gens {
		if len(gen.indexes) > 0 && gen.indexes[0] >= 0 {
			a.jumpIf(bpf.JumpEqual, uint32(gen.gen), "", a.skipOne())
			a.add(bpf.RetConstant{Val: uint32(gen.indexes[0])})
		}
	}

	a.label(fb)
	a.fallback(g)
	for _, gen := range gens {
		a.label(gen.label())
		a.add(bpf.LoadIndirect{Off: socketAfter, Size: 1})
		a.spread(gen.indexes, g)
	}
	return a.assemble()
}

// idLength checks the ID's first octet in A (routable config rotation,
// length in range), leaves the length in A and M[0], or jumps to fb.
func (a *asm) idLength(fb string) {
	a.jumpIf(bpf.JumpGreaterOrEqual, unroutable, fb, "")
	a.add(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0x1f})
	a.jumpIf(bpf.JumpLessThan, minL, fb, "")
	a.jumpIf(bpf.JumpGreaterThan, maxL, fb, "")
	a.add(bpf.StoreScratch{Src: bpf.RegA, N: 0})
}

// fits jumps to fb unless the datagram holds A octets, and leaves the ID's
// length in A. (A load past the end would end the program with 0, which
// names a socket.)
func (a *asm) fits(fb string) {
	a.add(bpf.TAX{})
	a.add(bpf.LoadExtension{Num: bpf.ExtLen})
	a.jumpIfX(bpf.JumpLessThan, fb, "")
	a.add(bpf.LoadScratch{Dst: bpf.RegA, N: 0})
}

// spread returns the member index that A selects among indexes (indexes[i]
// for A = i), or what the fallback of g returns for an A out of range.
func (a *asm) spread(indexes []int, g Group) {
	if base, ok := contiguous(indexes); ok {
		out := a.fresh()
		a.jumpIf(bpf.JumpGreaterOrEqual, uint32(len(indexes)), out, "")
		if base != 0 {
			a.add(bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: uint32(base)})
		}
		a.add(bpf.RetA{})
		a.label(out)
	} else {
		for i, idx := range indexes {
			if idx < 0 {
				continue
			}
			a.jumpIf(bpf.JumpEqual, uint32(i), "", a.skipOne())
			a.add(bpf.RetConstant{Val: uint32(idx)})
		}
	}
	if g.Members == nil { // the fallback's own spread: nothing left
		a.add(bpf.RetConstant{Val: NoSocket})
		return
	}
	a.fallback(g)
}

// fallback returns the socket of a datagram that no ID places: the
// accepting generation's, by flow hash where it has several.
func (a *asm) fallback(g Group) {
	var acc []int
	for i, m := range g.Members {
		if m.Gen == g.Accept && !m.Foreign {
			acc = append(acc, i)
		}
	}
	switch len(acc) {
	case 0:
		a.add(bpf.RetConstant{Val: NoSocket})
	case 1:
		a.add(bpf.RetConstant{Val: uint32(acc[0])})
	default:
		// A long header is spread by 4 octets from its destination ID
		// on: a client's first flight keeps its random ID, so all of its
		// Initials (a ClientHello may take several datagrams) and 0-RTT
		// reach one socket, and the IDs of many clients spread evenly.
		// Anything else by the flow hash, which the kernel may have left
		// 0 (IPv4 over loopback): such datagrams then go to the first.
		rx, mod := a.fresh(), a.fresh()
		a.add(bpf.LoadExtension{Num: bpf.ExtLen})
		a.jumpIf(bpf.JumpLessThan, quiclb.LongDCIDOff+4, rx, "")
		a.add(bpf.LoadAbsolute{Off: 0, Size: 1})
		a.jumpIf(bpf.JumpBitsSet, quiclb.LongHeader, "", rx)
		a.add(bpf.LoadAbsolute{Off: quiclb.LongDCIDOff, Size: 4})
		a.jump(mod)
		a.label(rx)
		a.add(bpf.LoadExtension{Num: bpf.ExtRXHash})
		a.label(mod)
		a.add(bpf.ALUOpConstant{Op: bpf.ALUOpMod, Val: uint32(len(acc))})
		a.spread(acc, Group{})
	}
}

// generation is one generation's sockets: indexes[s] is the member index
// of its socket s, -1 where it has none.
type generation struct {
	gen     uint16
	indexes []int
}

func (g generation) label() string { return "gen" + itoa(int(g.gen)) }

func generations(ms []Member) []generation {
	var gs []generation
	at := make(map[uint16]int)
	for i, m := range ms {
		if m.Foreign {
			continue
		}
		j, ok := at[m.Gen]
		if !ok {
			j = len(gs)
			at[m.Gen] = j
			gs = append(gs, generation{gen: m.Gen})
		}
		g := &gs[j]
		for len(g.indexes) <= int(m.Socket) {
			g.indexes = append(g.indexes, -1)
		}
		g.indexes[m.Socket] = i
	}
	return gs
}

// contiguous reports whether indexes are base, base+1, ...
func contiguous(indexes []int) (base int, ok bool) {
	if len(indexes) == 0 {
		return 0, false
	}
	for i, idx := range indexes {
		if idx != indexes[0]+i {
			return 0, false
		}
	}
	return indexes[0], true
}
