// Package quiclb lays out the connection IDs that udppool's QUIC transports
// issue, and finds them in datagrams.
//
// The IDs follow the plaintext layout of QUIC-LB
// (draft-ietf-quic-load-balancers-21, section 3 and 5.1), so that a fleet's
// QUIC-LB load balancer routes them to a host by its server ID, and carry
// after the server ID what a host needs to route a datagram to one of its
// own sockets: the generation of the process that issued the ID, the index
// of the socket among those of that generation for one address, and a keyed
// check. Octet by octet, for a server ID of s octets (1 <= s <= 7):
//
//	octet 0            config rotation (top 3 bits, 0-6; 7 is QUIC-LB's
//	                   "unroutable") | length (low 5 bits) = 12 + s, the
//	                   number of octets after this one
//	octets 1 .. s      server ID (the fleet's; by default the generation,
//	                   2 octets, big-endian)
//	octets s+1, s+2    generation, big-endian
//	octet  s+3         socket index
//	octets s+4 .. s+8  random
//	octets s+9 .. s+12 check: the first 4 octets of AES-128 under the
//	                   process line's key of octets 0 .. s+8, padded with
//	                   zeros to 16 octets
//
// An ID is 13 + s octets long: 15 by default, 20 (QUIC's maximum) with a
// 7-octet server ID. To a load balancer, octets s+1 .. s+12 are the nonce of
// 12 octets, which QUIC-LB leaves to the server. A QUIC-LB load balancer in
// plaintext mode, configured with the same config rotation and server ID
// length, decodes the server ID from every ID; it needs nothing else (no
// key, no nonce length: plaintext mode reads only the first octet and the
// server ID).
//
// The nonce has a fixed length so that the length in the first octet says
// where the generation and the socket index are, whatever the server ID's
// length: generations configured with different server IDs (a fleet that
// renumbers a host across an upgrade) still read each other's IDs, and the
// kernel's reuseport program (package steer) finds the fields by arithmetic
// on the first octet, without a configuration of its own.
//
// IDs of the layout that udppool issued before (12 octets: 0x0b, the
// generation, 5 random octets, the check) parse as legacy IDs of socket 0,
// so that a successor of this version keeps the connections of a
// predecessor of that one. Their length (12) is below the shortest ID of
// the present layout (14), so the two cannot be confused.
//
// The check lets a process tell an ID that it (or another generation of its
// process line) issued from a client's random Initial destination ID that
// merely looks like one; the kernel cannot compute it, so a look-alike may
// reach the wrong generation, which checks it and hands the datagram on.
// With 32 bits, one random look-alike in 2^32 passes. The server ID and the
// generation are in plaintext, as QUIC-LB's plaintext mode has them: an
// observer can tell which host, generation and socket serve a connection,
// nothing more; the random octets keep IDs unlinkable otherwise.
package quiclb
