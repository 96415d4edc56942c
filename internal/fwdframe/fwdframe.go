// Package fwdframe frames the datagrams that two generations of an upgrade
// forward to each other over their datagram socket pair: each frame carries
// the key of the socket the datagram arrived on (so that the receiver hands
// it to its own transport of that socket), the client's address and the
// datagram's control messages, which quic-go reads for ECN and the
// destination address.
//
// Octet by octet:
//
//	1          key length k
//	k          key
//	1          address length a: 4 (IPv4) or 16 (IPv6, also IPv4-mapped)
//	a          source address
//	2          source port, big-endian
//	2          control data length c, big-endian
//	c          control data
//	the rest   payload
//
// Both generations run the same package only across an upgrade between
// binaries of one version line, so the format carries no version; a frame
// that does not parse is dropped, as a damaged datagram would be.
package fwdframe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
)

// ErrMalformed reports a frame that does not parse. Parse wraps it with
// the field at fault.
var ErrMalformed = errors.New("fwdframe: malformed frame")

// Frame is a parsed frame. OOB and Payload share the memory of the parsed
// octets: copy them to keep them past the next read into that buffer.
type Frame struct {
	Key     string
	From    netip.AddrPort
	OOB     []byte
	Payload []byte
}

// Append appends the frame of a datagram from from, received on the socket
// of key with control data oob, to buf and returns the extended buffer. It
// returns nil, appending nothing, where the datagram cannot be framed: a
// key over 255 octets, control data over 65535 octets or an invalid
// address. Such a datagram is dropped, which forwarding can afford.
func Append(buf []byte, key string, from netip.AddrPort, oob, payload []byte) []byte {
	if len(key) > math.MaxUint8 || len(oob) > math.MaxUint16 || !from.Addr().IsValid() {
		return nil
	}
	ip := from.Addr().AsSlice()
	buf = append(buf, byte(len(key)))
	buf = append(buf, key...)
	buf = append(buf, byte(len(ip)))
	buf = append(buf, ip...)
	buf = binary.BigEndian.AppendUint16(buf, from.Port())
	buf = binary.BigEndian.AppendUint16(buf, uint16(len(oob)))
	buf = append(buf, oob...)
	return append(buf, payload...)
}

// Parse parses the frame b. An error wraps ErrMalformed.
func Parse(b []byte) (Frame, error) {
	var f Frame
	if len(b) < 1 {
		return Frame{}, fmt.Errorf("%w: empty", ErrMalformed)
	}
	kl := int(b[0])
	b = b[1:]
	if kl > len(b) {
		return Frame{}, fmt.Errorf("%w: key of %d octets, %d left", ErrMalformed, kl, len(b))
	}
	f.Key, b = string(b[:kl]), b[kl:]
	if len(b) < 1 {
		return Frame{}, fmt.Errorf("%w: no address length", ErrMalformed)
	}
	al := int(b[0])
	b = b[1:]
	if al != 4 && al != 16 {
		return Frame{}, fmt.Errorf("%w: address of %d octets", ErrMalformed, al)
	}
	if al+4 > len(b) {
		return Frame{}, fmt.Errorf("%w: address, port and control length need %d octets, %d left", ErrMalformed, al+4, len(b))
	}
	ip, _ := netip.AddrFromSlice(b[:al]) // 4 or 16 octets: always valid
	b = b[al:]
	f.From = netip.AddrPortFrom(ip, binary.BigEndian.Uint16(b))
	ol := int(binary.BigEndian.Uint16(b[2:]))
	b = b[4:]
	if ol > len(b) {
		return Frame{}, fmt.Errorf("%w: control data of %d octets, %d left", ErrMalformed, ol, len(b))
	}
	f.OOB, f.Payload = b[:ol:ol], b[ol:]
	return f, nil
}
