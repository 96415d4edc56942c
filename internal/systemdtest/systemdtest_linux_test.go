//go:build linux

package systemdtest

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(handoverEnv); mode != "" {
		handoverMain(mode) // the test binary as a service of TestMainPIDHandOver
	}
	goleak.VerifyTestMain(m)
}

// TestSimpleService starts, checks and stops a sleep service, and checks
// after the test that booted systemd that its teardown left nothing: no
// process of its namespace, no cgroup.
func TestSimpleService(t *testing.T) {
	var cgroup, pidNS string
	t.Run("boot", func(t *testing.T) {
		s := Boot(t, map[string]string{"sleep.service": `[Unit]
DefaultDependencies=no
[Service]
ExecStart=/bin/sleep 1000
`})
		cgroup, pidNS = s.cgroup, s.pidNS
		if _, err := s.Systemctl("start", "sleep.service"); err != nil {
			t.Fatal(err)
		}
		m, err := s.Show("sleep.service", "ActiveState", "SubState", "MainPID")
		if err != nil {
			t.Fatal(err)
		}
		if m["ActiveState"] != "active" || m["SubState"] != "running" {
			t.Fatalf("sleep.service after start: %v", m)
		}
		pids, err := s.UnitPIDs("sleep.service")
		if err != nil {
			t.Fatal(err)
		}
		if len(pids) != 1 || strconv.Itoa(pids[0]) != m["MainPID"] {
			t.Errorf("sleep.service's cgroup has %v, MainPID %s", pids, m["MainPID"])
		}
		if _, err := s.Systemctl("stop", "sleep.service"); err != nil {
			t.Fatal(err)
		}
		if m, err := s.Show("sleep.service", "ActiveState", "Result"); err != nil || m["ActiveState"] != "inactive" {
			t.Errorf("sleep.service after stop: %v, %v", m, err)
		}
		if pids, err := s.UnitPIDs("sleep.service"); err != nil || len(pids) > 0 {
			t.Errorf("sleep.service's processes after stop: %v, %v", pids, err)
		}
		// Left running on purpose: the teardown must end it.
		if _, err := s.Systemctl("start", "sleep.service"); err != nil {
			t.Fatal(err)
		}
	})
	if pidNS == "" {
		return // skipped
	}
	if left, err := ProcessesIn(pidNS); err != nil || len(left) > 0 {
		t.Errorf("after the teardown, processes of systemd's namespace: %v, %v", left, err)
	}
	if _, err := os.Stat(cgroup); !os.IsNotExist(err) {
		t.Errorf("after the teardown, cgroup %s: %v", cgroup, err)
	}
}

// TestNotifyService runs a Type=notify shell service: start returns once
// it has said READY=1, each reload is a RELOADING=1 ... READY=1 round, and
// stop ends it with success.
func TestNotifyService(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	script := filepath.Join(dir, "notify.sh")
	// systemd-notify is a child of the main process: NotifyAccess=all.
	writeFile(t, script, `n=0
trap 'n=$((n+1)); systemd-notify RELOADING=1; echo "reload $n" >>`+log+`; systemd-notify READY=1' HUP
trap 'systemd-notify STOPPING=1; exit 0' TERM
systemd-notify --ready
while :; do sleep 1 & wait $!; done
`)
	s := Boot(t, map[string]string{"notify.service": `[Unit]
DefaultDependencies=no
[Service]
Type=notify
NotifyAccess=all
ExecStart=/bin/sh ` + script + `
ExecReload=/bin/kill -HUP $MAINPID
`})
	if _, err := s.Systemctl("start", "notify.service"); err != nil {
		t.Fatal(err)
	}
	props := []string{"ActiveState", "SubState", "MainPID", "Result"}
	running := func(m map[string]string) bool { return m["ActiveState"] == "active" && m["SubState"] == "running" }
	first, err := s.WaitShow("notify.service", props, running)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		if _, err := s.Systemctl("reload", "notify.service"); err != nil {
			t.Fatal(err)
		}
		waitFile(t, log, fmt.Sprintf("reload %d\n", i))
		m, err := s.WaitShow("notify.service", props, running)
		if err != nil {
			t.Fatal(err)
		}
		if m["MainPID"] != first["MainPID"] {
			t.Errorf("reload %d: MainPID %s, was %s", i, m["MainPID"], first["MainPID"])
		}
	}
	if _, err := s.Systemctl("stop", "notify.service"); err != nil {
		t.Fatal(err)
	}
	if m, err := s.Show("notify.service", props...); err != nil || m["ActiveState"] != "inactive" || m["Result"] != "success" {
		t.Errorf("after stop: %v, %v", m, err)
	}
}

// TestPIDFileHandOver checks what h3up-pidfile.service relies on, with a
// shell server that hands over to a successor on SIGHUP and exits once
// the successor has written its pid to the PID file: systemd 252 follows
// the successor of a Type=simple unit with PIDFile=. Without PIDFile=, the
// unit stops at the first reload, its successor killed with it.
func TestPIDFileHandOver(t *testing.T) {
	for _, c := range []struct {
		name    string
		pidFile string
	}{
		{"PIDFile", "PIDFile=/run/handover.pid\n"},
		{"none", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			log := filepath.Join(dir, "log")
			script := filepath.Join(dir, "handover.sh")
			// $1 is the generation. The wait for the successor is bounded.
			writeFile(t, script, `gen=${1:-1}
echo $$ > /run/handover.pid.new && mv /run/handover.pid.new /run/handover.pid
echo "ready $$ gen $gen" >>`+log+`
trap 'sh "$0" $((gen+1)) & next=$!
i=0; while [ "$(cat /run/handover.pid)" != "$next" ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done
echo "exit $$ gen $gen" >>`+log+`; exit 0' HUP
while :; do sleep 1 & wait $!; done
`)
			s := Boot(t, map[string]string{"handover.service": `[Unit]
DefaultDependencies=no
[Service]
Type=simple
` + c.pidFile + `ExecStart=/bin/sh ` + script + `
ExecReload=/bin/kill -HUP $MAINPID
`})
			if _, err := s.Systemctl("start", "handover.service"); err != nil {
				t.Fatal(err)
			}
			gen1 := readyPID(t, log, 1)
			props := []string{"ActiveState", "SubState", "MainPID"}
			if _, err := s.WaitShow("handover.service", props, func(m map[string]string) bool {
				return m["MainPID"] == strconv.Itoa(gen1)
			}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Systemctl("reload", "handover.service"); err != nil {
				t.Fatal(err)
			}
			gen2 := readyPID(t, log, 2)
			waitFile(t, log, fmt.Sprintf("exit %d gen 1\n", gen1))
			var m map[string]string
			var err error
			if c.pidFile != "" {
				m, err = s.WaitShow("handover.service", props, func(m map[string]string) bool {
					return m["MainPID"] == strconv.Itoa(gen2) && m["ActiveState"] == "active" && m["SubState"] == "running"
				})
			} else {
				m, err = s.WaitShow("handover.service", props, func(m map[string]string) bool {
					return m["ActiveState"] == "inactive" || m["ActiveState"] == "failed"
				})
			}
			t.Logf("after the reload: %v", m)
			if err != nil {
				t.Fatal(err)
			}
			pids, err := s.UnitPIDs("handover.service")
			if err != nil {
				t.Fatal(err)
			}
			if c.pidFile != "" && !slices.Contains(pids, gen2) || c.pidFile == "" && len(pids) > 0 {
				t.Errorf("processes of the unit: %v (successor %d)", pids, gen2)
			}
		})
	}
}

// TestMainPIDHandOver checks what a Type=notify hand-over needs from
// systemd 252, with the test binary as a server that, on SIGHUP, starts a
// successor, names it with MAINPID= (and waits on BARRIER=1 until systemd
// has read that) and exits; on SIGTERM it says so and waits to be
// released before it exits 0, as a server draining its connections.
// Once the old process has exited, a successor that systemd found already
// reparented to itself when it read MAINPID= (started through a process
// that has exited) is stopped gracefully: SIGTERM, and systemd waits for
// its exit. One that was still the old main process's child is, in
// systemd 252, "not our child": at stop it gets SIGTERM and at once
// SIGKILL, as nothing is left in the unit that systemd knows how to wait
// for; that case is only logged.
func TestMainPIDHandOver(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"reparented", "child"} {
		t.Run(mode, func(t *testing.T) {
			log := filepath.Join(t.TempDir(), "log")
			s := Boot(t, map[string]string{"handover.service": `[Unit]
DefaultDependencies=no
[Service]
Type=notify
Environment=` + handoverEnv + `=` + mode + ` ` + handoverLogEnv + `=` + log + `
ExecStart=` + self + `
ExecReload=/bin/kill -HUP $MAINPID
StandardOutput=append:` + log + `.out
StandardError=append:` + log + `.out
`})
			t.Cleanup(func() {
				if t.Failed() {
					b, _ := os.ReadFile(log)
					out, _ := os.ReadFile(log + ".out")
					t.Logf("log:\n%s\noutput:\n%s", b, out)
				}
			})
			if _, err := s.Systemctl("start", "handover.service"); err != nil {
				t.Fatal(err)
			}
			gen1 := readyPID(t, log, 1)
			if _, err := s.Systemctl("reload", "handover.service"); err != nil {
				t.Fatal(err)
			}
			gen2 := readyPID(t, log, 2)
			waitFile(t, log, fmt.Sprintf("handed %d gen 1 to %d\n", gen1, gen2))
			props := []string{"ActiveState", "SubState", "MainPID", "Result", "ExecMainCode", "ExecMainStatus"}
			if _, err := s.WaitShow("handover.service", props, func(m map[string]string) bool {
				return m["MainPID"] == strconv.Itoa(gen2)
			}); err != nil {
				t.Fatal(err)
			}
			// The old main process must be gone: while it is there, systemd
			// waits for it, and so for the cgroup, whatever the successor.
			bound := time.Now().Add(Timeout)
			for {
				pids, err := s.UnitPIDs("handover.service")
				if err == nil && slices.Equal(pids, []int{gen2}) {
					break
				}
				if time.Now().After(bound) {
					t.Fatalf("processes of the unit: %v, %v; want only the successor %d", pids, err, gen2)
				}
				time.Sleep(pollInterval)
			}
			if _, err := s.Systemctl("stop", "--no-block", "handover.service"); err != nil {
				t.Fatal(err)
			}
			term := fmt.Sprintf("term %d gen 2\n", gen2)
			m, err := s.WaitShow("handover.service", props, func(m map[string]string) bool {
				b, _ := os.ReadFile(log)
				return m["ActiveState"] == "deactivating" && strings.Contains(string(b), term) ||
					m["ActiveState"] == "inactive" || m["ActiveState"] == "failed"
			})
			if err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(log)
			t.Logf("stopping, the successor said %q; the unit is %v", term, m)
			if err := os.WriteFile(log+".release", nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if mode == "child" {
				pids, _ := s.UnitPIDs("handover.service")
				t.Logf("a successor that was the old main process's child when systemd read MAINPID=: the unit is %s (%s) with processes %v while the successor drains", m["ActiveState"], m["SubState"], pids)
				return
			}
			if m["ActiveState"] != "deactivating" {
				t.Fatalf("systemd did not wait for the successor to exit: %v\n%s", m, b)
			}
			m, err = s.WaitShow("handover.service", props, func(m map[string]string) bool {
				return m["ActiveState"] == "inactive" || m["ActiveState"] == "failed"
			})
			if err != nil || m["Result"] != "success" {
				t.Errorf("after the successor's exit: %v, %v", m, err)
			}
		})
	}
}

const (
	handoverEnv    = "SYSTEMDTEST_HANDOVER"     // the server's mode: reparented, child, or intermediate
	handoverLogEnv = "SYSTEMDTEST_HANDOVER_LOG" // where it writes its lines
	handoverGenEnv = "SYSTEMDTEST_HANDOVER_GEN" // its generation, if not 1
)

// handoverMain is the server of TestMainPIDHandOver. Every error ends it
// with status 3, for systemd to report.
func handoverMain(mode string) {
	log := os.Getenv(handoverLogEnv)
	gen, _ := strconv.Atoi(os.Getenv(handoverGenEnv))
	if gen == 0 {
		gen = 1
	}
	must := func(err error) {
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
	}
	line := func(format string, a ...any) {
		f, err := os.OpenFile(log, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
		must(err)
		fmt.Fprintf(f, format+"\n", a...)
		must(f.Close())
	}
	self, err := os.Executable()
	must(err)
	successor := func(mode string, gen int) *exec.Cmd {
		cmd := exec.Command(self)
		cmd.Env = []string{handoverEnv + "=" + mode, handoverLogEnv + "=" + log, handoverGenEnv + "=" + strconv.Itoa(gen)}
		return cmd
	}
	if mode == "intermediate" { // starts the successor, names it, exits
		cmd := successor("reparented", gen)
		must(cmd.Start())
		fmt.Println(cmd.Process.Pid)
		os.Exit(0)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM)
	line("ready %d gen %d", os.Getpid(), gen)
	if gen == 1 {
		must(sdNotify("READY=1"))
	}
	for sig := range sigs {
		if sig == syscall.SIGTERM {
			line("term %d gen %d", os.Getpid(), gen)
			for range 60 * 50 { // a minute at most
				if _, err := os.Stat(log + ".release"); err == nil {
					os.Exit(0)
				}
				time.Sleep(pollInterval)
			}
			os.Exit(4)
		}
		var pid int
		if mode == "child" {
			cmd := successor("child", gen+1)
			must(cmd.Start())
			pid = cmd.Process.Pid
		} else {
			out, err := successor("intermediate", gen+1).Output()
			must(err)
			pid, err = strconv.Atoi(strings.TrimSpace(string(out)))
			must(err)
		}
		must(sdNotify(fmt.Sprintf("MAINPID=%d\nREADY=1", pid)))
		must(sdBarrier())
		line("handed %d gen %d to %d", os.Getpid(), gen, pid)
		os.Exit(0)
	}
}

// sdNotify sends state to NOTIFY_SOCKET, with descriptors fds.
func sdNotify(state string, fds ...int) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if strings.HasPrefix(addr, "@") {
		addr = "\x00" + addr[1:]
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	return unix.Sendmsg(fd, []byte(state), oob, &unix.SockaddrUnix{Name: addr}, 0)
}

// sdBarrier returns once systemd has read every message sent before: it
// closes the descriptor sent with BARRIER=1 then.
func sdBarrier() error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	err = sdNotify("BARRIER=1", int(w.Fd()))
	w.Close()
	if err != nil {
		return err
	}
	r.SetReadDeadline(time.Now().Add(Timeout))
	_, err = io.Copy(io.Discard, r)
	return err
}

func writeFile(t *testing.T, name, content string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
}

// waitFile waits, within Timeout, until file name holds s.
func waitFile(t *testing.T, name, s string) string {
	t.Helper()
	bound := time.Now().Add(Timeout)
	for {
		b, _ := os.ReadFile(name)
		if strings.Contains(string(b), s) {
			return string(b)
		}
		if time.Now().After(bound) {
			t.Fatalf("%s has no %q:\n%s", name, s, b)
		}
		time.Sleep(pollInterval)
	}
}

// readyPID waits for the ready line of generation gen in log, and returns
// its pid.
func readyPID(t *testing.T, log string, gen int) int {
	t.Helper()
	re := regexp.MustCompile(fmt.Sprintf(`(?m)^ready (\d+) gen %d$`, gen))
	bound := time.Now().Add(Timeout)
	for {
		b, _ := os.ReadFile(log)
		if m := re.FindSubmatch(b); m != nil {
			pid, _ := strconv.Atoi(string(m[1]))
			return pid
		}
		if time.Now().After(bound) {
			t.Fatalf("%s has no ready line of generation %d:\n%s", log, gen, b)
		}
		time.Sleep(pollInterval)
	}
}
