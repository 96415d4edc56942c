package steer

import (
	"crypto/rand"
	"encoding/binary"
	"testing"

	"golang.org/x/net/bpf"

	"github.com/udppool/udppool/internal/quiclb"
)

var codec = quiclb.NewCodec([quiclb.KeyLen]byte{1, 2, 3})

// id issues an ID of generation gen's socket sock with a server ID of
// sidLen octets.
func id(t testing.TB, sidLen int, gen uint16, sock uint8) []byte {
	sid := make([]byte, sidLen)
	rand.Read(sid)
	b, err := codec.Append(nil, quiclb.Config{Rotation: uint8(sidLen % 7), ServerID: sid}, gen, sock, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func short(dcid []byte) []byte {
	return append(append([]byte{quiclb.FixedBit | 0x01}, dcid...), make([]byte, 30)...)
}

func long(typ byte, version uint32, dcid []byte) []byte {
	b := []byte{quiclb.LongHeader | quiclb.FixedBit | typ<<4}
	b = binary.BigEndian.AppendUint32(b, version)
	b = append(b, byte(len(dcid)))
	b = append(b, dcid...)
	b = append(b, 8, 1, 2, 3, 4, 5, 6, 7, 8)
	return append(b, make([]byte, 1200)...)
}

func run(t *testing.T, prog []bpf.Instruction, pkt []byte) int {
	t.Helper()
	vm, err := bpf.NewVM(prog)
	if err != nil {
		t.Fatal(err)
	}
	got, err := vm.Run(pkt)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestProgram runs the program in x/net's BPF interpreter on the datagrams
// it must tell apart: generation 7 with sockets 0-2 at members 0-2, the
// accepting generation 8 at member 3.
func TestProgram(t *testing.T) {
	g := Group{
		Members: []Member{{Gen: 7, Socket: 0}, {Gen: 7, Socket: 1}, {Gen: 7, Socket: 2}, {Gen: 8, Socket: 0}},
		Accept:  8,
		QUIC:    true,
	}
	prog := Program(g)
	random := make([]byte, 8)
	rand.Read(random)
	random20 := make([]byte, 20)
	rand.Read(random20)
	for sidLen := 1; sidLen <= quiclb.MaxServerIDLen; sidLen++ {
		lookalike := id(t, sidLen, 7, 2)
		lookalike[len(lookalike)-1] ^= 0xff // the kernel cannot tell: gen 7's socket, which forwards
		unroutable := id(t, sidLen, 7, 1)
		unroutable[0] |= 0xe0
		wrongLen := id(t, sidLen, 7, 1)
		for _, c := range []struct {
			name string
			pkt  []byte
			want int
		}{
			{"short header of gen 7 socket 0", short(id(t, sidLen, 7, 0)), 0},
			{"short header of gen 7 socket 1", short(id(t, sidLen, 7, 1)), 1},
			{"short header of gen 7 socket 2", short(id(t, sidLen, 7, 2)), 2},
			{"short header of gen 7 socket 3 (none)", short(id(t, sidLen, 7, 3)), 3},
			{"short header of gen 8", short(id(t, sidLen, 8, 0)), 3},
			{"short header of gen 9 (gone)", short(id(t, sidLen, 9, 0)), 3},
			{"short header, unroutable", short(unroutable), 3},
			{"short header, foreign ID", short(random), 3},
			{"short header, ID cut short", short(id(t, sidLen, 7, 1))[:1+len(wrongLen)-1], 3},
			{"short header, exactly the ID", short(id(t, sidLen, 7, 1))[:1+len(wrongLen)], 1},
			{"client Initial, random ID", long(0, quiclb.V1, random), 3},
			{"client Initial, random 20-octet ID", long(0, quiclb.V1, random20), 3},
			{"second Initial of gen 7's handshake", long(0, quiclb.V1, id(t, sidLen, 7, 1)), 1},
			{"Handshake of gen 7", long(2, quiclb.V1, id(t, sidLen, 7, 2)), 2},
			{"Handshake of gen 8", long(2, quiclb.V1, id(t, sidLen, 8, 0)), 3},
			{"QUIC v2 packet of gen 7", long(3, quiclb.V2, id(t, sidLen, 7, 0)), 0},
			{"long header, ID length octet disagrees", long(2, quiclb.V1, append(wrongLen, 0)), 3},
			{"long header, cut in the ID", long(2, quiclb.V1, id(t, sidLen, 7, 1))[:6+len(wrongLen)-1], 3},
			{"Initial look-alike of gen 7", long(0, quiclb.V1, lookalike), 2},
			{"non-QUIC", append([]byte{0x00}, make([]byte, 40)...), 3},
		} {
			if got := run(t, prog, c.pkt); got != c.want {
				t.Errorf("server ID of %d, %s: socket %d, want %d", sidLen, c.name, got, c.want)
			}
		}
	}
	// IDs of the previous layout, which a predecessor of that version
	// issued: 0x0b, the generation, random, check.
	legacy := func(gen uint16) []byte {
		id := make([]byte, quiclb.LegacyLen)
		rand.Read(id)
		id[0] = quiclb.LegacyFirst
		binary.BigEndian.PutUint16(id[1:], gen)
		return id
	}
	for _, c := range []struct {
		name string
		pkt  []byte
		want int
	}{
		{"legacy short header of gen 7", short(legacy(7)), 0},
		{"legacy short header of gen 8", short(legacy(8)), 3},
		{"legacy short header of gen 9", short(legacy(9)), 3},
		{"legacy short header, cut", short(legacy(7))[:quiclb.LegacyLen], 3},
		{"legacy Handshake of gen 7", long(2, quiclb.V1, legacy(7)), 0},
		{"legacy Handshake, ID length disagrees", long(2, quiclb.V1, append(legacy(7), 0)), 3},
		{"legacy Handshake, cut", long(2, quiclb.V1, legacy(7))[:6+quiclb.LegacyLen-1], 3},
	} {
		if got := run(t, prog, c.pkt); got != c.want {
			t.Errorf("%s: socket %d, want %d", c.name, got, c.want)
		}
	}
	for _, pkt := range [][]byte{{0x40, 0x0b, 0x00}, {0xc0}, nil} {
		if got := run(t, prog, pkt); got != 3 {
			t.Errorf("%x: socket %d, want 3", pkt, got)
		}
	}
}

// TestProgramOrder: generations in any order, an accepting generation with
// several sockets reordered by the kernel (the last took a leaver's slot),
// and a group without the accepting generation.
func TestProgramOrder(t *testing.T) {
	g := Group{
		Members: []Member{{Gen: 8, Socket: 0}, {Gen: 7, Socket: 1}, {Gen: 7, Socket: 0}, {Gen: 8, Socket: 2}, {Gen: 9, Socket: 0}},
		Accept:  9,
		QUIC:    true,
	}
	prog := Program(g)
	for _, c := range []struct {
		gen  uint16
		sock uint8
		want int
	}{{8, 0, 0}, {8, 2, 3}, {8, 1, 4}, {7, 0, 2}, {7, 1, 1}, {7, 2, 4}, {9, 0, 4}, {9, 1, 4}} {
		if got := run(t, prog, short(id(t, 3, c.gen, c.sock))); got != c.want {
			t.Errorf("gen %d socket %d: member %d, want %d", c.gen, c.sock, got, c.want)
		}
	}
	// Gen 8's socket 1 has left: its IDs go where new connections go,
	// which needs the flow hash (not in x/net's interpreter). A group
	// whose accepting generation has one socket shows it.
	g = Group{Members: []Member{{Gen: 8, Socket: 0}, {Gen: 7, Socket: 0}, {Gen: 8, Socket: 2}}, Accept: 7, QUIC: true}
	if got := run(t, Program(g), short(id(t, 3, 8, 1))); got != 1 {
		t.Errorf("gen 8 socket 1 (gone): member %d, want 1", got)
	}
	g = Group{Members: []Member{{Gen: 8, Socket: 0}, {Gen: 8, Socket: 1}}, Accept: 9, QUIC: true}
	if got := run(t, Program(g), short(id(t, 3, 9, 0))); got != NoSocket {
		t.Errorf("no accepting member: %d, want NoSocket", got)
	}
	if got := run(t, Program(g), short(id(t, 3, 8, 1))); got != 1 {
		t.Errorf("no accepting member, gen 8 socket 1: %d, want 1", got)
	}
}

// TestProgramSimple: without QUIC, or with one member, every datagram goes
// to the accepting socket.
func TestProgramSimple(t *testing.T) {
	for _, g := range []Group{
		{Members: []Member{{Gen: 7, Socket: 0}}, Accept: 7, QUIC: true},
		{Members: []Member{{Gen: 7, Socket: 0}}, Accept: 7},
		{Members: []Member{{Gen: 6, Socket: 0}, {Gen: 7, Socket: 0}}, Accept: 7},
	} {
		want := len(g.Members) - 1
		if got := run(t, Program(g), short(id(t, 2, 6, 0))); got != want {
			t.Errorf("%+v: member %d, want %d", g, got, want)
		}
	}
}

// TestProgramConstant: the program's length, and so its cost, does not
// grow with the number of sockets of a generation whose sockets are in
// order.
func TestProgramConstant(t *testing.T) {
	size := func(n int) int {
		g := Group{Accept: 2, QUIC: true}
		for i := range n {
			g.Members = append(g.Members, Member{Gen: 1, Socket: uint8(i)})
		}
		for i := range n {
			g.Members = append(g.Members, Member{Gen: 2, Socket: uint8(i)})
		}
		return len(Program(g))
	}
	if a, b := size(2), size(128); a != b {
		t.Errorf("program of 2x2 sockets: %d instructions, of 2x128: %d", a, b)
	}
	// Even a reordered generation of 255 sockets assembles.
	g := Group{Accept: 2, QUIC: true}
	for i := 254; i >= 0; i-- {
		g.Members = append(g.Members, Member{Gen: 1, Socket: uint8(i)})
	}
	g.Members = append(g.Members, Member{Gen: 2, Socket: 0})
	prog := Program(g)
	if _, err := bpf.Assemble(prog); err != nil {
		t.Fatal(err)
	}
	if got := run(t, prog, short(id(t, 5, 1, 254))); got != 0 {
		t.Errorf("reordered gen 1 socket 254: member %d, want 0", got)
	}
	if got := run(t, prog, short(id(t, 5, 1, 0))); got != 254 {
		t.Errorf("reordered gen 1 socket 0: member %d, want 254", got)
	}
}

// TestProgramForeign: a foreign member gets nothing, not the IDs of a
// generation that shares its number, nor new connections.
func TestProgramForeign(t *testing.T) {
	g := Group{
		Members: []Member{{Foreign: true}, {Gen: 7, Socket: 1}, {Gen: 7, Socket: 0}, {Gen: 8}},
		Accept:  8,
		QUIC:    true,
	}
	prog := Program(g)
	for _, c := range []struct {
		gen  uint16
		sock uint8
		want int
	}{{7, 0, 2}, {7, 1, 1}, {8, 0, 3}, {0, 0, 3}} {
		if got := run(t, prog, short(id(t, 3, c.gen, c.sock))); got != c.want {
			t.Errorf("gen %d socket %d: member %d, want %d", c.gen, c.sock, got, c.want)
		}
	}
	alone := Group{Members: []Member{{Foreign: true}, {Gen: 7}}, Accept: 7}
	if got := run(t, Program(alone), []byte{0xc0, 1, 2, 3}); got != 1 {
		t.Errorf("alone behind a foreign member: %d, want 1", got)
	}
}
