package udppool_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/udppool/udppool"
)

// TestStatsString: the Stats types print on one readable line, not as
// Go's pointer-and-map dump: a pool's real snapshot (a plain socket and one
// with a listener), and a value with every field set, whose send errors
// print in a stable order.
func TestStatsString(t *testing.T) {
	needFamilies(t, v4)
	p := pool(t)
	c, err := p.ListenPacket(t.Context(), "udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tr := transport(t, p, "udp4", "127.0.0.1:0")
	ln, err := tr.Listen(certs().ServerConfig("echo"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	for _, st := range p.Stats() {
		s := st.String()
		if strings.Contains(s, "0x") || strings.Contains(s, "\n") || !strings.HasPrefix(s, st.Key.String()+" refs=1 age=") {
			t.Errorf("SocketStats.String() = %q", s)
		}
		want := "epoch=1 conns_refused=0 listeners=[{epoch=1 accepting conns=0 accepted=0 protocols=[echo] ended_by_themselves=0 ended_by_goaway=0 ended_by_deadline=0}]"
		if st.Key == tr.Keys()[0] != strings.Contains(s, want) {
			t.Errorf("SocketStats.String() = %q; listener part %q expected only on the transport's socket", s, want)
		}
	}

	full := udppool.SocketStats{
		Key:          udppool.Key{Network: "udp", Addr: netip.MustParseAddrPort("[::]:443")},
		LocalAddr:    &net.UDPAddr{IP: net.IPv6unspecified, Port: 443},
		Refs:         2,
		Age:          90*time.Second + 1234567*time.Nanosecond,
		Dead:         errors.New("socket dead"),
		SendErrors:   map[string]uint64{"message too long": 1, "invalid argument": 3},
		Listeners:    []udppool.ListenerStats{{Epoch: 1, Conns: 2, Accepted: 9, Protocols: []string{"h3"}, EndedByGoAway: 7}, {Epoch: 2, Accepting: true, Protocols: []string{"h3"}}},
		Epoch:        2,
		ConnsRefused: 4,
	}
	want := `udp [::]:443 refs=2 age=1m30.001s dead="socket dead" epoch=2 conns_refused=4 listeners=[` +
		`{epoch=1 draining conns=2 accepted=9 protocols=[h3] ended_by_themselves=0 ended_by_goaway=7 ended_by_deadline=0} ` +
		`{epoch=2 accepting conns=0 accepted=0 protocols=[h3] ended_by_themselves=0 ended_by_goaway=0 ended_by_deadline=0}] ` +
		`send_errors={invalid argument:3, message too long:1}`
	if got := fmt.Sprint(full); got != want {
		t.Errorf("fmt.Sprint(SocketStats) =\n%s\nwant\n%s", got, want)
	}
	ds := udppool.DrainStats{Epoch: 1, Conns: 5, EndedByThemselves: 2, EndedByGoAway: 3}
	if got, want := fmt.Sprint(ds), "epoch=1 conns=5 ended_by_themselves=2 ended_by_goaway=3 ended_by_deadline=0"; got != want {
		t.Errorf("fmt.Sprint(DrainStats) = %q, want %q", got, want)
	}
}
