package udppooltest

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/udppool/udppool"
	"go.uber.org/goleak"
)

// NoLeaks checks, when the test's cleanups run, that nothing was leaked
// since NoLeaks was called:
//
//   - p holds no socket: p.Stats() is empty, so every handle, Transport and
//     Listener of p, and every connection dialled by p.Dial, has been
//     closed, and no released socket still lingers (with
//     udppool.WithLinger, use Pool instead: it tolerates lingering sockets
//     and closes the pool after its check). Like goleak, it checks again
//     for half a second before it reports, since a dialled connection
//     releases its socket a moment after it closed. p may be nil to check
//     only goroutines and descriptors.
//   - no goroutine started since the call is still running (go.uber.org/
//     goleak, ignoring the goroutines that existed at the call). goleak
//     retries for a while before it reports, so goroutines of quic-go that
//     end a moment after their connection closed do not count.
//   - on Linux, no file descriptor opened since the call is still open
//     (from /proc/self/fd; elsewhere this part is skipped). It is checked
//     after the goroutines, since a socket's descriptor is closed only once
//     no goroutine is blocked on it.
//
// Each kind of leak is reported with t.Errorf, naming the sockets,
// goroutines or descriptors.
//
// Cleanups run last-in first-out, so call NoLeaks first, before creating
// the resources it checks: its check then runs after their cleanups have
// released them. A resource created before NoLeaks and released by an
// earlier-registered cleanup would be reported as a leak of p. Close p
// after the check, not before: (*udppool.Pool).Close closes every socket
// whatever handles are open, so a pool closed before the check hides a
// forgotten handle. That is, register p's Close with t.Cleanup before
// calling NoLeaks, or let Pool make the pool: it calls NoLeaks and closes
// the pool in that order. (Pool, Loopback and QUICPair check the pools they
// create.)
//
// The goroutine and descriptor checks see the whole process: do not use
// NoLeaks in tests that run in parallel with others.
func NoLeaks(t testing.TB, p *udppool.Pool) {
	t.Helper()
	noLeaks(t, p, false)
}

// noLeaks registers the check of NoLeaks. With owned, the pool belongs to
// the check: sockets without references may linger, and the pool is closed
// after the check of its sockets, before goroutines and descriptors.
func noLeaks(t testing.TB, p *udppool.Pool, owned bool) {
	t.Helper()
	primePoller()
	before := openFDs()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		t.Helper()
		if p != nil {
			held := heldSockets(p, owned)
			// A QUIC connection releases its socket from a goroutine
			// of its own once it has closed: give such releases the
			// time goleak gives goroutines.
			for wait := time.Millisecond; len(held) > 0 && wait <= retryMax; wait *= 2 {
				time.Sleep(wait)
				held = heldSockets(p, owned)
			}
			if len(held) > 0 {
				t.Errorf("udppooltest: pool still holds %d socket(s) at cleanup (a handle, Transport or Listener was not closed): %s",
					len(held), strings.Join(held, "; "))
			}
			if owned {
				p.Close()
			}
		}
		if err := goleak.Find(ignore); err != nil {
			t.Errorf("udppooltest: goroutines leaked: %v", err)
		}
		if before != nil {
			if leaked := openFDs().since(before); len(leaked) > 0 {
				t.Errorf("udppooltest: %d file descriptor(s) leaked: %s", len(leaked), strings.Join(leaked, ", "))
			}
		}
	})
}

// retryMax is the longest pause between the checks of a pool that still
// holds sockets; the pauses double from a millisecond up to it, half a
// second in all, as goleak's retries do.
const retryMax = 256 * time.Millisecond

// heldSockets describes the sockets of p that count as leaked: those with
// references, or, if the check does not own p, all of them.
func heldSockets(p *udppool.Pool, owned bool) []string {
	var held []string
	for _, s := range p.Stats() {
		if s.Refs > 0 || !owned {
			held = append(held, fmt.Sprintf("%v (local %v, %d references)", s.Key, s.LocalAddr, s.Refs))
		}
	}
	return held
}

// primePoller makes the runtime create its network poller's descriptors
// now, if it has not yet: they stay open for the life of the process, and
// would otherwise count as leaked by the first test that uses the network.
func primePoller() {
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
}

// fdSet maps the open descriptors of the process to what they refer to.
type fdSet map[int]string

// openFDs lists the process's open descriptors, or returns nil where the
// platform does not tell.
func openFDs() fdSet {
	if runtime.GOOS != "linux" {
		return nil
	}
	dir, err := os.Open("/proc/self/fd")
	if err != nil {
		return nil
	}
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return nil
	}
	self := int(dir.Fd()) // the directory being read is not worth reporting
	fds := make(fdSet, len(names))
	for _, name := range names {
		fd, err := strconv.Atoi(name)
		if err != nil || fd == self {
			continue
		}
		target, _ := os.Readlink("/proc/self/fd/" + name)
		fds[fd] = target
	}
	return fds
}

// since describes the descriptors of s that were not open, or referred to
// something else, in before.
func (s fdSet) since(before fdSet) []string {
	var fds []int
	for fd, target := range s {
		if old, ok := before[fd]; !ok || old != target {
			fds = append(fds, fd)
		}
	}
	slices.Sort(fds)
	leaked := make([]string, len(fds))
	for i, fd := range fds {
		leaked[i] = fmt.Sprintf("%d -> %s", fd, s[fd])
	}
	return leaked
}
