package udppool

import (
	"crypto/rand"
	"encoding/binary"

	"github.com/quic-go/quic-go"

	"github.com/udppool/udppool/internal/quiclb"
)

// Connection IDs of a pool that takes part in upgrades follow the plaintext
// layout of QUIC-LB (draft-ietf-quic-load-balancers-21), with the fleet's
// server ID (WithServerID; by default the generation) and, in the nonce,
// the generation, the socket index and a keyed check: see
// internal/quiclb. The reuseport program (internal/steer) and a QUIC-LB
// load balancer in front of many hosts both route on them; the check lets
// a process tell an ID that its process line issued from a client's random
// Initial destination ID that merely looks like one, which the kernel
// program cannot, so that a look-alike never costs a handshake.

// cidKey is the secret of the connection ID checks, shared by every
// generation of a process line (passed on at each upgrade).
type cidKey [quiclb.KeyLen]byte

// cidCodec issues and recognizes the connection IDs of the generations.
type cidCodec struct {
	*quiclb.Codec
}

func newCIDCodec(k cidKey) *cidCodec {
	return &cidCodec{quiclb.NewCodec(k)}
}

// generation returns the generation encoded in id, and whether id is an ID
// that some generation of this process line issued.
func (c *cidCodec) generation(id []byte) (uint16, bool) {
	f, ok := c.Verify(id)
	return f.Gen, ok
}

// cidGenerator is the quic.ConnectionIDGenerator of one socket of one
// generation.
type cidGenerator struct {
	codec  *cidCodec
	cfg    quiclb.Config
	gen    uint16
	socket uint8
}

var _ quic.ConnectionIDGenerator = cidGenerator{}

// newCIDGenerator returns the generator of socket of generation gen. A
// zero server ID (no WithServerID) is the generation, as IDs had it before
// a fleet's could be set.
func newCIDGenerator(c *cidCodec, sid ServerID, gen uint16, socket uint8) cidGenerator {
	cfg := sid.cfg
	if cfg.ServerID == nil {
		cfg.ServerID = binary.BigEndian.AppendUint16(nil, gen)
	}
	return cidGenerator{codec: c, cfg: cfg, gen: gen, socket: socket}
}

func (g cidGenerator) GenerateConnectionID() (quic.ConnectionID, error) {
	var buf [quiclb.MaxLen]byte
	id, err := g.codec.Append(buf[:0], g.cfg, g.gen, g.socket, rand.Reader)
	if err != nil {
		return quic.ConnectionID{}, err
	}
	return quic.ConnectionIDFromBytes(id), nil
}

func (g cidGenerator) ConnectionIDLen() int { return g.cfg.Len() }
