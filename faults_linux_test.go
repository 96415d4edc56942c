package udppool_test

import (
	"testing"

	"github.com/udppool/udppool"
)

// breakDescriptor replaces the descriptor of tr's socket with /dev/null, as
// if it had been closed underneath the pool (see the package's own
// dead-socket test).
func breakDescriptor(t *testing.T, tr *udppool.Transport) { udppool.BreakTransportSocket(t, tr) }
