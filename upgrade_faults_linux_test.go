package udppool

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// newTestUpgrader returns a first-generation Upgrader that is not wired to
// any other process, closed at cleanup. NewUpgrader itself may be called
// once per process, so the tests build theirs directly.
func newTestUpgrader(t testing.TB, opts ...UpgradeOption) *Upgrader {
	t.Helper()
	u, err := newUpgrader("", false, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Stop() })
	return u
}

// settleWithin runs settle bounded by max and fails the test if it has
// not returned by testTimeout.
func settleWithin(t *testing.T, u *Upgrader, max time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		u.settleFor(max)
	}()
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatalf("settle bounded by %v still waits after %v", max, testTimeout)
	}
}

// TestUpgradeSettleBounded settles with transports that no quic-go server
// reads (one never listened on, one whose listener closed) beside one that
// serves: settle must return by its one deadline, and a transport that is
// closed must be forgotten.
func TestUpgradeSettleBounded(t *testing.T) {
	u := newTestUpgrader(t)
	p := newPool(t, WithUpgrader(u))
	serve := func(tr *Transport) *Listener {
		ln, err := tr.Listen(&tls.Config{Certificates: []tls.Certificate{testServerCert(t)}, NextProtos: []string{testALPN}}, &quic.Config{})
		if err != nil {
			t.Fatal(err)
		}
		return ln
	}
	var trs []*Transport
	for i := range 3 {
		tr, err := p.Transport(context.Background(), "udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		trs = append(trs, tr)
		switch i {
		case 1:
			serve(tr).Close()
		case 2:
			ln := serve(tr)
			t.Cleanup(func() { ln.Close() })
		}
	}
	t.Cleanup(func() {
		for _, tr := range trs {
			tr.Close()
		}
	})
	settleWithin(t, u, 300*time.Millisecond)

	// Closed transports are forgotten.
	for i := range 20 {
		tr, err := p.Transport(context.Background(), "udp4", fmt.Sprintf("127.0.0.%d:0", i+2))
		if err != nil {
			t.Fatal(err)
		}
		tr.Close()
	}
	settleWithin(t, u, 300*time.Millisecond)
	u.connsMu.Lock()
	n := len(u.conns)
	u.connsMu.Unlock()
	if n != len(trs) {
		t.Errorf("upgrader holds %d transports, want the %d open ones", n, len(trs))
	}
}

func testServerCert(t testing.TB) tls.Certificate {
	t.Helper()
	cert, err := selfSigned()
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// TestNewUpgraderOnce: a second NewUpgrader in one process is refused.
func TestNewUpgraderOnce(t *testing.T) {
	if u, err := NewUpgrader(); err == nil {
		t.Cleanup(func() { u.Stop() })
	} else if !errors.Is(err, ErrUpgraderExists) {
		t.Fatal(err)
	}
	if u, err := NewUpgrader(); !errors.Is(err, ErrUpgraderExists) {
		if u != nil {
			u.Stop()
		}
		t.Fatalf("second NewUpgrader: %v, want ErrUpgraderExists", err)
	}
}
