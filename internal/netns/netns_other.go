//go:build !linux

package netns

import (
	"fmt"
	"runtime"
)

// errOS is what everything returns here: network namespaces are a Linux
// feature, and tests should skip rather than fail elsewhere.
var errOS = fmt.Errorf("%w on %s", ErrUnsupported, runtime.GOOS)

// NS is a network namespace; none can exist on this platform.
type NS struct{}

// New always fails with an error wrapping ErrUnsupported.
func New() (*NS, error) { return nil, errOS }

// Do always fails with an error wrapping ErrUnsupported.
func (n *NS) Do(fn func() error) error { return errOS }

// Sysctl always fails with an error wrapping ErrUnsupported.
func (n *NS) Sysctl(key, value string) error { return errOS }

// Close does nothing, so that deferred cleanup stays harmless.
func (n *NS) Close() error { return nil }

// Available always returns an error wrapping ErrUnsupported.
func Available() error { return errOS }

// NewHosts always fails with an error wrapping ErrUnsupported.
func NewHosts(kind Kind) (*Hosts, error) { return nil, errOS }
