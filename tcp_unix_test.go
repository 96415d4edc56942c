//go:build unix

package udppool

import (
	"context"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// TestUpgraderListenStaysNonblocking checks that the Upgrader's copy of a
// listening socket can be turned into another listener (net.FileListener
// calls its Fd) without putting the shared socket into blocking mode,
// which would leave the accepts of the listeners already open on it
// blocking threads past their deadlines. It did, with the file of
// (*net.TCPListener).File.
func TestUpgraderListenStaysNonblocking(t *testing.T) {
	needIPv4(t)
	u, err := newUpgrader("", false, WithSupervisor(false))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Stop()
	ln, err := u.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	u.mu.Lock()
	f := u.tcp[spelling{"tcp", "127.0.0.1:0"}]
	u.mu.Unlock()
	if f == nil {
		t.Fatal("the Upgrader kept no copy of the listening socket")
	}
	f.Fd()
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	nonblocking := false
	rc.Control(func(fd uintptr) {
		fl, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
		nonblocking = err == nil && fl&unix.O_NONBLOCK != 0
	})
	if !nonblocking {
		t.Error("the listening socket is in blocking mode after its file's Fd")
	}
}
