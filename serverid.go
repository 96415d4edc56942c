package udppool

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/udppool/udppool/internal/quiclb"
)

// Errors of NewServerID, wrapped in a *ServerIDError.
var (
	// ErrServerIDLength reports a server ID shorter than 1 octet or longer
	// than MaxServerIDLen.
	ErrServerIDLength = errors.New("server ID length out of range")
	// ErrConfigRotation reports a config rotation above 6 (QUIC-LB
	// reserves 7 for IDs that a load balancer cannot route).
	ErrConfigRotation = errors.New("config rotation out of range")
)

// MaxServerIDLen is the longest server ID that connection IDs carry: with
// the 12 octets that follow it (generation, socket, random, check) the ID
// is then 20 octets, QUIC's longest.
const MaxServerIDLen = quiclb.MaxServerIDLen

// ServerIDError reports a QUIC-LB configuration that NewServerID refuses.
type ServerIDError struct {
	ConfigRotation uint8
	ServerID       []byte
	Err            error // ErrServerIDLength or ErrConfigRotation
}

func (e *ServerIDError) Error() string {
	if errors.Is(e.Err, ErrConfigRotation) {
		return fmt.Sprintf("%sQUIC-LB config rotation %d: %v (0-6; 7 means unroutable)", prefix, e.ConfigRotation, e.Err)
	}
	if len(e.ServerID) == 0 {
		return fmt.Sprintf("%sempty QUIC-LB server ID: %v (1-%d octets)", prefix, e.Err, MaxServerIDLen)
	}
	return fmt.Sprintf("%sQUIC-LB server ID %x (%d octets): %v (1-%d)", prefix, e.ServerID, len(e.ServerID), e.Err, MaxServerIDLen)
}

func (e *ServerIDError) Unwrap() error { return e.Err }

// ServerID is a host's identity in a fleet behind a QUIC-LB load balancer
// (draft-ietf-quic-load-balancers-21, plaintext mode): a config rotation and
// a server ID, whose length is the configuration's server ID length. The
// zero ServerID is the default: the server ID is then the process
// generation, 2 octets big-endian, which routes nothing in a fleet but
// keeps IDs of the same layout.
//
// Connection IDs issued with a ServerID s are 13 + len(s.Bytes()) octets:
//
//	octet 0            config rotation << 5 | (12 + server ID length)
//	octets 1 .. s      server ID
//	octets s+1, s+2    generation, big-endian
//	octet  s+3         socket index
//	octets s+4 .. s+8  random
//	octets s+9 .. s+12 keyed check
//
// A QUIC-LB load balancer in plaintext mode, configured with the same
// config rotation and server ID length and the host's server ID, routes
// every such ID to the host; it needs no key and no nonce length.
type ServerID struct {
	cfg quiclb.Config
}

// NewServerID returns the ServerID of a QUIC-LB configuration: config
// rotation 0-6 and a server ID of 1 to MaxServerIDLen octets. Other values
// get a *ServerIDError.
func NewServerID(configRotation uint8, id []byte) (ServerID, error) {
	cfg := quiclb.Config{Rotation: configRotation, ServerID: bytes.Clone(id)}
	if err := cfg.Validate(); err != nil {
		e := &ServerIDError{ConfigRotation: configRotation, ServerID: cfg.ServerID, Err: ErrServerIDLength}
		if errors.Is(err, quiclb.ErrRotation) {
			e.Err = ErrConfigRotation
		}
		return ServerID{}, e
	}
	return ServerID{cfg: cfg}, nil
}

// ConfigRotation returns the config rotation, 0 for the zero ServerID.
func (s ServerID) ConfigRotation() uint8 { return s.cfg.Rotation }

// Bytes returns a copy of the server ID, nil for the zero ServerID.
func (s ServerID) Bytes() []byte { return bytes.Clone(s.cfg.ServerID) }

// String returns the server ID in hex and its config rotation, or
// "generation" for the zero ServerID.
func (s ServerID) String() string {
	if s.cfg.ServerID == nil {
		return "generation"
	}
	return fmt.Sprintf("%s (config rotation %d)", hex.EncodeToString(s.cfg.ServerID), s.cfg.Rotation)
}

// WithServerID makes the QUIC transports of the Upgrader's pools issue
// connection IDs that carry s, so that a fleet's QUIC-LB load balancer
// routes them to this host. Generations of one process line may differ in
// their ServerID (a host renumbered across an upgrade): each ID says its
// own layout in its first octet, and every generation and the kernel
// program read the others' IDs.
func WithServerID(s ServerID) UpgradeOption {
	return func(o *upgradeOptions) { o.serverID = s }
}
