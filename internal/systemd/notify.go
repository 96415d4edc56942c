//go:build linux

package systemd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// NotifyEnv is the variable that names the service manager's socket.
const NotifyEnv = "NOTIFY_SOCKET"

// ErrNoSocket is returned by Notify when NOTIFY_SOCKET is not set: the
// process does not run under a manager that listens.
var ErrNoSocket = errors.New("systemd: NOTIFY_SOCKET not set")

// Notify sends state, a list of VAR=value assignments, to the socket named
// by NOTIFY_SOCKET in one datagram. The socket is opened for the one
// message, as sd_notify does, so that nothing stays open between messages
// and a manager that restarts its listener is still reached.
func Notify(state ...string) error {
	return NotifySocket(os.Getenv(NotifyEnv), state...)
}

// NotifySocket sends state to the socket at addr: a path, or an abstract
// name starting with '@'.
func NotifySocket(addr string, state ...string) error {
	return send(addr, strings.Join(state, "\n"), nil)
}

func send(addr, msg string, oob []byte) error {
	if addr == "" {
		return ErrNoSocket
	}
	if addr[0] != '/' && addr[0] != '@' {
		// vsock and other schemes of newer managers are not spoken here.
		return fmt.Errorf("systemd: unsupported %s=%q", NotifyEnv, addr)
	}
	// A raw socket rather than the net package's: it refuses control
	// data on a connected datagram socket, and this one lives for one
	// message.
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("systemd: notify %s: %w", addr, os.NewSyscallError("socket", err))
	}
	defer unix.Close(fd)
	if err := unix.Sendmsg(fd, []byte(msg), oob, &unix.SockaddrUnix{Name: addr}, 0); err != nil {
		return fmt.Errorf("systemd: notify %s: %w", addr, os.NewSyscallError("sendmsg", err))
	}
	return nil
}

// Barrier sends BARRIER=1 with one end of a pipe and waits, at most
// timeout, until the manager has closed it, which it does once it has
// processed every earlier message of this process. A process that
// announces a new main pid calls it before exiting, so that the manager
// never sees the exit first.
func Barrier(addr string, timeout time.Duration) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	err = send(addr, "BARRIER=1", unix.UnixRights(int(w.Fd())))
	w.Close() // only the manager's copy keeps the pipe open now
	if err != nil {
		return err
	}
	r.SetReadDeadline(time.Now().Add(timeout))
	var b [1]byte
	if _, err := r.Read(b[:]); !errors.Is(err, io.EOF) {
		if err == nil {
			err = errors.New("unexpected data")
		}
		return fmt.Errorf("systemd: barrier on %s: %w", addr, err)
	}
	return nil
}

// MonotonicUsec returns CLOCK_MONOTONIC in microseconds, for the
// MONOTONIC_USEC= that accompanies RELOADING=1.
func MonotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano() / 1e3
}
