package udppool

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"slices"
)

// Session tickets and reloads.
//
// A resumed TLS session keeps the certificates of the handshake that made
// it: the server presents none, and the client certificate is not asked
// for again. Without care, a client could resume on the listener of a
// reload a session made with the previous listener's certificate (a
// configuration that GetConfigForClient returns without ticket keys of its
// own uses those of the shared transport's configuration, common to every
// epoch), and a connection would use the replaced certificate after
// the drain that was to end them. So every session a listener issues is
// marked with its TLS identity (see ticketTag), and a listener resumes
// only sessions bearing its own mark. Sessions are encrypted with the
// keys of the listener's configuration: its own, rotated by crypto/tls,
// unless the application set keys.

// bindSessions makes conf, a copy that the caller owns, mark the session
// tickets it issues with tag and resume only tickets marked so, around any
// WrapSession and UnwrapSession it has.
func bindSessions(conf *tls.Config, tag []byte) {
	wrap, unwrap := conf.WrapSession, conf.UnwrapSession
	conf.WrapSession = func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		ss.Extra = append(ss.Extra, tag)
		if wrap != nil {
			return wrap(cs, ss)
		}
		return conf.EncryptTicket(cs, ss)
	}
	conf.UnwrapSession = func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
		var ss *tls.SessionState
		var err error
		if unwrap != nil {
			ss, err = unwrap(identity, cs)
		} else {
			ss, err = conf.DecryptTicket(identity, cs)
		}
		if err != nil || ss == nil {
			return ss, err
		}
		if !slices.ContainsFunc(ss.Extra, func(e []byte) bool { return bytes.Equal(e, tag) }) {
			return nil, nil // made with another identity: a full handshake
		}
		return ss, nil
	}
}

// ticketTagPrefix starts the marks of bindSessions among a session's
// extra data.
var ticketTagPrefix = []byte("udppool identity ")

// ticketTag returns the mark of the sessions made with conf. A
// configuration whose identity is fixed (its certificates, and no client
// CAs or callbacks that decide per handshake) is marked by a hash of its
// certificates and client authentication mode: sessions then resume across
// listeners, and processes sharing ticket keys, that present the same
// certificates, and never into a configuration with others. Any other is
// marked by random, a mark of its own.
func ticketTag(conf *tls.Config, random []byte) []byte {
	if conf.GetCertificate != nil || conf.GetConfigForClient != nil || conf.ClientCAs != nil ||
		conf.VerifyPeerCertificate != nil || conf.VerifyConnection != nil || len(conf.Certificates) == 0 {
		return random
	}
	h := sha256.New()
	for _, c := range conf.Certificates {
		binary.Write(h, binary.BigEndian, uint32(len(c.Certificate)))
		for _, der := range c.Certificate {
			binary.Write(h, binary.BigEndian, uint32(len(der)))
			h.Write(der)
		}
	}
	binary.Write(h, binary.BigEndian, int32(conf.ClientAuth))
	return append(slices.Clip(ticketTagPrefix), h.Sum(nil)[:16]...)
}

// randomTicketTag returns a mark of a listener's own.
func randomTicketTag() []byte {
	tag := make([]byte, len(ticketTagPrefix)+16)
	copy(tag, ticketTagPrefix)
	rand.Read(tag[len(ticketTagPrefix):])
	return tag
}

// boundConfig returns a copy of conf, a configuration that a listener's
// GetConfigForClient returned, bound as bindSessions does, with the
// listener's own mark if conf's identity is not fixed.
func boundConfig(conf *tls.Config, listenerTag []byte) *tls.Config {
	// Make conf's own ticket keys before copying it, so that every copy
	// of a configuration returned more than once shares them.
	conf.DecryptTicket(nil, tls.ConnectionState{})
	c := conf.Clone()
	bindSessions(c, ticketTag(conf, listenerTag))
	return c
}
