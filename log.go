package udppool

import "log/slog"

// WithLogger makes the pool log what an operator wants to know about its
// sockets through l: sockets bound and closed, listener generations opened,
// retired and drained, dead sockets, failed transports, foreign sockets,
// leaked handles, and the first send error of each kind on a socket (all of
// them are counted in Stats). Messages carry the socket's key, and the
// generation where there is one, as attributes. Nothing is logged on the
// paths of datagrams or of acquiring a held socket. Without this option
// the pool is silent.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.log = l
		}
	}
}

var discardLogger = slog.New(slog.DiscardHandler)

func keyAttr(k Key) slog.Attr { return slog.String("key", k.String()) }

func genAttr(gen uint64) slog.Attr { return slog.Uint64("generation", gen) }
