//go:build !linux

package udppool

// takeActivated finds no activated sockets: socket activation is systemd's,
// and systemd runs on Linux only.
func takeActivated(Key) (*socket, error) { return nil, nil }
