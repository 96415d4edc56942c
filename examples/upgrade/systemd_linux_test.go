//go:build linux

package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/nettest"

	"github.com/udppool/udppool/internal/systemdtest"
)

// reloads is how many upgrades each deployment goes through.
const reloads = 5

// unitProps are the properties of a service that the tests check.
var unitProps = []string{"ActiveState", "SubState", "MainPID", "Result", "NRestarts"}

// TestSystemdUnits runs the command as each service unit shipped in
// deploy/, under a real systemd: 5 `systemctl reload`s under HTTP/3 load
// (a kept connection and new connections). Every request is answered;
// after each reload the unit is active (running) with the pid that now
// answers as its MainPID, and once the old generation has drained it has
// left the unit's cgroup. `systemctl stop` ends the unit with success.
func TestSystemdUnits(t *testing.T) {
	if !nettest.SupportsIPv4() {
		t.Skip("host has no IPv4 loopback")
	}
	bin := build(t)
	certFile, keyFile, roots := certificateFiles(t)
	for _, unit := range []string{"h3up.service", "h3up-pidfile.service"} {
		t.Run(unit, func(t *testing.T) {
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t, "127.0.0.1")))
			log := filepath.Join(t.TempDir(), "h3up.log")
			sd := systemdtest.Boot(t, map[string]string{
				unit: deployUnit(t, unit, unitSubst{bin: bin, addr: addr, certFile: certFile, keyFile: keyFile, log: log}),
			})
			if _, err := sd.Systemctl("start", unit); err != nil {
				t.Fatalf("%v\n%s", err, readLog(log))
			}
			cur := waitLog(t, log, "ready", 1)
			waitServing(t, sd, unit, cur.pid, log, "after start")
			l := startLoad(t, roots, "https://"+addr+"/")
			l.waitServed(t, cur.answer, 20)
			for i := 1; i <= reloads; i++ {
				if _, err := sd.Systemctl("reload", unit); err != nil {
					t.Fatalf("reload %d: %v\n%s", i, err, readLog(log))
				}
				next := waitLog(t, log, "ready", i+1)
				waitServing(t, sd, unit, next.pid, log, fmt.Sprintf("after reload %d", i))
				l.waitServed(t, next.answer, 20)
				if exit := waitLog(t, log, "exit", i); !strings.Contains(exit.line, ": 0 of ") {
					t.Errorf("reload %d: generation %d did not drain: %s", i, i, exit.line)
				}
				waitUnitPIDs(t, sd, unit, []int{next.pid}, fmt.Sprintf("after reload %d, once generation %d has drained", i, i))
				cur = next
			}
			requests, failed := l.report(t, unit)

			exit := stop(t, sd, log, reloads+1, unit)
			t.Logf("%s: %d reloads, %d requests, %d failed; last: %s", unit, reloads, requests, failed, exit.line)
		})
	}
}

// stop stops units (the service first) with systemctl, and checks that
// the service has stopped with success, its last generation gen having
// drained and exited, not been killed, and returns that generation's exit
// line.
func stop(t *testing.T, sd *systemdtest.System, log string, gen int, units ...string) serverLine {
	t.Helper()
	if _, err := sd.Systemctl(append([]string{"stop"}, units...)...); err != nil {
		t.Fatalf("stop: %v\n%s", err, readLog(log))
	}
	// systemctl stop returns once the unit's processes have exited.
	out := readLog(log)
	m, err := sd.Show(units[0], append(unitProps, "ExecMainCode", "ExecMainStatus")...)
	if err != nil {
		t.Fatal(err)
	}
	if m["ActiveState"] != "inactive" || m["Result"] != "success" || m["NRestarts"] != "0" {
		t.Errorf("after stop: %s is %v, want inactive, result success, no restart (ExecMainCode 2 is killed, 1 exited)", units[0], m)
	}
	waitUnitPIDs(t, sd, units[0], nil, "after stop")
	checkOutput(t, out)
	exit, ok := findLog(out, "exit", gen)
	if !ok {
		t.Errorf("after stop: no exit line of generation %d, the main process (killed, not drained?):\n%s", gen, out)
	}
	return exit
}

// unitSubst is what a test puts in a shipped unit file instead of the
// deployment's paths, address and drain.
type unitSubst struct {
	bin, addr, certFile, keyFile string
	log                          string   // the service's output, appended (there is no journal)
	service                      []string // more [Service] settings
}

var (
	listenFlag     = regexp.MustCompile(`-listen[ =]\S+`)
	listenDatagram = regexp.MustCompile(`(?m)^ListenDatagram=.*$`)
	listenStream   = regexp.MustCompile(`(?m)^ListenStream=.*$`)
)

// deployUnit returns unit file deploy/name with the test's binary,
// address, certificate files and a short drain instead of the shipped
// ones, and DefaultDependencies=no, so that it runs in a test's systemd.
// A shipped file that lacks what the test substitutes fails the test, so
// that the files and this test cannot drift apart unseen.
func deployUnit(t *testing.T, name string, r unitSubst) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("deploy", name))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	replace := func(old, new string) {
		t.Helper()
		if !strings.Contains(s, old) {
			t.Fatalf("deploy/%s has no %q", name, old)
		}
		s = strings.ReplaceAll(s, old, new)
	}
	replaceRE := func(re *regexp.Regexp, new string) {
		t.Helper()
		if n := len(re.FindAllString(s, -1)); n != 1 {
			t.Fatalf("deploy/%s has %d matches of %s, want 1", name, n, re)
		}
		s = re.ReplaceAllLiteralString(s, new)
	}
	replace("[Unit]\n", "[Unit]\nDefaultDependencies=no\n")
	if strings.HasSuffix(name, ".socket") {
		replaceRE(listenDatagram, "ListenDatagram="+r.addr)
		replaceRE(listenStream, "ListenStream="+r.addr)
	} else {
		replace("/usr/local/bin/h3up", r.bin)
		replace("/etc/h3up/cert.pem", r.certFile)
		replace("/etc/h3up/key.pem", r.keyFile)
		replace("-drain 30s", "-drain 2s")
		replaceRE(listenFlag, "-listen "+r.addr)
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("%s's output:\n%s", name, readLog(r.log))
			}
		})
		more := append([]string{"StandardOutput=append:" + r.log, "StandardError=append:" + r.log}, r.service...)
		replace("[Service]\n", "[Service]\n"+strings.Join(more, "\n")+"\n")
	}
	if strings.Contains(s, "/etc/h3up") || strings.Contains(s, "/usr/local/bin/h3up") {
		t.Fatalf("deploy/%s: deployment paths left after the substitutions:\n%s", name, s)
	}
	return s
}

// waitServing waits until unit is active (running) with MainPID pid, or
// has stopped, and fails the test in that case.
func waitServing(t *testing.T, sd *systemdtest.System, unit string, pid int, log, when string) {
	t.Helper()
	m, err := sd.WaitShow(unit, unitProps, func(m map[string]string) bool {
		return m["ActiveState"] == "active" && m["SubState"] == "running" && m["MainPID"] == strconv.Itoa(pid) ||
			m["ActiveState"] == "inactive" || m["ActiveState"] == "failed"
	})
	if err != nil || m["ActiveState"] != "active" || m["MainPID"] != strconv.Itoa(pid) {
		t.Fatalf("%s: %s is %v (%v), want active (running) with MainPID %d, the pid that answers\n%s",
			when, unit, m, err, pid, readLog(log))
	}
}

// waitUnitPIDs waits, within testTimeout, until the processes of unit's
// cgroup are want.
func waitUnitPIDs(t *testing.T, sd *systemdtest.System, unit string, want []int, when string) {
	t.Helper()
	bound := time.Now().Add(testTimeout)
	for {
		pids, err := sd.UnitPIDs(unit)
		if err == nil && slices.Equal(pids, want) {
			return
		}
		if time.Now().After(bound) {
			t.Fatalf("%s: processes of %s are %v (%v), want %v", when, unit, pids, err, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitLog returns the first line of the servers' output file log that
// starts with word and names generation gen, waiting within testTimeout.
func waitLog(t *testing.T, log, word string, gen int) serverLine {
	t.Helper()
	bound := time.Now().Add(testTimeout)
	for {
		out := readLog(log)
		if l, ok := findLog(out, word, gen); ok {
			return l
		}
		if time.Now().After(bound) {
			t.Fatalf("no %q of generation %d in %s:\n%s", word, gen, log, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// findLog returns the first line of the servers' output out that starts
// with word and names generation gen.
func findLog(out, word string, gen int) (serverLine, bool) {
	for _, l := range strings.Split(out, "\n") {
		if a, ok := parseAnswer(l); ok && strings.HasPrefix(l, word+" ") && a.gen == gen {
			return serverLine{l, a}, true
		}
	}
	return serverLine{}, false
}

// checkOutput fails the test if the servers' output tells of a data race
// or a panic, which a generation's exit status would tell only to its
// parent or to systemd, not to the test.
func checkOutput(t *testing.T, out string) {
	t.Helper()
	for _, bad := range []string{"WARNING: DATA RACE", "panic: "} {
		if strings.Contains(out, bad) {
			t.Errorf("the servers' output has %q:\n%s", bad, out)
		}
	}
}

// readLog returns the servers' output so far.
func readLog(log string) string {
	b, err := os.ReadFile(log)
	if err != nil {
		return err.Error()
	}
	return string(b)
}
