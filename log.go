package udppool

import "log/slog"

// WithLogger makes the pool log what an operator wants to know about its
// sockets through l. Nothing is logged on the paths of datagrams or of
// acquiring a held socket. Without this option the pool is silent.
//
// Every record's message starts with "udppool: " and carries the socket's
// key as the attribute "key" (its network and address, as Key.String
// gives it). The levels, and what each record adds:
//
//   - Debug: the life of a socket, which a busy server repeats often:
//     "socket bound" (local: the address the kernel gave) and "socket
//     closed".
//   - Info: the reload cycle of QUIC listeners, a few records per reload,
//     each with the listener's epoch as "epoch" (see ListenerStats.Epoch;
//     the process's generation is the Upgrader's, a different count):
//     "listener epoch opened" (protocols), "listener epoch retired" (conns
//     still open), "listener epoch drained", "listener epoch drain ended"
//     (conns, ended_by_themselves, ended_by_goaway, ended_by_deadline);
//     and "lingering socket closed" when another socket joins its
//     reuseport group.
//   - Warn: something a peer or the program did that the pool survived:
//     the first send error of each kind on a socket ("send failed",
//     error; later ones are only counted in Stats), a handle
//     garbage-collected without Close ("handle garbage-collected without
//     Close; released", kind, site), a bind refused because of a foreign
//     socket ("bind refused", error).
//   - Error: a socket or transport lost, which the next acquire replaces:
//     "socket dead" (cause) and "shared QUIC transport failed" (cause).
//
// So a server logs at Info to follow its reloads, and at Warn to hear only
// of trouble.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.log = l
		}
	}
}

var discardLogger = slog.New(slog.DiscardHandler)

func keyAttr(k Key) slog.Attr { return slog.String("key", k.String()) }

func epochAttr(epoch uint64) slog.Attr { return slog.Uint64("epoch", epoch) }
