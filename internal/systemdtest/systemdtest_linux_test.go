//go:build linux

package systemdtest

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
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
