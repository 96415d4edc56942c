package udppool_test

import (
	"os"
	"testing"

	"github.com/udppool/udppool"
	"golang.org/x/sys/unix"
)

// breakDescriptor replaces c's socket descriptor with /dev/null, as if it
// had been closed underneath the pool, without freeing the number.
func breakDescriptor(t *testing.T, c *udppool.Conn) {
	t.Helper()
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var derr error
	if err := rc.Control(func(fd uintptr) { derr = unix.Dup2(int(null.Fd()), int(fd)) }); err != nil || derr != nil {
		t.Fatalf("dup2: %v, %v", err, derr)
	}
}
