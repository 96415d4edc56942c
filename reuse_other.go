//go:build !(aix || darwin || dragonfly || freebsd || linux || netbsd || openbsd || zos || windows)

package udppool

import "errors"

// reusePortSupported is false: this platform has no SO_REUSEPORT, so sockets
// are bound plainly and only this process can use the port.
const reusePortSupported = false

func setReuse(uintptr) error { return nil }

// setDualStack is unsupported, so "udp" wildcards bind the family Go picks.
func setDualStack(uintptr) error { return errors.ErrUnsupported }
