package udppool

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
)

// ownTickets returns conf, or a copy of it, that encrypts session tickets
// with key unless conf has keys of its own.
//
// Without keys of its own, a configuration returned by GetConfigForClient
// uses those of the configuration that asked, here the one of the shared
// transport: a client could then resume, on the listener of a reload, a
// session made with the previous listener's certificate, and a resumed
// session keeps the certificates of the handshake that made it. A reload
// that replaces a certificate must end its connections with its drain, so
// each listener's tickets are its own. An application that sets keys
// itself (SessionTicketKey or SetSessionTicketKeys) keeps them, and with
// them resumption across listeners.
func ownTickets(conf *tls.Config, key *[32]byte) *tls.Config {
	// A zero key, or one that crypto/tls made itself when the
	// configuration was first used (marked with this prefix), means that
	// no key was set.
	if k := conf.SessionTicketKey; k != [32]byte{} && !bytes.HasPrefix(k[:], ticketKeyMark) {
		return conf
	}
	// crypto/tls takes SessionTicketKey as the only key unless keys were
	// set with SetSessionTicketKeys, which then win.
	conf = conf.Clone()
	conf.SessionTicketKey = *key
	return conf
}

var ticketKeyMark = []byte("DEPRECATED")

// newTicketKey returns a random session ticket key for a listener.
func newTicketKey() *[32]byte {
	key := new([32]byte)
	rand.Read(key[:])
	if bytes.HasPrefix(key[:], ticketKeyMark) {
		key[0] ^= 0xff // never mistaken for one crypto/tls made
	}
	return key
}
