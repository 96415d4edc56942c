package udppool

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/udppool/udppool/internal/systemd"
)

// manager plays the part of systemd's notify socket with NotifyAccess=main:
// it follows MAINPID= from the main process only and records what the main
// process said, in order. The systemd tests of examples/upgrade run the
// real thing; this one looks at each message and at the PID file beside it.
type manager struct {
	t       *testing.T
	l       *systemd.Listener
	main    int
	pidFile string
	msgs    chan systemd.Message
}

func newManager(t *testing.T) *manager {
	dir, err := os.MkdirTemp("", "udppool-notify")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o777)
	t.Cleanup(func() { os.RemoveAll(dir) })
	l, err := systemd.Listen(filepath.Join(dir, "notify"))
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(l.Addr(), 0o666) // as systemd's: any service may write to it
	m := &manager{t: t, l: l, pidFile: filepath.Join(dir, "server.pid"), msgs: make(chan systemd.Message, 64)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			msg, err := l.Receive()
			if err != nil {
				return
			}
			m.msgs <- msg
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return m
}

// next returns the next message of the main process, following MAINPID=
// and answering barriers; other messages of other processes fail the test.
func (m *manager) next() systemd.Message {
	m.t.Helper()
	for {
		select {
		case msg := <-m.msgs:
			for _, f := range msg.Files {
				f.Close()
			}
			if v, ok := msg.Get("BARRIER"); ok && v == "1" {
				continue // answered for any process, as systemd does
			}
			if msg.PID != m.main {
				m.t.Fatalf("message %q from pid %d, the main process is %d", msg.Vars, msg.PID, m.main)
			}
			if v, ok := msg.Get("MAINPID"); ok {
				m.main, _ = strconv.Atoi(v)
			}
			return msg
		case <-time.After(testTimeout):
			m.t.Fatalf("no message from main process %d", m.main)
		}
	}
}

// expect takes the next message and checks that it assigns each of vars
// ("NAME=value", or "NAME=" for any value).
func (m *manager) expect(vars ...string) systemd.Message {
	m.t.Helper()
	msg := m.next()
	for _, want := range vars {
		name, value, _ := strings.Cut(want, "=")
		got, ok := msg.Get(name)
		if !ok || value != "" && got != value {
			m.t.Fatalf("message %q lacks %s", msg.Vars, want)
		}
	}
	return msg
}

func (m *manager) checkPIDFile(pid int) {
	m.t.Helper()
	b, err := os.ReadFile(m.pidFile)
	if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(pid) {
		m.t.Fatalf("PID file holds %q (%v), want %d", b, err, pid)
	}
}

// TestUpgradeNotifiesManager runs two upgrades, a failed one between them,
// and a stop, under a notify socket and with a PID file, as root and as an
// unprivileged user: the main process announces itself ready, each upgrade
// as a reload, the successor as the new main process (and only once the
// PID file names it), a failed upgrade as the end of the reload, and the
// stop; an old generation, no longer the main process, says nothing.
func TestUpgradeNotifiesManager(t *testing.T) {
	for _, c := range []struct {
		name string
		uid  int
	}{{"root", 0}, {"nobody", 65534}} {
		t.Run(c.name, func(t *testing.T) {
			m := newManager(t)
			failDir := filepath.Dir(m.pidFile)
			s := startServers(t, upgradeSetup{uid: c.uid, drain: time.Second, failDir: failDir,
				env: []string{systemd.NotifyEnv + "=" + m.l.Addr(), upgradePIDEnv + "=" + m.pidFile}})
			cur := s.wait("ready", 1)
			m.main = cur.pid
			m.expect("READY=1")
			m.checkPIDFile(cur.pid)

			for i := range 2 {
				if i == 1 {
					if err := os.WriteFile(filepath.Join(failDir, "fail"), []byte("crash"), 0o666); err != nil {
						t.Fatal(err)
					}
					syscall.Kill(cur.pid, syscall.SIGHUP)
					m.expect("RELOADING=1", "MONOTONIC_USEC=")
					m.expect("READY=1", "STATUS=")
					m.checkPIDFile(cur.pid)
					s.waitCount("upgrade-failed", cur.gen, 1)
				}
				syscall.Kill(cur.pid, syscall.SIGHUP)
				m.expect("RELOADING=1", "MONOTONIC_USEC=")
				msg := m.expect("READY=1", "MAINPID=")
				next := s.wait("ready", cur.gen+1)
				if m.main != next.pid {
					t.Fatalf("MAINPID=%d, the successor is %d (%q)", m.main, next.pid, msg.Vars)
				}
				m.checkPIDFile(next.pid)
				s.checkExit(cur.gen)
				cur = next
			}
			s.stop()
			m.expect("STOPPING=1")
			if _, err := os.Stat(m.pidFile); !os.IsNotExist(err) {
				t.Errorf("PID file left after the last stop: %v", err)
			}
			select {
			case msg := <-m.msgs:
				t.Errorf("message after the stop: %q from %d", msg.Vars, msg.PID)
			default:
			}
		})
	}
}
