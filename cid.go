package udppool

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"

	"github.com/quic-go/quic-go"
)

// Connection IDs of a pool that takes part in upgrades follow the plaintext
// layout of QUIC-LB (draft-ietf-quic-load-balancers, "Generating Routable
// QUIC Connection IDs"), so that the reuseport program of this package and
// a QUIC-LB load balancer in front of many hosts can both route on them:
//
//	octet 0      config rotation (3 bits, 0 here) | length self-description
//	             (5 bits: the length of the ID minus one)
//	octets 1-2   server ID: the process generation, big-endian
//	octets 3-7   nonce: random
//	octets 8-11  nonce, continued: a keyed check of octets 0-7
//
// A load balancer treats octets 3-11 as an opaque nonce. The check lets a
// process tell a connection ID it issued from a client's random Initial
// destination ID that merely looks like one, which the kernel program
// cannot, so that a look-alike never costs a handshake. The server ID is in
// plaintext, as QUIC-LB's plaintext mode has it: an observer can tell which
// generation serves a connection, nothing more.
const (
	cidLen       = 12
	cidFirst     = cidLen - 1 // config rotation 0, length self-description
	cidGenOff    = 1
	cidCheckOff  = 8
	cidCheckSize = cidLen - cidCheckOff
)

// cidKey is the secret of the connection ID checks, shared by every
// generation of a process line (passed on at each upgrade).
type cidKey [16]byte

// cidCodec issues and recognizes the connection IDs of the generations.
type cidCodec struct {
	block cipher.Block
}

func newCIDCodec(k cidKey) *cidCodec {
	b, err := aes.NewCipher(k[:])
	if err != nil { // impossible: the key has a valid size
		panic(err)
	}
	return &cidCodec{block: b}
}

// check computes the check octets of an ID whose first cidCheckOff octets
// are set.
func (c *cidCodec) check(id []byte) [cidCheckSize]byte {
	var in, out [aes.BlockSize]byte
	copy(in[:], id[:cidCheckOff])
	c.block.Encrypt(out[:], in[:])
	return [cidCheckSize]byte(out[:cidCheckSize])
}

// generation returns the generation encoded in id, and whether id is an ID
// that some generation of this process line issued.
func (c *cidCodec) generation(id []byte) (uint16, bool) {
	if len(id) != cidLen || id[0] != cidFirst {
		return 0, false
	}
	if c.check(id) != [cidCheckSize]byte(id[cidCheckOff:]) {
		return 0, false
	}
	return binary.BigEndian.Uint16(id[cidGenOff:]), true
}

// cidGenerator is the quic.ConnectionIDGenerator of one generation.
type cidGenerator struct {
	codec *cidCodec
	gen   uint16
}

var _ quic.ConnectionIDGenerator = cidGenerator{}

func (g cidGenerator) GenerateConnectionID() (quic.ConnectionID, error) {
	var id [cidLen]byte
	id[0] = cidFirst
	binary.BigEndian.PutUint16(id[cidGenOff:], g.gen)
	if _, err := rand.Read(id[cidGenOff+2 : cidCheckOff]); err != nil {
		return quic.ConnectionID{}, err
	}
	check := g.codec.check(id[:])
	copy(id[cidCheckOff:], check[:])
	return quic.ConnectionIDFromBytes(id[:]), nil
}

func (g cidGenerator) ConnectionIDLen() int { return cidLen }

// QUIC packet layout, as far as routing needs it (RFC 9000, 17; RFC 8999).
const (
	quicLongHeader = 0x80
	quicFixedBit   = 0x40
	// A long header's destination ID length is at octet 5, the ID from
	// octet 6; a short header's ID starts at octet 1.
	longDCIDLenOff = 5
	longDCIDOff    = 6
	shortDCIDOff   = 1
)

// packetClass says what a process does with a datagram during an upgrade.
type packetClass struct {
	gen   uint16 // the generation that issued the destination ID, if issued
	owned bool   // the destination ID was issued by a generation
	// handshake: a datagram that may start a connection (long header of
	// type Initial or 0-RTT, or a version this package does not know), or
	// one that is not QUIC at all: it belongs to the accepting generation
	// unless its ID says otherwise.
	handshake bool
}

// QUIC versions whose long-header types are known here.
const (
	quicV1 = 0x00000001
	quicV2 = 0x6b3343cf
)

// classify parses the header of a datagram just enough to route it.
func (c *cidCodec) classify(b []byte) packetClass {
	if len(b) == 0 || b[0]&quicFixedBit == 0 {
		return packetClass{handshake: true} // not QUIC: see quic-go's ReadNonQUICPacket
	}
	var id []byte
	var pc packetClass
	if b[0]&quicLongHeader == 0 {
		if len(b) >= shortDCIDOff+cidLen {
			id = b[shortDCIDOff : shortDCIDOff+cidLen]
		}
	} else {
		if len(b) < longDCIDOff+1 {
			return packetClass{handshake: true}
		}
		typ := b[0] >> 4 & 3
		switch binary.BigEndian.Uint32(b[1:5]) {
		case quicV1:
			pc.handshake = typ == 0 || typ == 1 // Initial, 0-RTT
		case quicV2:
			pc.handshake = typ == 1 || typ == 2 // Initial, 0-RTT (RFC 9369)
		default:
			pc.handshake = true // version negotiation or unknown
		}
		if n := int(b[longDCIDLenOff]); n == cidLen && len(b) >= longDCIDOff+n {
			id = b[longDCIDOff : longDCIDOff+n]
		}
	}
	if id != nil {
		pc.gen, pc.owned = c.generation(id)
	}
	return pc
}
