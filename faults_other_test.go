//go:build !linux

package udppool_test

import (
	"testing"

	"github.com/udppool/udppool"
)

func breakDescriptor(t *testing.T, _ *udppool.Transport) {
	t.Skip("breaking a descriptor underneath the pool is only done on Linux")
}
