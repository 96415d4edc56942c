package systemd

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testTimeout bounds each wait, so that a bug fails instead of hanging;
// it is never asserted as a duration.
const testTimeout = 10 * time.Second

func listen(t *testing.T, addr string) *Listener {
	t.Helper()
	l, err := Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func TestNotify(t *testing.T) {
	for name, addr := range map[string]string{
		"path":     filepath.Join(t.TempDir(), "notify"),
		"abstract": fmt.Sprintf("@udppool-systemd-test-%d", os.Getpid()),
	} {
		t.Run(name, func(t *testing.T) {
			l := listen(t, addr)
			t.Setenv(NotifyEnv, addr)
			if err := Notify("READY=1", "STATUS=serving", "MAINPID=42"); err != nil {
				t.Fatal(err)
			}
			m, err := l.Receive()
			if err != nil {
				t.Fatal(err)
			}
			if m.PID != os.Getpid() {
				t.Errorf("sender pid %d, want %d", m.PID, os.Getpid())
			}
			if got := strings.Join(m.Vars, ","); got != "READY=1,STATUS=serving,MAINPID=42" {
				t.Errorf("vars %q", got)
			}
			if v, ok := m.Get("MAINPID"); !ok || v != "42" {
				t.Errorf("Get(MAINPID) = %q, %v", v, ok)
			}
			if _, ok := m.Get("STOPPING"); ok {
				t.Error("Get found an assignment that was not sent")
			}
		})
	}
}

func TestNotifyErrors(t *testing.T) {
	t.Setenv(NotifyEnv, "")
	if err := Notify("READY=1"); err != ErrNoSocket {
		t.Errorf("without NOTIFY_SOCKET: %v, want ErrNoSocket", err)
	}
	if err := NotifySocket("vsock:2:1", "READY=1"); err == nil || !strings.Contains(err.Error(), "unsupported") {
		t.Errorf("vsock address: %v", err)
	}
	missing := filepath.Join(t.TempDir(), "nobody-listens")
	if err := NotifySocket(missing, "READY=1"); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("no listener: %v, want an error naming the socket", err)
	}
}

// TestBarrier checks both ends: the barrier returns once the listener has
// closed the descriptor, and times out (with an error) when it never does.
func TestBarrier(t *testing.T) {
	addr := filepath.Join(t.TempDir(), "notify")
	l := listen(t, addr)
	done := make(chan error, 1)
	go func() { done <- Barrier(addr, testTimeout) }()
	m, err := l.Receive()
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := m.Get("BARRIER"); v != "1" || len(m.Files) != 1 {
		t.Fatalf("barrier message %q with %d files", m.Vars, len(m.Files))
	}
	select {
	case err := <-done:
		t.Fatalf("barrier returned (%v) before the descriptor was closed", err)
	default:
	}
	m.Files[0].Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// Nobody closes it: the timeout ends the wait. The listener keeps
	// the descriptor open until the test has seen the error.
	go func() { done <- Barrier(addr, time.Millisecond) }()
	m, err = l.Receive()
	if err != nil {
		t.Fatal(err)
	}
	err = <-done
	for _, f := range m.Files {
		f.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "barrier") {
		t.Errorf("unanswered barrier: %v", err)
	}
}

// TestReceiveRefusesTruncated sends more descriptors than Receive has room
// for: the message is refused and no descriptor is leaked.
func TestReceiveRefusesTruncated(t *testing.T) {
	addr := filepath.Join(t.TempDir(), "notify")
	l := listen(t, addr)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	fds := make([]int, maxFiles+4)
	for i := range fds {
		fds[i] = int(w.Fd())
	}
	before := openFDs(t)
	if err := send(addr, "BARRIER=1", unix.UnixRights(fds...)); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Receive(); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("oversized control data: %v", err)
	}
	if after := openFDs(t); after != before {
		t.Errorf("%d descriptors open after a refused message, %d before", after, before)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	return len(ents)
}

// childEnv marks the re-executed test binary of TestListenFiles.
const childEnv = "UDPPOOL_SYSTEMD_TEST_CHILD"

// TestListenFiles passes two UDP sockets the way a manager does (LISTEN_PID
// is the child's own pid: a shell sets it to $$, then execs the test
// binary in place) and checks what the child makes of them; a LISTEN_PID
// of another process is not for the child.
func TestListenFiles(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		listenFilesChild()
		return
	}
	var files []*os.File
	var addrs []string
	for range 2 {
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		f, err := c.(*net.UDPConn).File()
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files = append(files, f)
		addrs = append(addrs, c.LocalAddr().String())
	}
	run := func(pid string) string {
		t.Helper()
		script := fmt.Sprintf(`LISTEN_PID=%s LISTEN_FDS=2 LISTEN_FDNAMES=quic: exec "$0" -test.run='^TestListenFiles$'`, pid)
		cmd := exec.Command("/bin/sh", "-c", script, os.Args[0])
		cmd.Env = append(os.Environ(), childEnv+"=1")
		cmd.ExtraFiles = files
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return string(out)
	}
	out := run("$$")
	for _, want := range []string{
		"fd 3 quic udp " + addrs[0] + " cloexec",
		"fd 4 unknown udp " + addrs[1] + " cloexec",
		"env LISTEN_PID= LISTEN_FDS= LISTEN_FDNAMES=",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("child's output lacks %q:\n%s", want, out)
		}
	}
	if out := run("1"); !strings.Contains(out, "0 files\n") || !strings.Contains(out, "env LISTEN_PID= LISTEN_FDS= LISTEN_FDNAMES=") {
		t.Errorf("LISTEN_PID of another process:\n%s", out)
	}
}

func listenFilesChild() {
	files, err := ListenFiles()
	UnsetListenEnv()
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Printf("%d files\n", len(files))
	for _, f := range files {
		flags, _ := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0)
		pc, err := net.FilePacketConn(f)
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		cloexec := "inheritable"
		if flags&unix.FD_CLOEXEC != 0 {
			cloexec = "cloexec"
		}
		fmt.Printf("fd %d %s %s %s %s\n", f.Fd(), f.Name(), pc.LocalAddr().Network(), pc.LocalAddr(), cloexec)
		pc.Close()
	}
	fmt.Printf("env LISTEN_PID=%s LISTEN_FDS=%s LISTEN_FDNAMES=%s\n",
		os.Getenv(ListenPIDEnv), os.Getenv(ListenFDsEnv), os.Getenv(ListenFDNamesEnv))
	os.Exit(0)
}

// TestListenFilesMalformed: garbled variables are an error or nothing,
// never a claim on descriptors this process did not get (each case would
// otherwise wrap descriptors of the test process itself).
func TestListenFilesMalformed(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	for _, c := range []struct {
		pid, fds string
		err      bool
	}{
		{self, "abc", true},
		{self, "-1", true},
		{self, "100000", true},
		{self, "", true},
		{"1", "3", false},
		{"not-a-pid", "3", false},
		{"", "3", false},
	} {
		t.Setenv(ListenPIDEnv, c.pid)
		t.Setenv(ListenFDsEnv, c.fds)
		files, err := ListenFiles()
		if len(files) != 0 || (err != nil) != c.err {
			t.Errorf("LISTEN_PID=%q LISTEN_FDS=%q: %d files, %v", c.pid, c.fds, len(files), err)
		}
	}
}
