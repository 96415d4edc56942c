//go:build linux

package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/nettest"

	"github.com/udppool/udppool/internal/systemdtest"
)

// TestPID1 runs the command as PID 1 of a PID namespace of its own, as a
// container runtime does (`unshare --pid --fork --mount-proc`), and sends
// the signals to PID 1: 5 SIGHUP upgrades under HTTP/3 load, then SIGTERM.
// Every request is answered, no old generation or zombie is left in the
// namespace after an upgrade, PID 1 exits 0 and no process of the
// namespace is left. The pids in the answers and the servers' output are
// pids of that namespace.
func TestPID1(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a PID namespace needs root")
	}
	if !nettest.SupportsIPv4() {
		t.Skip("host has no IPv4 loopback")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip(err)
	}
	bin := build(t)
	certFile, keyFile, roots := certificateFiles(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t, "127.0.0.1")))

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	// --kill-child and Pdeathsig: should the test die without its
	// cleanup, unshare dies, and with it PID 1 and its namespace.
	cmd := exec.Command(unshare, "--pid", "--fork", "--kill-child=SIGKILL", "--mount-proc",
		bin, "-listen", addr, "-cert", certFile, "-key", keyFile, "-drain", "2s")
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		t.Fatal(err)
	}
	s := &servers{t: t, first: cmd, reaped: make(map[int]bool), changed: make(chan struct{}), done: make(chan struct{})}
	go s.read(r)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var pid1 int // PID 1's pid in the test's namespace
	t.Cleanup(func() {
		// Not the servers' pids: those are pids of the namespace. Killing
		// PID 1 kills the namespace.
		if pid1 != 0 {
			syscall.Kill(pid1, syscall.SIGKILL)
		}
		cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(testTimeout):
			t.Errorf("unshare did not exit")
		}
		select {
		case <-s.done:
		case <-time.After(testTimeout):
			t.Errorf("servers' output still open:\n%s", s.output())
		}
		if t.Failed() {
			t.Logf("servers' output (pids of the namespace):\n%s", s.output())
		}
	})

	bound := time.Now().Add(testTimeout)
	for pid1 == 0 {
		if c := systemdtest.Children(cmd.Process.Pid); len(c) == 1 {
			pid1 = c[0]
		} else if time.Now().After(bound) {
			t.Fatalf("no PID 1 under unshare (pid %d): children %v", cmd.Process.Pid, c)
		} else {
			time.Sleep(10 * time.Millisecond)
		}
	}
	ns, err := systemdtest.PIDNamespaceOf(pid1)
	if err != nil {
		t.Fatal(err)
	}
	if own, _ := systemdtest.PIDNamespaceOf(os.Getpid()); own == ns {
		t.Fatalf("PID 1 (pid %d) is in the test's PID namespace %s", pid1, ns)
	}

	cur := s.wait("ready", 1)
	l := startLoad(t, roots, "https://"+addr+"/")
	l.waitServed(t, cur.answer, 20)
	for i := 1; i <= reloads; i++ {
		if err := syscall.Kill(pid1, syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		next := s.wait("ready", i+1)
		l.waitServed(t, next.answer, 20)
		if exit := s.wait("exit", i); !strings.Contains(exit.line, ": 0 of ") {
			t.Errorf("upgrade %d: generation %d did not drain: %s", i, i, exit.line)
		}
		ps := waitNamespace(t, ns, fmt.Sprintf("after upgrade %d", i), func(p systemdtest.Process) string {
			switch {
			case p.State == 'Z':
				return "a zombie"
			case p.NSPID == cur.pid:
				return fmt.Sprintf("generation %d, which has drained", i)
			}
			return ""
		})
		t.Logf("after upgrade %d, the namespace's processes: %v", i, ps)
		cur = next
	}
	requests, failed := l.report(t, "PID 1")

	if err := syscall.Kill(pid1, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exit := s.wait("exit", reloads+1)
	select {
	case err := <-exited:
		exited <- err // for the cleanup
		if err != nil {
			t.Errorf("PID 1 after SIGTERM: %v (unshare exits with its status)\n%s", err, s.output())
		}
	case <-time.After(testTimeout):
		t.Fatalf("PID 1 did not exit after SIGTERM:\n%s", s.output())
	}
	if left, err := systemdtest.ProcessesIn(ns); err != nil || len(left) > 0 {
		t.Errorf("processes of the namespace left after PID 1 exited: %v, %v", left, err)
	}
	checkOutput(t, s.output())
	t.Logf("PID 1: %d upgrades, %d requests, %d failed; last: %s", reloads, requests, failed, exit.line)
	t.Logf("servers' output:\n%s", s.output())
}

// waitNamespace waits, within testTimeout, until bad (which says what is
// wrong with a process, or "") passes every process of PID namespace ns,
// and returns them.
func waitNamespace(t *testing.T, ns, when string, bad func(systemdtest.Process) string) []systemdtest.Process {
	t.Helper()
	bound := time.Now().Add(testTimeout)
	for {
		ps, err := systemdtest.ProcessesIn(ns)
		if err != nil {
			t.Fatal(err)
		}
		var wrong []string
		for _, p := range ps {
			if why := bad(p); why != "" {
				wrong = append(wrong, fmt.Sprintf("%v: %s", p, why))
			}
		}
		if len(wrong) == 0 {
			return ps
		}
		if time.Now().After(bound) {
			t.Fatalf("%s, in the namespace: %s", when, strings.Join(wrong, "; "))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
