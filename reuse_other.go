//go:build !(aix || darwin || dragonfly || freebsd || linux || netbsd || openbsd || zos || windows)

package udppool

import "errors"

func setSharing(uintptr, bool) error { return nil }

// setDualStack is unsupported, so "udp" wildcards bind the family Go picks.
func setDualStack(uintptr) error { return errors.ErrUnsupported }

// checkSocket cannot tell here; a broken socket shows in its operations.
func checkSocket(uintptr) error { return nil }
