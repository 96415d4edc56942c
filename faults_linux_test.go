package udppool_test

import (
	"testing"

	"github.com/udppool/udppool"
)

// breakDescriptor replaces c's socket descriptor with /dev/null, as if it
// had been closed underneath the pool (see the package's own dead-socket
// test).
func breakDescriptor(t *testing.T, c *udppool.Conn) { udppool.BreakSocket(t, c) }
