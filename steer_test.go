package udppool

import (
	"crypto/rand"
	"encoding/binary"
	"testing"

	"golang.org/x/net/bpf"

	"github.com/udppool/udppool/internal/quiclb"
)

// TestSteerProgram runs the reuseport program in x/net's BPF interpreter
// on the datagrams it must tell apart.
func TestSteerProgram(t *testing.T) {
	codec := newCIDCodec(cidKey{1, 2, 3})
	id := func(gen uint16) []byte {
		c, err := newCIDGenerator(codec, ServerID{}, gen, 0).GenerateConnectionID()
		if err != nil {
			t.Fatal(err)
		}
		return c.Bytes()
	}
	short := func(dcid []byte) []byte {
		return append(append([]byte{0x40 | 0x01}, dcid...), make([]byte, 30)...)
	}
	long := func(typ byte, version uint32, dcid []byte) []byte {
		b := []byte{0xc0 | typ<<4}
		b = binary.BigEndian.AppendUint32(b, version)
		b = append(b, byte(len(dcid)))
		b = append(b, dcid...)
		b = append(b, 8, 1, 2, 3, 4, 5, 6, 7, 8)
		return append(b, make([]byte, 1200)...)
	}
	random := make([]byte, 8)
	rand.Read(random)
	lookalike := id(7)
	lookalike[len(lookalike)-1] ^= 0xff // the kernel cannot tell: gen 7's socket, which forwards

	members := []uint16{7, 8} // generation 7 at index 0, 8 (accepting) at 1
	vm, err := bpf.NewVM(steerProgram(members, 1, true))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		pkt  []byte
		want int
	}{
		{"short header of gen 7", short(id(7)), 0},
		{"short header of gen 8", short(id(8)), 1},
		{"short header of gen 9 (gone)", short(id(9)), 1},
		{"short header, foreign ID", short(random[:8]), 1},
		{"client Initial, random ID", long(0, quiclb.V1, random), 1},
		{"second Initial of gen 7's handshake", long(0, quiclb.V1, id(7)), 0},
		{"Handshake of gen 7", long(2, quiclb.V1, id(7)), 0},
		{"Handshake of gen 8", long(2, quiclb.V1, id(8)), 1},
		{"QUIC v2 packet of gen 7", long(3, quiclb.V2, id(7)), 0},
		{"Initial look-alike of gen 7", long(0, quiclb.V1, lookalike), 0},
		{"non-QUIC", append([]byte{0x00}, make([]byte, 40)...), 1},
		{"too short", []byte{0x40, 0x0b, 0x00}, 1},
		{"empty", nil, 1},
	} {
		got, err := vm.Run(c.pkt)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got != c.want {
			t.Errorf("%s: socket %d, want %d", c.name, got, c.want)
		}
	}
	for _, quic := range []bool{false, true} {
		vm, err := bpf.NewVM(steerProgram([]uint16{7}, 0, quic))
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := vm.Run(short(id(9))); got != 0 {
			t.Errorf("single member (quic %v): socket %d, want 0", quic, got)
		}
	}
}
