//go:build unix

package fdpass

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pair returns a connected pair of Unix stream sockets, closed at cleanup.
func pair(t *testing.T) (a, b *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(time.Minute)) // a broken test fails, not hangs
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// udpSockets returns n UDP sockets, closed at cleanup.
func udpSockets(t *testing.T, n int) []int {
	t.Helper()
	var fds []int
	for range n {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		unix.CloseOnExec(fd)
		t.Cleanup(func() { unix.Close(fd) })
		fds = append(fds, fd)
	}
	return fds
}

// openFDs counts this process's descriptors, or skips where the system
// does not list them.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("counting descriptors needs /proc/self/fd: %v", err)
	}
	return len(ents)
}

// checkNoLeak fails t at cleanup if more descriptors are open than now.
func checkNoLeak(t *testing.T) {
	t.Helper()
	before := openFDs(t)
	t.Cleanup(func() {
		if after := openFDs(t); after != before {
			t.Errorf("descriptors: %d before, %d after", before, after)
		}
	})
}

func identity(t *testing.T, fd int) [2]uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return [2]uint64{uint64(st.Dev), uint64(st.Ino)}
}

func TestRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 3, 64} {
		a, b := pair(t)
		fds := udpSockets(t, n)
		msg := bytes.Repeat([]byte("hello "), 100)
		if err := Send(a, msg, fds); err != nil {
			t.Fatal(err)
		}
		got, files, err := Receive(b, 64)
		if err != nil {
			t.Fatalf("%d descriptors: %v", n, err)
		}
		if !bytes.Equal(got, msg) {
			t.Errorf("%d descriptors: message %q", n, got)
		}
		if len(files) != n {
			t.Fatalf("%d descriptors sent, %d received", n, len(files))
		}
		for i, f := range files {
			// The same socket, in the same order: same device and inode,
			// under a new number.
			if want, got := identity(t, fds[i]), identity(t, int(f.Fd())); got != want {
				t.Errorf("descriptor %d: socket %v, sent %v", i, got, want)
			}
			flags, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0)
			if err != nil || flags&unix.FD_CLOEXEC == 0 {
				t.Errorf("descriptor %d not close-on-exec: %#x, %v", i, flags, err)
			}
			f.Close()
		}
	}
}

func TestEmptyMessage(t *testing.T) {
	a, b := pair(t)
	if err := Send(a, nil, udpSockets(t, 1)); err != nil {
		t.Fatal(err)
	}
	msg, files, err := Receive(b, 1)
	if err != nil || len(msg) != 0 || len(files) != 1 {
		t.Fatalf("%q, %d files, %v", msg, len(files), err)
	}
	files[0].Close()
}

// TestTruncated: more descriptors than the bound are refused, and none of
// them stays open, neither those received nor those the kernel dropped.
func TestTruncated(t *testing.T) {
	a, b := pair(t)
	fds := udpSockets(t, 5)
	checkNoLeak(t)
	if err := Send(a, []byte("five"), fds); err != nil {
		t.Fatal(err)
	}
	msg, files, err := Receive(b, 2)
	if !errors.Is(err, ErrTruncated) || msg != nil || files != nil {
		t.Fatalf("Receive: %q, %d files, %v; want ErrTruncated", msg, len(files), err)
	}
}

// sendParts writes the frame of msg in the pieces cuts makes, the
// descriptors with the first.
func sendParts(t *testing.T, c *net.UnixConn, frame []byte, fds []int, cuts ...int) {
	t.Helper()
	prev := 0
	for i, cut := range append(cuts, len(frame)) {
		var oob []byte
		if i == 0 {
			oob = unix.UnixRights(fds...)
		}
		if _, _, err := c.WriteMsgUnix(frame[prev:cut], oob, nil); err != nil {
			t.Fatal(err)
		}
		prev = cut
	}
}

func frameOf(msg []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(msg))), msg...)
}

// TestShortReads: a message that arrives in pieces, its length too, is
// read whole; its descriptors come with the first piece. Linux ends a read
// after the octets that carry descriptors, so Receive's first read returns
// the first piece alone: cut inside the length, at its end and inside the
// message. (Other systems may read more at once, which the test allows.)
func TestShortReads(t *testing.T) {
	for _, cuts := range [][]int{{1}, {2, 3}, {4}, {6}, {1, 2, 3, 4, 5, 6, 7}} {
		a, b := pair(t)
		msg := []byte("a message in pieces")
		sendParts(t, a, frameOf(msg), udpSockets(t, 2), cuts...)
		got, files, err := Receive(b, 4)
		if err != nil || !bytes.Equal(got, msg) || len(files) != 2 {
			t.Fatalf("cuts %v: %q, %d files, %v", cuts, got, len(files), err)
		}
		for _, f := range files {
			f.Close()
		}
	}
}

// TestRefused: what is not one whole message is refused, every
// descriptor that came with it closed.
func TestRefused(t *testing.T) {
	tooLarge := binary.BigEndian.AppendUint32(nil, MaxSize+1)
	for _, c := range []struct {
		name  string
		frame []byte
		close bool // the sender closes after the frame
		want  error
	}{
		{"message over MaxSize", append(tooLarge, make([]byte, 100)...), false, ErrTooLarge},
		{"length cut short", []byte{0, 0}, true, io.ErrUnexpectedEOF},
		{"message cut short", append(binary.BigEndian.AppendUint32(nil, 10), "short"...), true, io.ErrUnexpectedEOF},
		{"data after the message", append(frameOf([]byte("msg")), "more"...), false, ErrTrailing},
	} {
		t.Run(c.name, func(t *testing.T) {
			a, b := pair(t)
			fds := udpSockets(t, 3)
			checkNoLeak(t)
			sendParts(t, a, c.frame, fds)
			if c.close {
				a.CloseWrite()
			}
			msg, files, err := Receive(b, 8)
			if !errors.Is(err, c.want) || msg != nil || files != nil {
				t.Fatalf("Receive: %q, %d files, %v; want %v", msg, len(files), err, c.want)
			}
		})
	}
}

func TestSendTooLarge(t *testing.T) {
	a, _ := pair(t)
	if err := Send(a, make([]byte, MaxSize+1), nil); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Send: %v, want ErrTooLarge", err)
	}
	a, b := pair(t)
	if err := Send(a, make([]byte, MaxSize), nil); err != nil {
		t.Fatal(err)
	}
	if msg, _, err := Receive(b, 0); err != nil || len(msg) != MaxSize {
		t.Fatalf("Receive of MaxSize: %d bytes, %v", len(msg), err)
	}
}
