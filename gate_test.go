package udppool

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestGateStress runs readers on several handles of one socket while other
// handles' deadlines keep expiring and one handle is closed midway. It checks
// that no datagram is lost or read twice, that a handle without a deadline
// never sees an error, and that the socket deadline is back to none at the
// end.
func TestGateStress(t *testing.T) {
	needIPv4(t)
	p := newPool(t)
	steady := listen(t, p, "udp4", "127.0.0.1:0")
	timed := listen(t, p, "udp4", steady.LocalAddr().String())
	closing := listen(t, p, "udp4", steady.LocalAddr().String())
	steady.SetReadBuffer(4 << 20)

	const total = 3000
	var seen [total]atomic.Int32
	var received, timeouts atomic.Int32
	stop := make(chan struct{})
	var wg sync.WaitGroup
	reader := func(c *Conn, check func(error) bool) {
		defer wg.Done()
		buf := make([]byte, 16)
		for {
			n, _, err := c.ReadFrom(buf)
			if err == nil && n == 4 {
				seen[binary.BigEndian.Uint32(buf)].Add(1)
				received.Add(1)
				continue
			}
			if !check(err) {
				return
			}
			select {
			case <-stop:
				return
			default:
			}
		}
	}
	var errMu sync.Mutex
	var errs []error
	fail := func(err error) {
		errMu.Lock()
		errs = append(errs, err)
		errMu.Unlock()
	}
	// The steady handle has no deadline until the end; any error before
	// stop is a bug.
	for range 2 {
		wg.Add(1)
		go reader(steady, func(err error) bool {
			select {
			case <-stop:
				return false
			default:
				fail(err)
				return false
			}
		})
	}
	for range 2 {
		wg.Add(1)
		go reader(timed, func(err error) bool {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				fail(err)
				return false
			}
			timeouts.Add(1)
			timed.SetReadDeadline(time.Now().Add(time.Duration(rand.IntN(500)) * time.Microsecond))
			return true
		})
	}
	for range 2 {
		wg.Add(1)
		go reader(closing, func(err error) bool {
			if !errors.Is(err, net.ErrClosed) {
				fail(err)
			}
			return false
		})
	}
	timed.SetReadDeadline(time.Now().Add(time.Millisecond))

	cli := sender(t, false)
	dst := steady.LocalAddr()
	limit := time.Now().Add(testTimeout)
	var msg [4]byte
	for i := range total {
		if i == total/2 {
			closing.Close()
		}
		// Keep at most 64 datagrams in flight so the socket buffer never
		// overflows: loss must come only from a bug.
		for int(received.Load()) < i-64 && time.Now().Before(limit) {
			time.Sleep(50 * time.Microsecond)
		}
		binary.BigEndian.PutUint32(msg[:], uint32(i))
		if _, err := cli.WriteTo(msg[:], dst); err != nil {
			t.Fatal(err)
		}
	}
	for received.Load() < total && time.Now().Before(limit) {
		time.Sleep(time.Millisecond)
	}
	close(stop)
	steady.SetReadDeadline(time.Now())
	timed.SetReadDeadline(time.Now())
	wg.Wait()
	for _, err := range errs {
		t.Error(err)
	}
	if timeouts.Load() == 0 {
		t.Error("the timed handle never timed out: the test did not exercise deadlines")
	}
	for i := range seen {
		if n := seen[i].Load(); n != 1 {
			t.Errorf("datagram %d received %d times", i, n)
		}
	}
	timed.Close()
	g := &steady.entry.sock.gates[dirRead]
	steady.SetReadDeadline(time.Time{})
	g.mu.Lock()
	cur, watched := g.cur, len(g.watched)
	g.mu.Unlock()
	if !cur.IsZero() || watched != 0 {
		t.Errorf("socket deadline %v with %d watched handles after all readers left", cur, watched)
	}
	steady.Close()
}
