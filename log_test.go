package udppool

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
)

// syncBuffer is a bytes.Buffer safe for the pool's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestLogger: the pool logs sockets bound and closed, listener generations
// opened, retired and drained, and the first send error of each kind, with
// the key and generation as attributes.
func TestLogger(t *testing.T) {
	needIPv4(t)
	var buf syncBuffer
	p := newPool(t, WithLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	c := listen(t, p, "udp4", "127.0.0.1:0")
	key := c.Key().String()
	for range 3 {
		c.WriteTo([]byte("x"), &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}) // port 0: EINVAL
	}
	c.Close()
	tr, err := p.Transport(context.Background(), "udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tr.Listen(&tls.Config{NextProtos: []string{"x"}}, nil) // no handshake here
	if err != nil {
		t.Fatal(err)
	}
	trKey := tr.Keys()[0].String()
	ln.Close()
	tr.Close()

	out := buf.String()
	for _, want := range []string{
		`msg="udppool: socket bound" key="` + key + `"`,
		`msg="udppool: send failed; the socket stays`,
		`msg="udppool: socket closed" key="` + key + `"`,
		`msg="udppool: listener generation opened" key="` + trKey + `" generation=1`,
		`msg="udppool: listener generation retired" key="` + trKey + `" generation=1 conns=0`,
		`msg="udppool: listener generation drained" key="` + trKey + `" generation=1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s\n%s", want, out)
		}
	}
	if n := strings.Count(out, "send failed"); n != 1 {
		t.Errorf("%d log lines for three send errors of one kind, want 1", n)
	}
}
