package quiclb

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Sizes of the layout (see the package documentation).
const (
	// MaxServerIDLen is the longest server ID: with the 12-octet nonce it
	// makes a 20-octet ID, QUIC's longest.
	MaxServerIDLen = 7
	// NonceLen is the length of what follows the server ID.
	NonceLen = genLen + socketLen + randLen + CheckLen
	// MinLen and MaxLen bound the length of an ID.
	MinLen = 1 + 1 + NonceLen
	MaxLen = 1 + MaxServerIDLen + NonceLen
	// CheckLen is the length of the keyed check.
	CheckLen = 4
	// KeyLen is the length of the check's key.
	KeyLen = 16
	// Unroutable is the config rotation that QUIC-LB reserves for IDs a
	// load balancer cannot route.
	Unroutable = 7

	genLen    = 2
	socketLen = 1
	randLen   = 5
	// Offsets in the nonce.
	genOff    = 0
	socketOff = genOff + genLen
	randOff   = socketOff + socketLen
	checkOff  = randOff + randLen
)

// The legacy layout, which udppool issued before its IDs carried a fleet's
// server ID: 12 octets, the first 0x0b (config rotation 0, length 11), the
// generation as the 2-octet server ID, 5 random octets, and the check (the
// same function of the octets before it). A successor still reads them, so
// that an upgrade from a process of that version keeps its connections.
const (
	LegacyLen   = 12
	LegacyFirst = LegacyLen - 1
)

// Errors of a bad configuration, wrapped in a *ConfigError.
var (
	ErrServerIDLen = errors.New("server ID length out of range")
	ErrRotation    = errors.New("config rotation out of range")
)

// ConfigError reports a QUIC-LB configuration that IDs cannot carry.
type ConfigError struct {
	Rotation    uint8
	ServerIDLen int
	Err         error // ErrServerIDLen or ErrRotation
}

func (e *ConfigError) Error() string {
	if errors.Is(e.Err, ErrRotation) {
		return fmt.Sprintf("QUIC-LB config rotation %d: %v (0-%d; %d means unroutable)", e.Rotation, e.Err, Unroutable-1, Unroutable)
	}
	return fmt.Sprintf("QUIC-LB server ID of %d octets: %v (1-%d, so that the ID with its %d-octet nonce fits QUIC's 20)", e.ServerIDLen, e.Err, MaxServerIDLen, NonceLen)
}

func (e *ConfigError) Unwrap() error { return e.Err }

// Config is what a QUIC-LB load balancer knows of a server: the config
// rotation and the server ID, whose length is the configuration's server ID
// length.
type Config struct {
	Rotation uint8
	ServerID []byte
}

// Validate reports whether IDs can carry c.
func (c Config) Validate() error {
	if c.Rotation >= Unroutable {
		return &ConfigError{Rotation: c.Rotation, ServerIDLen: len(c.ServerID), Err: ErrRotation}
	}
	if len(c.ServerID) < 1 || len(c.ServerID) > MaxServerIDLen {
		return &ConfigError{Rotation: c.Rotation, ServerIDLen: len(c.ServerID), Err: ErrServerIDLen}
	}
	return nil
}

// Len returns the length of the IDs of c.
func (c Config) Len() int { return 1 + len(c.ServerID) + NonceLen }

// Fields are the parts of an ID.
type Fields struct {
	Rotation uint8
	ServerID []byte // aliases the ID
	Gen      uint16
	Socket   uint8
	Legacy   bool // the legacy layout: Socket is 0
}

// Parse splits an ID by its first octet, without verifying its check: the
// fast path of a process that wants to know whose an ID would be before it
// spends a block cipher call. ok is false if id is not laid out as the
// package's IDs are (wrong length for its first octet, server ID length out
// of range, or config rotation 7) or as legacy IDs are.
func Parse(id []byte) (f Fields, ok bool) {
	if len(id) == LegacyLen && id[0] == LegacyFirst {
		return Fields{ServerID: id[1:3], Gen: binary.BigEndian.Uint16(id[1:]), Legacy: true}, true
	}
	if len(id) < MinLen || len(id) > MaxLen {
		return Fields{}, false
	}
	rot, n := id[0]>>5, int(id[0]&0x1f)
	if rot == Unroutable || n != len(id)-1 {
		return Fields{}, false
	}
	s := n - NonceLen
	nonce := id[1+s:]
	return Fields{
		Rotation: rot,
		ServerID: id[1 : 1+s],
		Gen:      binary.BigEndian.Uint16(nonce[genOff:]),
		Socket:   nonce[socketOff],
	}, true
}

// Codec issues and verifies the IDs of one process line, which shares the
// key across its generations.
type Codec struct {
	block cipher.Block
}

// NewCodec returns the codec of key.
func NewCodec(key [KeyLen]byte) *Codec {
	b, err := aes.NewCipher(key[:])
	if err != nil { // impossible: the key has a valid size
		panic(err)
	}
	return &Codec{block: b}
}

// check computes the check of an ID whose octets before the check are set.
func (c *Codec) check(id []byte) [CheckLen]byte {
	var in, out [aes.BlockSize]byte
	copy(in[:], id[:len(id)-CheckLen])
	c.block.Encrypt(out[:], in[:])
	return [CheckLen]byte(out[:CheckLen])
}

// Verify reports whether id is laid out as the package's IDs and its check
// is right, that is, whether a codec of the same key issued it.
func (c *Codec) Verify(id []byte) (Fields, bool) {
	f, ok := Parse(id)
	if !ok || c.check(id) != [CheckLen]byte(id[len(id)-CheckLen:]) {
		return Fields{}, false
	}
	return f, true
}

// Append appends a new ID of cfg for the socket of generation gen, with
// random octets from rand, and returns the extended buffer.
func (c *Codec) Append(dst []byte, cfg Config, gen uint16, socket uint8, rand io.Reader) ([]byte, error) {
	if err := cfg.Validate(); err != nil {
		return dst, err
	}
	var nonce [NonceLen]byte
	binary.BigEndian.PutUint16(nonce[genOff:], gen)
	nonce[socketOff] = socket
	if _, err := io.ReadFull(rand, nonce[randOff:checkOff]); err != nil {
		return dst, err
	}
	start := len(dst)
	dst, err := AppendPlaintext(dst, cfg.Rotation, cfg.ServerID, nonce[:])
	if err != nil {
		return dst, err
	}
	id := dst[start:]
	check := c.check(id)
	copy(id[len(id)-CheckLen:], check[:])
	return dst, nil
}

// QUIC-LB's bounds on a plaintext ID (draft-ietf-quic-load-balancers-21,
// 3 and 5.1): a nonce of at least 4 octets, and server ID and nonce
// together at most 19.
const (
	MinPlaintextNonceLen = 4
	maxPlaintextBody     = 19
)

// ErrPlaintextLen reports a server ID and nonce that QUIC-LB's plaintext
// layout cannot carry.
var ErrPlaintextLen = errors.New("QUIC-LB plaintext ID: server ID of 1-15 octets and nonce of 4 or more, 19 in all")

// AppendPlaintext appends the QUIC-LB plaintext connection ID of a config
// rotation, a server ID and a nonce, with the length self-encoded in the
// first octet, as draft-ietf-quic-load-balancers-21 (5.1) has it.
func AppendPlaintext(dst []byte, rotation uint8, serverID, nonce []byte) ([]byte, error) {
	if rotation >= Unroutable {
		return dst, &ConfigError{Rotation: rotation, ServerIDLen: len(serverID), Err: ErrRotation}
	}
	s, n := len(serverID), len(nonce)
	if s < 1 || s > 15 || n < MinPlaintextNonceLen || s+n > maxPlaintextBody {
		return dst, ErrPlaintextLen
	}
	dst = append(dst, rotation<<5|byte(s+n))
	dst = append(dst, serverID...)
	return append(dst, nonce...), nil
}

// DecodePlaintext splits id as a QUIC-LB load balancer in plaintext mode
// does that is configured with server ID length serverIDLen: the config
// rotation from the first octet's top bits, the server ID from the octets
// after it, the rest as the nonce. ok is false for the unroutable config
// rotation and for an ID too short to hold the server ID and a nonce. A
// load balancer does not rely on the length bits (a server may fill them
// with random bits), so neither does this.
func DecodePlaintext(id []byte, serverIDLen int) (rotation uint8, serverID, nonce []byte, ok bool) {
	if len(id) == 0 || serverIDLen < 1 || len(id) < 1+serverIDLen+MinPlaintextNonceLen {
		return 0, nil, nil, false
	}
	rotation = id[0] >> 5
	if rotation == Unroutable {
		return 0, nil, nil, false
	}
	return rotation, id[1 : 1+serverIDLen], id[1+serverIDLen:], true
}
