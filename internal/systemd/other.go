//go:build !linux

package systemd

import (
	"errors"
	"os"
	"time"
)

// NotifyEnv is the variable that names the service manager's socket.
const NotifyEnv = "NOTIFY_SOCKET"

// ErrNoSocket is returned by Notify when there is no manager to notify,
// which on this platform is always.
var ErrNoSocket = errors.New("systemd: NOTIFY_SOCKET not set")

// Notify does nothing on this platform: systemd runs on Linux only.
func Notify(...string) error { return ErrNoSocket }

// NotifySocket does nothing on this platform.
func NotifySocket(string, ...string) error { return ErrNoSocket }

// Barrier does nothing on this platform.
func Barrier(string, time.Duration) error { return ErrNoSocket }

// ListenFiles finds no activated sockets on this platform.
func ListenFiles() ([]*os.File, error) { return nil, nil }

// UnsetListenEnv does nothing on this platform.
func UnsetListenEnv() {}

// MonotonicUsec returns 0: there is no manager to compare it with.
func MonotonicUsec() int64 { return 0 }
