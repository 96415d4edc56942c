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

// TestLogger: the pool logs sockets bound and closed, listener epochs
// opened, retired and drained, and the first send error of each kind, at
// the levels WithLogger documents, with the key and epoch as attributes
// ("epoch", never "generation", which names the process's count).
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
		// The levels are those WithLogger documents.
		`level=DEBUG msg="udppool: socket bound" key="` + key + `"`,
		`level=WARN msg="udppool: send failed; the socket stays`,
		`level=DEBUG msg="udppool: socket closed" key="` + key + `"`,
		`level=INFO msg="udppool: listener epoch opened" key="` + trKey + `" epoch=1`,
		`level=INFO msg="udppool: listener epoch retired" key="` + trKey + `" epoch=1 conns=0`,
		`level=INFO msg="udppool: listener epoch drained" key="` + trKey + `" epoch=1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s\n%s", want, out)
		}
	}
	if strings.Contains(out, "generation") {
		t.Errorf("the pool's records name a listener's epoch a generation:\n%s", out)
	}
	if n := strings.Count(out, "send failed"); n != 1 {
		t.Errorf("%d log lines for three send errors of one kind, want 1", n)
	}
}
