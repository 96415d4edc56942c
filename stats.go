package udppool

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// String formats s on one line, as key=value pairs in the manner of
// log/slog's text handler, for logs and a quick look at Pool.Stats:
//
//	udp4 127.0.0.1:443 refs=2 age=1m3.2s epoch=2 conns_refused=0 listeners=[...] send_errors={invalid argument:1}
//
// Fields that are zero and say nothing (no listeners, no send errors, not
// dead) are left out. The format is for people; programs read the fields.
func (s SocketStats) String() string {
	var b strings.Builder
	b.WriteString(s.Key.String())
	if s.LocalAddr != nil && s.LocalAddr.AddrPort() != s.Key.Addr {
		fmt.Fprintf(&b, " local=%v", s.LocalAddr)
	}
	fmt.Fprintf(&b, " refs=%d age=%v", s.Refs, s.Age.Round(time.Millisecond))
	if s.Dead != nil {
		fmt.Fprintf(&b, " dead=%q", s.Dead.Error())
	}
	if len(s.Listeners) > 0 || s.Epoch > 0 || s.ConnsRefused > 0 {
		fmt.Fprintf(&b, " epoch=%d conns_refused=%d listeners=[", s.Epoch, s.ConnsRefused)
		for i, l := range s.Listeners {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteByte('{')
			b.WriteString(l.String())
			b.WriteByte('}')
		}
		b.WriteByte(']')
	}
	if len(s.SendErrors) > 0 {
		b.WriteString(" send_errors={")
		for i, kind := range slices.Sorted(maps.Keys(s.SendErrors)) {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%s:%d", kind, s.SendErrors[kind])
		}
		b.WriteByte('}')
	}
	return b.String()
}

// String formats s on one line, as key=value pairs:
//
//	epoch=2 accepting conns=3 accepted=40 protocols=[h3] ended_by_themselves=37 ended_by_goaway=0 ended_by_deadline=0
//
// "accepting" becomes "draining" once the listener is closed.
func (s ListenerStats) String() string {
	state := "accepting"
	if !s.Accepting {
		state = "draining"
	}
	return fmt.Sprintf("epoch=%d %s conns=%d accepted=%d protocols=%v ended_by_themselves=%d ended_by_goaway=%d ended_by_deadline=%d",
		s.Epoch, state, s.Conns, s.Accepted, s.Protocols, s.EndedByThemselves, s.EndedByGoAway, s.EndedByDeadline)
}

// String formats s on one line, as key=value pairs:
//
//	epoch=1 conns=5 ended_by_themselves=2 ended_by_goaway=3 ended_by_deadline=0
func (s DrainStats) String() string {
	return fmt.Sprintf("epoch=%d conns=%d ended_by_themselves=%d ended_by_goaway=%d ended_by_deadline=%d",
		s.Epoch, s.Conns, s.EndedByThemselves, s.EndedByGoAway, s.EndedByDeadline)
}
