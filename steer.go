package udppool

import (
	"golang.org/x/net/bpf"

	"github.com/udppool/udppool/internal/steer"
)

// steerProgram returns the classic BPF program that a reuseport group runs
// on every datagram to choose the socket that receives it, by index in the
// group. members lists the generation of each socket in the group's index
// order (one socket per generation); accept is the index of the accepting
// generation's socket. With quic, a datagram whose destination connection
// ID looks like one of a member's IDs (see cid.go) goes to that member;
// everything else (handshakes with a client-chosen ID, unknown IDs,
// non-QUIC datagrams) goes to accept. Without quic every datagram goes to
// accept.
//
// The kernel cannot verify an ID's keyed check octets, so a client's random
// Initial ID that looks like an older generation's reaches that generation,
// which verifies it and forwards the datagram (forward.go). Routing by ID
// also for Initials, rather than by packet type, keeps the second Initial of
// a handshake that an older generation began with that generation, without
// a detour through user space.
func steerProgram(members []uint16, accept int, quic bool) []bpf.Instruction {
	g := steer.Group{QUIC: quic}
	for _, gen := range members {
		g.Members = append(g.Members, steer.Member{Gen: gen})
	}
	if accept >= 0 && accept < len(members) {
		g.Accept = members[accept]
	}
	return steer.Program(g)
}
