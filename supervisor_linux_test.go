package udppool

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/udppool/udppool/internal/systemd"
)

// TestSupervisorFollowsMainPID checks the supervisor's rule for
// notifications: only the main process names the next one (as systemd's
// NotifyAccess=main), a barrier is answered for anyone, and what its own
// manager needs is relayed without MAINPID=, since the supervisor stays
// that manager's main process. examples/upgrade's tests run the
// supervisor for real, as PID 1 of a PID namespace.
func TestSupervisorFollowsMainPID(t *testing.T) {
	outer, err := systemd.Listen(filepath.Join(t.TempDir(), "outer"))
	if err != nil {
		t.Fatal(err)
	}
	defer outer.Close()
	sv := supervisor{main: 10, outer: outer.Addr()}
	barrier := func() (*os.File, *os.File) {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		return r, w
	}

	sv.message(systemd.Message{PID: 11, Vars: []string{"MAINPID=12", "READY=1"}})
	if sv.main != 10 {
		t.Fatalf("a process other than the main one moved the main pid to %d", sv.main)
	}
	r, w := barrier()
	defer r.Close()
	sv.message(systemd.Message{PID: 10, Vars: []string{"MAINPID=11", "READY=1", "STATUS=x"}})
	sv.message(systemd.Message{PID: 10, Vars: []string{"BARRIER=1"}, Files: []*os.File{w}})
	if sv.main != 11 {
		t.Fatalf("main pid %d after MAINPID=11 from the main process", sv.main)
	}
	r.SetReadDeadline(time.Now().Add(testTimeout))
	if _, err := r.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("barrier of a former main process not answered: %v", err)
	}
	sv.message(systemd.Message{PID: 11, Vars: []string{"MAINPID=1"}})
	if sv.main != 11 {
		t.Fatalf("MAINPID=1 accepted: main pid %d", sv.main)
	}
	m, err := outer.Receive()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(m.Vars, " "); got != "READY=1 STATUS=x" {
		t.Errorf("relayed %q, want READY and STATUS without MAINPID", got)
	}
}
