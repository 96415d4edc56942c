// Package systemd speaks the two small protocols through which systemd (and
// other service managers that copy it) talks to a service: readiness
// notification (sd_notify(3)) and socket activation (sd_listen_fds(3)).
//
// Both are documented wire formats of a few lines each, so they are written
// here rather than imported: a notification is one datagram of
// newline-separated VAR=value assignments sent to the Unix socket named by
// NOTIFY_SOCKET (a name starting with '@' is in the abstract namespace),
// and activated sockets are descriptors from 3 on, counted by LISTEN_FDS,
// meant for the process named by LISTEN_PID and named by LISTEN_FDNAMES.
//
// The package keeps no state: callers decide when to read the environment
// and what to do with what it holds.
package systemd
