package udppool

import (
	"golang.org/x/net/bpf"
)

// steerProgram returns the classic BPF program that a reuseport group runs
// on every datagram (from the first octet of the UDP payload) to choose the
// socket that receives it, by index in the group. members lists the
// generation of each socket in the group's index order; accept is the index
// of the accepting generation's socket. With quic, a datagram whose
// destination connection ID looks like one of a member's IDs (see cid.go)
// goes to that member; everything else (handshakes with a client-chosen ID,
// unknown IDs, non-QUIC datagrams) goes to accept. Without quic every
// datagram goes to accept.
//
// The kernel cannot verify an ID's keyed check octets, so a client's random
// Initial ID that looks like an older generation's reaches that generation,
// which verifies it and forwards the datagram (forward.go). Routing by ID
// also for Initials, rather than by packet type, keeps the second Initial of
// a handshake that an older generation began with that generation, without
// a detour through user space.
func steerProgram(members []uint16, accept int, quic bool) []bpf.Instruction {
	def := bpf.RetConstant{Val: uint32(accept)}
	if !quic || len(members) < 2 {
		return []bpf.Instruction{def}
	}
	// Jumps name their targets by these labels; the table of members
	// starts at table, the default return follows it, then one return per
	// member.
	const (
		short = 5
		long  = 9
		table = 14
	)
	n := len(members)
	defAt := table + n
	skip := func(from, to int) uint8 { return uint8(to - from - 1) }
	prog := []bpf.Instruction{
		/* 0 */ bpf.LoadExtension{Num: bpf.ExtLen},
		/* 1 */ bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: shortDCIDOff + cidLen, SkipFalse: skip(1, defAt)},
		/* 2 */ bpf.LoadAbsolute{Off: 0, Size: 1},
		/* 3 */ bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: quicFixedBit, SkipFalse: skip(3, defAt)},
		/* 4 */ bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: quicLongHeader, SkipTrue: skip(4, long), SkipFalse: skip(4, short)},
		/* 5 short */ bpf.LoadAbsolute{Off: shortDCIDOff, Size: 1},
		/* 6 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: cidFirst, SkipFalse: skip(6, defAt)},
		/* 7 */ bpf.LoadAbsolute{Off: shortDCIDOff + cidGenOff, Size: 2},
		/* 8 */ bpf.Jump{Skip: uint32(skip(8, table))},
		/* 9 long */ bpf.LoadAbsolute{Off: longDCIDLenOff, Size: 1},
		/* 10 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: cidLen, SkipFalse: skip(10, defAt)},
		/* 11 */ bpf.LoadAbsolute{Off: longDCIDOff, Size: 1},
		/* 12 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: cidFirst, SkipFalse: skip(12, defAt)},
		/* 13 */ bpf.LoadAbsolute{Off: longDCIDOff + cidGenOff, Size: 2},
	}
	for i, g := range members {
		at := table + i
		prog = append(prog, bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(g), SkipTrue: skip(at, defAt+1+i)})
	}
	prog = append(prog, def)
	for i := range members {
		prog = append(prog, bpf.RetConstant{Val: uint32(i)})
	}
	return prog
}
