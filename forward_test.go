package udppool

import (
	"crypto/rand"
	"encoding/binary"
	"testing"

	"github.com/udppool/udppool/internal/quiclb"
)

// TestForwardOwner checks the routing decision of each generation in user
// space, on the datagrams it must tell apart: those of its own
// connections, of the other generation's, look-alike IDs whose keyed
// check fails (a client's random Initial ID, a short header nobody
// issued), handshakes and non-QUIC datagrams.
func TestForwardOwner(t *testing.T) {
	codec := newCIDCodec(cidKey{4, 5, 6})
	u := &Upgrader{codec: codec}
	id := func(gen uint16) []byte {
		c, err := newCIDGenerator(codec, ServerID{}, gen, 0).GenerateConnectionID()
		if err != nil {
			t.Fatal(err)
		}
		return c.Bytes()
	}
	lookalike := func(gen uint16) []byte {
		b := id(gen)
		b[len(b)-quiclb.CheckLen] ^= 0xff // the keyed check ends the ID
		return b
	}
	short := func(dcid []byte) []byte {
		return append(append([]byte{0x40 | 0x01}, dcid...), make([]byte, 30)...)
	}
	long := func(typ byte, dcid []byte) []byte {
		b := []byte{0xc0 | typ<<4}
		b = binary.BigEndian.AppendUint32(b, quiclb.V1)
		b = append(b, byte(len(dcid)))
		b = append(b, dcid...)
		b = append(b, 8, 1, 2, 3, 4, 5, 6, 7, 8)
		return append(b, make([]byte, 1200)...)
	}
	random := make([]byte, 8)
	rand.Read(random)
	nonQUIC := append([]byte{0x00}, make([]byte, 40)...)

	old, next := &peer{gen: 7}, &peer{gen: 8}
	type want int
	const (
		keep want = iota
		toPeer
	)
	for _, c := range []struct {
		name string
		st   *routeState
		pkt  []byte
		want want
	}{
		// The old generation after the hand-over: not accepting.
		{"old: own short header", &routeState{self: 7, peer: next}, short(id(7)), keep},
		{"old: successor's short header", &routeState{self: 7, peer: next}, short(id(8)), toPeer},
		{"old: short header, look-alike of the successor", &routeState{self: 7, peer: next}, short(lookalike(8)), keep},
		{"old: client Initial", &routeState{self: 7, peer: next}, long(0, random), toPeer},
		{"old: Initial look-alike of its own", &routeState{self: 7, peer: next}, long(0, lookalike(7)), toPeer},
		{"old: second Initial of its handshake", &routeState{self: 7, peer: next}, long(0, id(7)), keep},
		{"old: Handshake of the successor", &routeState{self: 7, peer: next}, long(2, id(8)), toPeer},
		{"old: non-QUIC", &routeState{self: 7, peer: next}, nonQUIC, toPeer},
		// The successor: accepting.
		{"new: own short header", &routeState{self: 8, accepting: true, peer: old}, short(id(8)), keep},
		{"new: predecessor's short header", &routeState{self: 8, accepting: true, peer: old}, short(id(7)), toPeer},
		{"new: short header, look-alike of the predecessor", &routeState{self: 8, accepting: true, peer: old}, short(lookalike(7)), keep},
		{"new: client Initial", &routeState{self: 8, accepting: true, peer: old}, long(0, random), keep},
		{"new: Initial look-alike of the predecessor", &routeState{self: 8, accepting: true, peer: old}, long(0, lookalike(7)), keep},
		{"new: predecessor's second Initial", &routeState{self: 8, accepting: true, peer: old}, long(0, id(7)), toPeer},
		{"new: non-QUIC", &routeState{self: 8, accepting: true, peer: old}, nonQUIC, keep},
		// Alone: everything is this generation's.
		{"alone: other generation's short header", &routeState{self: 8, accepting: true}, short(id(7)), keep},
		{"alone: client Initial", &routeState{self: 8, accepting: true}, long(0, random), keep},
	} {
		got := u.owner(c.st, c.pkt)
		switch {
		case c.want == keep && got != nil:
			t.Errorf("%s: forwarded to generation %d, want kept", c.name, got.gen)
		case c.want == toPeer && got != c.st.peer:
			t.Errorf("%s: kept, want forwarded to generation %d", c.name, c.st.peer.gen)
		}
	}
}
