//go:build !(aix || darwin || dragonfly || freebsd || linux || netbsd || openbsd || zos || windows)

package udppool

import "errors"

func setReuse(uintptr) error { return nil }

// setDualStack is unsupported, so "udp" wildcards bind the family Go picks.
func setDualStack(uintptr) error { return errors.ErrUnsupported }
