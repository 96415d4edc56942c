// Package fdpass sends one message with open descriptors over a connected
// Unix stream socket, as a process hands its sockets to the process that
// succeeds it: the message is length-prefixed (4 octets, big-endian), and
// the descriptors travel as SCM_RIGHTS with its first octets.
//
// The receiver bounds both the message (MaxSize) and the number of
// descriptors, and owns every descriptor that arrives: on any error
// Receive closes them all, so that a malformed or truncated message
// leaks nothing into the receiving process.
//
// The package needs Unix; elsewhere it is empty.
package fdpass
