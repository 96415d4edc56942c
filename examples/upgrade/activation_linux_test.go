//go:build linux

package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/nettest"
	"golang.org/x/sys/unix"

	"github.com/udppool/udppool/internal/systemdtest"
)

// TestSocketActivate runs the command under systemd-socket-activate, which
// binds the address, waits for the first datagram and then execs the
// command with the socket (LISTEN_FDS): the first request, whose datagram
// waits on the socket, is answered, the server serves on that socket and
// binds none of its own, and hands it over at an upgrade.
func TestSocketActivate(t *testing.T) {
	if !nettest.SupportsIPv4() {
		t.Skip("host has no IPv4 loopback")
	}
	activate, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip(err)
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("cannot become a subreaper to reap the successor: %v", err)
	}
	t.Cleanup(func() { unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })
	bin := build(t)
	certFile, keyFile, roots := certificateFiles(t)
	port := freePort(t, "127.0.0.1")
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	url := "https://" + addr + "/"

	s := start(t, activate, "--datagram", "-l", addr,
		bin, "-listen", addr, "-cert", certFile, "-key", keyFile, "-drain", "2s")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("output:\n%s", s.output())
		}
	})
	pid := s.first.Process.Pid // the server's too: systemd-socket-activate execs it
	var sock string
	bound := time.Now().Add(testTimeout)
	for sock == "" {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/3", pid)); err == nil && strings.HasPrefix(l, "socket:") {
			sock = l
		} else if time.Now().After(bound) {
			t.Fatalf("systemd-socket-activate (pid %d) has no socket on descriptor 3: %v\n%s", pid, err, s.output())
		} else {
			time.Sleep(10 * time.Millisecond)
		}
	}

	a := freshGet(t, roots, url) // execs the server
	first := s.wait("ready", 1)
	if a != first.answer || first.pid != pid {
		t.Fatalf("the first request was answered by %+v; generation 1 is %+v, started as %d", a, first.answer, pid)
	}
	checkSocket(t, port, sock, first.pid, "generation 1")

	l := startLoad(t, roots, url)
	l.waitServed(t, first.answer, 20)
	syscall.Kill(first.pid, syscall.SIGHUP)
	next := s.wait("ready", 2)
	l.waitServed(t, next.answer, 20)
	if exit := s.wait("exit", 1); !strings.Contains(exit.line, ": 0 of ") {
		t.Errorf("generation 1 did not drain: %s", exit.line)
	}
	s.reap(first.pid)
	// The successor serves on the activated socket, handed over. As root
	// it could bind more sockets to the port (into a reuseport group):
	// TestSystemdSocketUnit, with an unprivileged user, rules that out.
	if held := processSockets(next.pid); !slices.Contains(held, sock) {
		t.Errorf("generation 2 (pid %d) does not hold the activated socket %s; it holds %v", next.pid, sock, held)
	}
	t.Logf("after the upgrade, sockets on UDP port %d: %v (activated: %s)", port, udpSockets(t, port), sock)
	requests, failed := l.report(t, "systemd-socket-activate")

	syscall.Kill(next.pid, syscall.SIGTERM)
	s.wait("exit", 2)
	s.reap(next.pid)
	checkOutput(t, s.output())
	t.Logf("systemd-socket-activate: first request answered by %+v, 1 upgrade, %d requests, %d failed; servers' output:\n%s",
		a, requests, failed, s.output())
}

// TestSystemdSocketUnit runs the command as h3up.service, activated by
// h3up.socket, under a real systemd, as an unprivileged user on a port
// below 1024 that it could not bind itself: the first request starts the
// service and is answered, the service serves on systemd's socket, and
// still does after a `systemctl reload`.
func TestSystemdSocketUnit(t *testing.T) {
	if !nettest.SupportsIPv4() {
		t.Skip("host has no IPv4 loopback")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip(err)
	}
	uid, err := strconv.Atoi(nobody.Uid)
	if err != nil || uid == 0 {
		t.Skipf("user nobody has uid %q", nobody.Uid)
	}
	port := privilegedPort(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	url := "https://" + addr + "/"

	// Files that nobody can read, in a directory it can enter.
	dir, err := os.MkdirTemp("", "h3up-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	certFile, keyFile, roots := certificateFiles(t)
	bin := filepath.Join(dir, "h3up")
	for _, f := range []struct {
		from, to string
		mode     os.FileMode
	}{{build(t), bin, 0o755}, {certFile, filepath.Join(dir, "cert.pem"), 0o644}, {keyFile, filepath.Join(dir, "key.pem"), 0o644}} {
		b, err := os.ReadFile(f.from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f.to, b, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	log := filepath.Join(dir, "h3up.log")
	if err := os.WriteFile(log, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	// Chmod, not the umask: systemd may open the output as the user.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(log, 0o666); err != nil {
		t.Fatal(err)
	}
	r := unitSubst{bin: bin, addr: addr, certFile: filepath.Join(dir, "cert.pem"), keyFile: filepath.Join(dir, "key.pem"),
		log: log, service: []string{"User=nobody"}}
	sd := systemdtest.Boot(t, map[string]string{
		"h3up.socket":  deployUnit(t, "h3up.socket", r),
		"h3up.service": deployUnit(t, "h3up.service", r),
	})
	if _, err := sd.Systemctl("start", "h3up.socket"); err != nil {
		t.Fatal(err)
	}
	if m, err := sd.Show("h3up.socket", "ActiveState", "SubState"); err != nil || m["SubState"] != "listening" {
		t.Fatalf("h3up.socket after start: %v, %v", m, err)
	}
	socks := udpSockets(t, port)
	if len(socks) != 1 {
		t.Fatalf("sockets on UDP port %d after h3up.socket started: %v, want systemd's", port, socks)
	}
	sock := socks[0]

	a := freshGet(t, roots, url) // starts h3up.service
	first := waitLog(t, log, "ready", 1)
	if a != first.answer {
		t.Fatalf("the first request was answered by %+v; generation 1 is %+v", a, first.answer)
	}
	waitServing(t, sd, "h3up.service", first.pid, log, "after the first request")
	checkUnitSocket(t, sd, port, sock, first.pid, uid, "generation 1")

	l := startLoad(t, roots, url)
	l.waitServed(t, first.answer, 20)
	if _, err := sd.Systemctl("reload", "h3up.service"); err != nil {
		t.Fatalf("reload: %v\n%s", err, readLog(log))
	}
	next := waitLog(t, log, "ready", 2)
	waitServing(t, sd, "h3up.service", next.pid, log, "after the reload")
	l.waitServed(t, next.answer, 20)
	if exit := waitLog(t, log, "exit", 1); !strings.Contains(exit.line, ": 0 of ") {
		t.Errorf("generation 1 did not drain: %s", exit.line)
	}
	waitUnitPIDs(t, sd, "h3up.service", []int{next.pid}, "once generation 1 has drained")
	checkUnitSocket(t, sd, port, sock, next.pid, uid, "generation 2")
	requests, failed := l.report(t, "h3up.socket")

	stop(t, sd, log, 2, "h3up.service", "h3up.socket")
	t.Logf("h3up.socket, User=nobody, port %d: first request answered by %+v, 1 reload, %d requests, %d failed; output:\n%s",
		port, a, requests, failed, readLog(log))
}

// privilegedPort returns a free UDP port of 127.0.0.1 that an unprivileged
// process cannot bind.
func privilegedPort(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")
	if err != nil {
		t.Skip(err)
	}
	limit, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || limit < 2 {
		t.Skipf("net.ipv4.ip_unprivileged_port_start is %q: an unprivileged service could bind its port itself", b)
	}
	for p := min(limit, 1024) - 1; p > 0 && p >= limit-200; p-- {
		c, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err == nil {
			c.Close()
			return p
		}
	}
	t.Skipf("no free UDP port below %d", limit)
	return 0
}

// checkSocket checks that the only socket bound to UDP port is sock, and
// that process pid holds it.
func checkSocket(t *testing.T, port int, sock string, pid int, who string) {
	t.Helper()
	if socks := udpSockets(t, port); !slices.Equal(socks, []string{sock}) {
		t.Errorf("%s: sockets on UDP port %d are %v, want only the activated %s", who, port, socks, sock)
	}
	if held := processSockets(pid); !slices.Contains(held, sock) {
		t.Errorf("%s (pid %d) does not hold the activated socket %s; it holds %v", who, pid, sock, held)
	}
}

// checkUnitSocket is checkSocket for the process of sd's h3up.service with
// pid nsPID (a pid of sd's namespace), which must run as uid.
func checkUnitSocket(t *testing.T, sd *systemdtest.System, port int, sock string, nsPID, uid int, who string) {
	t.Helper()
	ps, err := sd.UnitProcesses("h3up.service")
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(ps, func(p systemdtest.Process) bool { return p.NSPID == nsPID })
	if i < 0 {
		t.Fatalf("%s: no process %d in h3up.service: %v", who, nsPID, ps)
	}
	hostPID := ps[i].HostPID
	if got := processUID(t, hostPID); got != uid {
		t.Errorf("%s runs as uid %d, want %d", who, got, uid)
	}
	checkSocket(t, port, sock, hostPID, who)
}

// udpSockets returns the sockets (as /proc/PID/fd names them) bound to
// UDP port of any address, IPv4 or IPv6, in the test's network namespace.
func udpSockets(t *testing.T, port int) []string {
	t.Helper()
	var socks []string
	for _, name := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		f, err := os.Open(name)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // the header
		for sc.Scan() {
			// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
			fl := strings.Fields(sc.Text())
			if len(fl) < 10 {
				continue
			}
			_, hexPort, ok := strings.Cut(fl[1], ":")
			if p, err := strconv.ParseUint(hexPort, 16, 16); ok && err == nil && int(p) == port {
				socks = append(socks, "socket:["+fl[9]+"]")
			}
		}
		f.Close()
	}
	slices.Sort(socks)
	return socks
}

// processSockets returns the sockets that process pid holds.
func processSockets(pid int) []string {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	var socks []string
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && strings.HasPrefix(l, "socket:") {
			socks = append(socks, l)
		}
	}
	return socks
}

// heldUDPSockets returns the UDP sockets on port that process pid holds,
// each once however many descriptors it has for it.
func heldUDPSockets(t *testing.T, port, pid int) []string {
	t.Helper()
	held := processSockets(pid)
	var socks []string
	for _, s := range udpSockets(t, port) {
		if slices.Contains(held, s) && !slices.Contains(socks, s) {
			socks = append(socks, s)
		}
	}
	return socks
}

// waitSockets waits until the UDP sockets on port are n, all held by
// process pid: a successor lets go of its predecessor's sockets when it
// learns that the predecessor is gone, which is a moment after its exit.
func waitSockets(t *testing.T, port, pid, n int) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		held, all := heldUDPSockets(t, port, pid), udpSockets(t, port)
		if len(held) == n && len(all) == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d holds %d UDP sockets on port %d and the port has %d, want %d: %v of %v",
				pid, len(held), port, len(all), n, held, all)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// processUID returns the real uid of process pid.
func processUID(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				uid, _ := strconv.Atoi(f[0])
				return uid
			}
		}
	}
	t.Fatalf("no Uid in /proc/%d/status", pid)
	return -1
}
