//go:build !linux

package udppool

import "os"

// takeActivated finds no activated sockets: socket activation is systemd's,
// and systemd runs on Linux only.
func takeActivated(Key) (*socket, error) { return nil, nil }

// takeActivatedListener finds no activated sockets either.
func takeActivatedListener(string, string) *os.File { return nil }
