package quiclb

import (
	"bytes"
	"crypto/aes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	mrand "math/rand/v2"
	"testing"
	"testing/iotest"
)

// TestPlaintextVector1 checks the encoder and decoder against the
// plaintext test vector 1 of draft-ietf-quic-load-balancers-21 (appendix
// B.1): config rotation 0, server ID c4605e, nonce 4504cc4f. (Vector 2 is
// malformed as printed and not used.)
func TestPlaintextVector1(t *testing.T) {
	const want = "07c4605e4504cc4f"
	sid, _ := hex.DecodeString("c4605e")
	nonce, _ := hex.DecodeString("4504cc4f")
	id, err := AppendPlaintext(nil, 0, sid, nonce)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(id); got != want {
		t.Fatalf("encoded %s, want %s", got, want)
	}
	t.Logf("vector 1: rotation 0, server ID %x, nonce %x -> %x", sid, nonce, id)
	rot, gotSID, gotNonce, ok := DecodePlaintext(id, len(sid))
	if !ok || rot != 0 || !bytes.Equal(gotSID, sid) || !bytes.Equal(gotNonce, nonce) {
		t.Fatalf("decoded %x: rotation %d, server ID %x, nonce %x, ok %v", id, rot, gotSID, gotNonce, ok)
	}
	t.Logf("vector 1: %s decodes to rotation %d, server ID %x, nonce %x", want, rot, gotSID, gotNonce)
	// Its 4-octet nonce cannot hold a generation, a socket and a check:
	// not one of ours.
	if _, ok := Parse(id); ok {
		t.Errorf("Parse accepted vector 1, whose nonce is too short for the package's layout")
	}
}

// draftDecode decodes a connection ID as draft-ietf-quic-load-balancers-21
// describes it for a load balancer in plaintext mode, written from the
// draft's text and nothing of this package: the first three bits of the
// first octet are the config rotation, the server ID occupies the octets
// right after the first octet, and with length self-encoding the other
// five bits of the first octet are the length of the connection ID minus
// one (sections 3 and 5.1).
func draftDecode(id []byte, serverIDLen int) (rotation byte, length int, serverID []byte) {
	return id[0] >> 5, int(id[0]&0x1f) + 1, id[1 : 1+serverIDLen]
}

// TestIssuedIDsDecode issues many IDs for several server ID lengths and
// rotations and decodes each as a QUIC-LB load balancer does, and as the
// package does.
func TestIssuedIDsDecode(t *testing.T) {
	var key [KeyLen]byte
	rand.Read(key[:])
	c := NewCodec(key)
	other := NewCodec([KeyLen]byte{1})
	r := mrand.New(mrand.NewPCG(1, 2))
	seen := make(map[string]bool)
	for s := 1; s <= MaxServerIDLen; s++ {
		for range 300 {
			cfg := Config{Rotation: uint8(r.IntN(Unroutable)), ServerID: make([]byte, s)}
			for i := range cfg.ServerID {
				cfg.ServerID[i] = byte(r.Uint32())
			}
			gen, sock := uint16(r.Uint32()), uint8(r.Uint32())
			id, err := c.Append(nil, cfg, gen, sock, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			if len(id) != cfg.Len() || len(id) > 20 || len(id) != 13+s {
				t.Fatalf("server ID of %d: ID of %d octets", s, len(id))
			}
			rot, n, sid := draftDecode(id, s)
			if rot != cfg.Rotation || n != len(id) || !bytes.Equal(sid, cfg.ServerID) {
				t.Fatalf("%x: load balancer decodes rotation %d, length %d, server ID %x; issued with %d, %d, %x",
					id, rot, n, sid, cfg.Rotation, len(id), cfg.ServerID)
			}
			rot2, sid2, nonce, ok := DecodePlaintext(id, s)
			if !ok || rot2 != cfg.Rotation || !bytes.Equal(sid2, cfg.ServerID) || len(nonce) != NonceLen {
				t.Fatalf("%x: DecodePlaintext %d %x %x %v", id, rot2, sid2, nonce, ok)
			}
			f, ok := c.Verify(id)
			if !ok || f.Gen != gen || f.Socket != sock || f.Rotation != cfg.Rotation || !bytes.Equal(f.ServerID, cfg.ServerID) {
				t.Fatalf("%x: Verify %+v %v; issued gen %d socket %d", id, f, ok, gen, sock)
			}
			if _, ok := other.Verify(id); ok {
				t.Fatalf("%x passes the check of another key", id)
			}
			if seen[string(id)] {
				t.Fatalf("%x issued twice", id)
			}
			seen[string(id)] = true
		}
	}
}

// TestLookAlike: an ID laid out as ours whose check fails is not ours,
// whichever octet differs, and random IDs with our first octet fail.
func TestLookAlike(t *testing.T) {
	c := NewCodec([KeyLen]byte{9})
	cfg := Config{ServerID: []byte{0xc4, 0x60, 0x5e}}
	id, err := c.Append(nil, cfg, 7, 1, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(id); i++ { // octet 0 changes the layout: Parse fails
		for bit := range 8 {
			bad := bytes.Clone(id)
			bad[i] ^= 1 << bit
			if f, ok := c.Verify(bad); ok {
				t.Fatalf("%x (octet %d bit %d flipped) passes: %+v", bad, i, bit, f)
			}
			if _, ok := Parse(bad); !ok {
				t.Fatalf("%x: a flip after octet 0 changed the layout", bad)
			}
		}
	}
	passed := 0
	for range 1 << 14 {
		bad := bytes.Clone(id)
		rand.Read(bad[1:])
		if _, ok := c.Verify(bad); ok {
			passed++
		}
	}
	if passed > 1 { // 2^14 tries at 2^-32 each
		t.Errorf("%d random look-alikes passed the check", passed)
	}
}

// legacyID issues an ID as udppool did before fleet server IDs (its
// cid.go, copied): 0x0b, the generation, 5 random octets, then the first
// 4 octets of AES-128 of octets 0-7 padded with zeros.
func legacyID(t *testing.T, key [KeyLen]byte, gen uint16) []byte {
	b, err := aes.NewCipher(key[:])
	if err != nil {
		t.Fatal(err)
	}
	var id [12]byte
	id[0] = 11
	binary.BigEndian.PutUint16(id[1:], gen)
	rand.Read(id[3:8])
	var in, out [16]byte
	copy(in[:], id[:8])
	b.Encrypt(out[:], in[:])
	copy(id[8:], out[:4])
	return id[:]
}

// TestLegacy: IDs of the previous layout parse and verify, so that a
// successor reads its predecessor's.
func TestLegacy(t *testing.T) {
	key := [KeyLen]byte{4, 5}
	c := NewCodec(key)
	for gen := range uint16(100) {
		id := legacyID(t, key, gen*655)
		f, ok := c.Verify(id)
		if !ok || !f.Legacy || f.Gen != gen*655 || f.Socket != 0 {
			t.Fatalf("legacy %x: %+v %v", id, f, ok)
		}
		id[11] ^= 1
		if _, ok := c.Verify(id); ok {
			t.Fatalf("legacy look-alike %x passes", id)
		}
		if h := ParseHeader(append([]byte{FixedBit}, id...)); !bytes.Equal(h.DCID, id) {
			t.Fatalf("legacy %x in a short header: %x", id, h.DCID)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want error
	}{
		{Config{}, ErrServerIDLen},
		{Config{ServerID: make([]byte, MaxServerIDLen+1)}, ErrServerIDLen},
		{Config{Rotation: Unroutable, ServerID: []byte{1}}, ErrRotation},
		{Config{Rotation: 200, ServerID: []byte{1}}, ErrRotation},
	} {
		err := c.cfg.Validate()
		var ce *ConfigError
		if !errors.Is(err, c.want) || !errors.As(err, &ce) {
			t.Errorf("%+v: %v, want a *ConfigError wrapping %v", c.cfg, err, c.want)
		}
		if _, err := NewCodec([KeyLen]byte{}).Append(nil, c.cfg, 1, 0, rand.Reader); !errors.Is(err, c.want) {
			t.Errorf("Append %+v: %v", c.cfg, err)
		}
	}
	if err := (Config{Rotation: 6, ServerID: make([]byte, MaxServerIDLen)}).Validate(); err != nil {
		t.Errorf("longest valid config: %v", err)
	}
	if _, err := NewCodec([KeyLen]byte{}).Append(nil, Config{ServerID: []byte{1}}, 1, 0, iotest.ErrReader(errors.New("no entropy"))); err == nil {
		t.Error("Append without randomness succeeded")
	}
	for _, c := range []struct{ sid, nonce int }{{0, 4}, {16, 3}, {3, 3}, {15, 5}} {
		if _, err := AppendPlaintext(nil, 0, make([]byte, c.sid), make([]byte, c.nonce)); !errors.Is(err, ErrPlaintextLen) {
			t.Errorf("server ID %d, nonce %d: %v", c.sid, c.nonce, err)
		}
	}
}

// TestParseHeader finds the ID in short and long headers and classifies
// handshakes as the routing needs them.
func TestParseHeader(t *testing.T) {
	c := NewCodec([KeyLen]byte{3})
	id, _ := c.Append(nil, Config{ServerID: []byte{0, 7}}, 7, 0, rand.Reader)
	short := append(append([]byte{FixedBit | 1}, id...), make([]byte, 30)...)
	long := func(typ byte, version uint32, dcid []byte) []byte {
		b := []byte{LongHeader | FixedBit | typ<<4}
		b = binary.BigEndian.AppendUint32(b, version)
		b = append(b, byte(len(dcid)))
		b = append(b, dcid...)
		return append(b, 8, 1, 2, 3, 4, 5, 6, 7, 8)
	}
	random := make([]byte, 8)
	rand.Read(random)
	for _, tc := range []struct {
		name string
		pkt  []byte
		want Header
	}{
		{"short", short, Header{QUIC: true, DCID: id}},
		{"short, truncated ID", short[:len(id)], Header{QUIC: true}},
		{"Initial v1, ours", long(0, V1, id), Header{QUIC: true, Long: true, Handshake: true, DCID: id}},
		{"Initial v1, random", long(0, V1, random), Header{QUIC: true, Long: true, Handshake: true}},
		{"Handshake v1", long(2, V1, id), Header{QUIC: true, Long: true, DCID: id}},
		{"Initial v2", long(1, V2, id), Header{QUIC: true, Long: true, Handshake: true, DCID: id}},
		{"Retry v2", long(0, V2, id), Header{QUIC: true, Long: true, DCID: id}},
		{"unknown version", long(0, 0x0a1a2a3a, id), Header{QUIC: true, Long: true, Handshake: true, DCID: id}},
		{"long, truncated", long(2, V1, id)[:10], Header{QUIC: true, Long: true}},
		{"long, no version", []byte{0xc0, 0, 0}, Header{QUIC: true, Long: true, Handshake: true}},
		{"not QUIC", []byte{0x00, 1, 2}, Header{Handshake: true}},
		{"empty", nil, Header{Handshake: true}},
	} {
		got := ParseHeader(tc.pkt)
		if got.QUIC != tc.want.QUIC || got.Long != tc.want.Long || got.Handshake != tc.want.Handshake || !bytes.Equal(got.DCID, tc.want.DCID) {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// FuzzParse: no input panics, and what parses is consistent with the
// layout.
func FuzzParse(f *testing.F) {
	c := NewCodec([KeyLen]byte{5})
	for s := 1; s <= MaxServerIDLen; s++ {
		id, _ := c.Append(nil, Config{ServerID: make([]byte, s)}, 1, 2, rand.Reader)
		f.Add(id)
		f.Add(append([]byte{FixedBit}, id...))
		f.Add(append([]byte{0xc0, 0, 0, 0, 1, byte(len(id))}, id...))
	}
	f.Add([]byte("\x07\xc4\x60\x5e\x45\x04\xcc\x4f"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if fl, ok := Parse(b); ok && !fl.Legacy {
			if len(b) != 1+len(fl.ServerID)+NonceLen || b[0]>>5 == Unroutable || fl.Rotation != b[0]>>5 {
				t.Fatalf("Parse(%x) = %+v", b, fl)
			}
			rot, sid, _, ok := DecodePlaintext(b, len(fl.ServerID))
			if !ok || rot != fl.Rotation || !bytes.Equal(sid, fl.ServerID) {
				t.Fatalf("%x: Parse and DecodePlaintext disagree", b)
			}
		}
		if fl, ok := c.Verify(b); ok {
			if _, ok := Parse(b); !ok {
				t.Fatalf("Verify(%x) = %+v but Parse fails", b, fl)
			}
		}
		h := ParseHeader(b)
		if h.DCID != nil {
			if _, ok := Parse(h.DCID); !ok {
				t.Fatalf("ParseHeader(%x) found %x, which does not parse", b, h.DCID)
			}
		}
		for s := 0; s < 20; s++ {
			DecodePlaintext(b, s)
		}
	})
}
