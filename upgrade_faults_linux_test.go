package udppool

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
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

// steeredSuccessor returns an Upgrader in a successor's state before
// Ready: generation 2 behind a predecessor of generation 1, with two
// sockets of its own joined into (stand-in) groups of the predecessor.
// attachProgram records each socket's last program and fails where fail
// says so, for the test's duration.
func steeredSuccessor(t *testing.T, fail func(k Key, prog []bpf.Instruction) bool, opts ...UpgradeOption) (*Upgrader, map[Key][]bpf.Instruction, *sync.Mutex) {
	t.Helper()
	u := newTestUpgrader(t, opts...)
	ctrl, ctrlOther, err := socketPair(unix.SOCK_STREAM)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctrlOther.Close() })
	fwd, fwdOther, err := socketPair(unix.SOCK_DGRAM)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fwdOther.Close() })
	keys := make(map[syscall.RawConn]Key)
	u.mu.Lock()
	u.gen, u.at = 2, stateJoining
	u.pred = &peer{gen: 1, ctrl: ctrl, fwd: fwd, gone: make(chan struct{})}
	u.predGone = make(chan struct{})
	for range 2 {
		k := Key{Network: "udp4", Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t))}
		s, err := bind(context.Background(), k, bindOpts{reuse: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.conn.Close() })
		u.socks[k], u.joined[k], u.predKeys[k] = s, true, true
		keys[s.raw] = k
	}
	u.publish()
	u.mu.Unlock()
	var mu sync.Mutex
	last := make(map[Key][]bpf.Instruction)
	prev := attachProgram
	attachProgram = func(raw syscall.RawConn, prog []bpf.Instruction) error {
		k := keys[raw]
		if fail(k, prog) {
			return errors.New("injected steering failure")
		}
		mu.Lock()
		last[k] = prog
		mu.Unlock()
		return prev(raw, prog)
	}
	t.Cleanup(func() { attachProgram = prev })
	return u, last, &mu
}

// TestUpgradeReadyRollsBackSteering: a Ready whose steering fails on one
// socket must put every group back to the predecessor's program, not
// leave the others steering handshakes to a process that is not ready.
func TestUpgradeReadyRollsBackSteering(t *testing.T) {
	ready := steerProgram([]uint16{1, 2}, 1, false)
	var victim Key
	u, last, mu := steeredSuccessor(t, func(k Key, prog []bpf.Instruction) bool {
		if victim == (Key{}) && reflect.DeepEqual(prog, ready) {
			victim = k // the first socket that Ready steers fails
			return true
		}
		return k == victim && reflect.DeepEqual(prog, ready)
	})
	if err := u.Ready(); err == nil {
		t.Fatal("Ready succeeded although steering failed")
	}
	if u.state.Load().accepting {
		t.Error("accepting after a failed Ready")
	}
	mu.Lock()
	defer mu.Unlock()
	for k := range u.socks {
		if reflect.DeepEqual(last[k], ready) {
			t.Errorf("%v keeps the ready program after Ready failed", k)
		}
	}
}

// TestUpgradePredecessorGoneSteeringError: steering errors when the
// predecessor leaves are logged, not ignored.
func TestUpgradePredecessorGoneSteeringError(t *testing.T) {
	var logs syncBuffer
	u, _, _ := steeredSuccessor(t, func(Key, []bpf.Instruction) bool { return true },
		WithUpgradeLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	u.mu.Lock()
	u.predecessorGone()
	u.mu.Unlock()
	if !strings.Contains(logs.String(), "injected steering failure") {
		t.Errorf("steering error not logged; log:\n%s", logs.String())
	}
}

// sendTestHello sends a hello naming the sockets of fds, with fds.
func sendTestHello(t *testing.T, c *net.UnixConn, body []byte, fds []int) {
	t.Helper()
	frame := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	frame = append(frame, body...)
	if _, _, err := c.WriteMsgUnix(frame, unix.UnixRights(fds...), nil); err != nil {
		t.Fatal(err)
	}
}

// TestUpgradeReadHelloDescriptors: a hello whose descriptors were
// truncated, or that fails to parse, is refused, and no descriptor that
// came with it stays open.
func TestUpgradeReadHelloDescriptors(t *testing.T) {
	for _, c := range []struct {
		name   string
		body   string
		maxFDs int
		want   string
	}{
		{"truncated", `{"Gen":2,"Sockets":[{"Network":"udp4","Addr":"127.0.0.1:1"}]}`, 1, "truncated"},
		{"bad json", `{"Gen":`, 8, "unexpected end"},
		{"too few sockets", `{"Gen":2,"Sockets":[]}`, 8, "descriptors came"},
	} {
		t.Run(c.name, func(t *testing.T) {
			a, bf, err := socketPair(unix.SOCK_STREAM)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			b, err := fileUnixConn(bf)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			before := openFDs(t)
			var fds []int
			for range 3 {
				fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				fds = append(fds, fd)
			}
			sendTestHello(t, a, []byte(c.body), fds)
			for _, fd := range fds {
				unix.Close(fd)
			}
			_, files, err := readHelloFDs(b, c.maxFDs)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("readHello: %v, want an error with %q", err, c.want)
			}
			for _, f := range files {
				f.Close()
			}
			if after := openFDs(t); after != before {
				t.Errorf("descriptors: %d before, %d after", before, after)
			}
		})
	}
}
