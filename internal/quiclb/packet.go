package quiclb

import "encoding/binary"

// QUIC packet layout, as far as routing needs it (RFC 9000, 17; RFC 8999).
const (
	LongHeader = 0x80
	FixedBit   = 0x40
	// A long header's destination ID length is at octet 5, the ID from
	// octet 6; a short header's ID starts at octet 1, and its length is
	// known only to the server that chose it: for this package's IDs, the
	// first octet says it.
	LongDCIDLenOff = 5
	LongDCIDOff    = 6
	ShortDCIDOff   = 1
)

// QUIC versions whose long-header types are known here.
const (
	V1 = 0x00000001
	V2 = 0x6b3343cf // RFC 9369
)

// Header is what routing needs of a datagram's first QUIC packet.
type Header struct {
	// QUIC: the fixed bit is set (quic-go hands datagrams without it to
	// ReadNonQUICPacket).
	QUIC bool
	Long bool
	// Handshake: a long header that may start a connection (Initial or
	// 0-RTT, or a version this package does not know, which includes
	// version negotiation), or a datagram that is not QUIC at all.
	Handshake bool
	// DCID is the destination connection ID if it is laid out as this
	// package's IDs are (Parse succeeds on it), whether or not its check
	// holds; it aliases the datagram.
	DCID []byte
}

// ParseHeader parses the header of a datagram just enough to route it.
func ParseHeader(b []byte) Header {
	if len(b) == 0 || b[0]&FixedBit == 0 {
		return Header{Handshake: true}
	}
	h := Header{QUIC: true}
	if b[0]&LongHeader == 0 {
		if len(b) > ShortDCIDOff {
			n := 1 + int(b[ShortDCIDOff]&0x1f)
			if len(b) >= ShortDCIDOff+n {
				h.DCID = b[ShortDCIDOff : ShortDCIDOff+n]
			}
		}
	} else {
		h.Long = true
		if len(b) < LongDCIDLenOff+1 {
			h.Handshake = true
			return h
		}
		typ := b[0] >> 4 & 3
		switch binary.BigEndian.Uint32(b[1:5]) {
		case V1:
			h.Handshake = typ == 0 || typ == 1 // Initial, 0-RTT
		case V2:
			h.Handshake = typ == 1 || typ == 2 // Initial, 0-RTT
		default:
			h.Handshake = true // version negotiation or unknown
		}
		if n := int(b[LongDCIDLenOff]); len(b) >= LongDCIDOff+n {
			h.DCID = b[LongDCIDOff : LongDCIDOff+n]
		}
	}
	if _, ok := Parse(h.DCID); !ok {
		h.DCID = nil
	}
	return h
}
