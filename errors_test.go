package udppool

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// TestErrorPrefixOnce: an *Error wrapping another error of this package
// names the package once, and errors.Is still finds every sentinel.
func TestErrorPrefixOnce(t *testing.T) {
	k := Key{Network: "udp", Addr: netip.MustParseAddrPort("[::]:443")}
	foreign := &ForeignError{Key: k, Found: []ForeignSocket{{Network: "udp6", Local: netip.MustParseAddrPort("[::]:443"), Inode: 7, UID: 1000}}}
	cases := []struct {
		err  error
		want error
		text string
	}{
		{opError("listen", "udp", ":443", k, foreign), ErrForeignSocket,
			`udppool: listen udp ":443" (socket udp [::]:443): foreign socket shares the port of udp [::]:443: udp6 [::]:443 (inode 7, uid 1000)`},
		{opError("transport", "udp", ":443", k, &Error{Op: "close", Err: ErrPoolClosed}), ErrPoolClosed,
			`udppool: transport udp ":443" (socket udp [::]:443): close: pool closed`},
		{opError("listen", "udp", ":443", k, errRefCount), errRefCount,
			`udppool: listen udp ":443" (socket udp [::]:443): reference released twice`},
		{foreign, ErrForeignSocket,
			`udppool: foreign socket shares the port of udp [::]:443: udp6 [::]:443 (inode 7, uid 1000)`},
	}
	for _, c := range cases {
		got := c.err.Error()
		if n := strings.Count(got, "udppool:"); n != 1 {
			t.Errorf("%q names the package %d times", got, n)
		}
		if got != c.text {
			t.Errorf("error text\n got %s\nwant %s", got, c.text)
		}
		if !errors.Is(c.err, c.want) {
			t.Errorf("%q does not wrap %v", got, c.want)
		}
	}
}
