//go:build linux

package systemdtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Target is the unit systemd boots into: an empty target, so that nothing
// but what the test starts runs.
const Target = "systemdtest.target"

// Timeout bounds each step (the boot, one systemctl, one wait, the
// teardown), so that a bug fails the test instead of hanging it. It is
// never asserted as a duration.
const Timeout = 60 * time.Second

const systemdPath = "/lib/systemd/systemd"

// pollInterval is how often a wait looks again at state that no event
// reports (systemctl's answers, a cgroup's processes).
const pollInterval = 20 * time.Millisecond

var defaultDepsNo = regexp.MustCompile(`(?mi)^[ \t]*DefaultDependencies[ \t]*=[ \t]*(no|false|off|0)[ \t]*$`)

// A System is a systemd running as PID 1 of namespaces of its own, until
// the test that booted it ends.
type System struct {
	t      testing.TB
	ctx    context.Context // ends at cleanup
	cancel context.CancelFunc
	dir    string // the test's files: units, boot script, logs
	cgroup string // the cgroup2 directory systemd's namespace is rooted at
	mounts []byte // the test's /proc/self/mountinfo before the boot
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
	pid    int           // systemd's pid in the test's PID namespace
	pidNS  string        // systemd's PID namespace, as /proc/PID/ns/pid reads
	units  []string
}

// joinScript runs in the test's namespaces: it joins the cgroup ($1), so
// that systemd's cgroup namespace is rooted there, and enters the new
// namespaces, where boot.sh (in $2) prepares and execs systemd. unshare
// forks (a PID namespace's first process is a child), kills that child if
// it dies itself, and mounts a /proc of the new PID namespace.
const joinScript = `echo $$ > "$1/cgroup.procs" || { echo "systemdtest-skip: cannot join the cgroup $1"; exit 3; }
exec unshare --pid --mount --uts --cgroup --fork --kill-child=SIGKILL --mount-proc --propagation private /bin/sh "$2/boot.sh" "$2"`

// bootScript is PID 1 of the new namespaces until it execs systemd. Its
// mounts are private to the new mount namespace.
const bootScript = `set -eu
# Where the kernel refuses what systemd needs, the test skips; any other
# failure fails it.
skip() { echo "systemdtest-skip: $*"; exit 3; }
mount -t tmpfs -o mode=0755 tmpfs /run || skip "cannot mount a tmpfs on /run"
mkdir -p /run/systemd/system
cp "$1"/units/* /run/systemd/system/
mount -t cgroup2 cgroup2 /sys/fs/cgroup || skip "cannot mount a cgroup2 on /sys/fs/cgroup"
if [ -e /dev/console ]; then
	mount --bind "$1/console" /dev/console
fi
export container=systemdtest
exec ` + systemdPath + ` --system --unit=` + Target + ` --log-target=console --show-status=no
`

// Boot starts systemd with units (file name to content, installed in its
// /run/systemd/system), waits until it is running, and registers its
// teardown with t.Cleanup. Every unit must have DefaultDependencies=no.
// No unit is started: the test starts what it needs with Systemctl. Boot
// skips the test where systemd cannot be booted here.
func Boot(t testing.TB, units map[string]string) *System {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("systemdtest: booting systemd in namespaces needs root")
	}
	if _, err := os.Stat(systemdPath); err != nil {
		t.Skipf("systemdtest: no systemd to boot: %v", err)
	}
	for _, name := range []string{"unshare", "nsenter", "systemctl"} {
		if _, err := exec.LookPath(name); err != nil {
			t.Skipf("systemdtest: %v", err)
		}
	}
	for name, content := range units {
		if name == "" || strings.ContainsAny(name, "/\x00") || name == Target {
			t.Fatalf("systemdtest: bad unit name %q", name)
		}
		if !defaultDepsNo.MatchString(content) {
			t.Fatalf("systemdtest: unit %s lacks DefaultDependencies=no: it would pull the host's boot targets in", name)
		}
	}
	root, err := cgroup2Root()
	if err != nil {
		t.Skipf("systemdtest: %v", err)
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}

	s := &System{t: t, exited: make(chan struct{})}
	dir := t.TempDir()
	files := map[string]string{
		"boot.sh":         bootScript,
		"console":         "",
		"units/" + Target: "[Unit]\nDescription=systemdtest\nDefaultDependencies=no\n",
	}
	for name, content := range units {
		files["units/"+name] = content
		s.units = append(s.units, name)
	}
	if err := os.Mkdir(filepath.Join(dir, "units"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cg, err := os.MkdirTemp(root, "systemdtest-")
	if err != nil {
		t.Skipf("systemdtest: cannot make a cgroup: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	s.ctx, s.cancel, s.dir, s.cgroup, s.mounts = ctx, cancel, dir, cg, mounts
	t.Cleanup(s.teardown)

	out, err := os.Create(filepath.Join(dir, "unshare.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	s.cmd = exec.Command("/bin/sh", "-c", joinScript, "sh", cg, dir)
	s.cmd.Stdout, s.cmd.Stderr = out, out
	// A clean environment: systemd must not see the test's NOTIFY_SOCKET
	// or LISTEN_FDS, should the test itself run under a service manager.
	s.cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	// Should the test's process die without its cleanup, unshare dies,
	// and with it (--kill-child) systemd and its namespace.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		s.cmd = nil
		t.Fatalf("systemdtest: %v", err)
	}
	go func() {
		s.cmd.Wait()
		close(s.exited)
	}()

	ownNS, err := PIDNamespaceOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	bound := time.NewTimer(Timeout)
	defer bound.Stop()
	for s.pid == 0 {
		for _, pid := range Children(s.cmd.Process.Pid) {
			if ns, err := PIDNamespaceOf(pid); err == nil && ns != ownNS {
				s.pid, s.pidNS = pid, ns
			}
		}
		if s.pid == 0 {
			s.pause(bound.C, "the first process of the new namespaces")
		}
	}
	for {
		state, err := s.Systemctl("is-system-running")
		state = strings.TrimSpace(state)
		switch state {
		case "running":
			return s
		case "degraded":
			failed, _ := s.Systemctl("--failed", "--plain", "--no-legend")
			t.Logf("systemdtest: systemd is degraded; failed units:\n%s", failed)
			return s
		}
		s.pause(bound.C, fmt.Sprintf("systemd to run (is-system-running: %q, %v)", state, err))
	}
}

// pause waits a little before a wait looks again, and ends the test if
// systemd has exited or bound has fired.
func (s *System) pause(bound <-chan time.Time, what string) {
	s.t.Helper()
	tick := time.NewTimer(pollInterval)
	defer tick.Stop()
	select {
	case <-tick.C:
	case <-s.exited:
		log := s.file("unshare.log")
		if strings.Contains(log, "systemdtest-skip: ") || strings.Contains(log, "unshare failed") {
			s.t.Skipf("systemdtest: cannot boot systemd in namespaces here: %s", strings.TrimSpace(log))
		}
		s.t.Fatalf("systemdtest: systemd exited (%v) while waiting for %s:\n%s", s.cmd.ProcessState, what, log)
	case <-bound:
		s.t.Fatalf("systemdtest: no %s in %v", what, Timeout)
	}
}

// PID returns systemd's pid as the test's process sees it (systemd itself
// is PID 1 of its namespace).
func (s *System) PID() int { return s.pid }

func (s *System) file(name string) string {
	b, err := os.ReadFile(filepath.Join(s.dir, name))
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// Context returns a context that ends when the test does.
func (s *System) Context() context.Context { return s.ctx }

// Command returns a command that runs name in systemd's namespaces (mount,
// PID, UTS and cgroup), with a clean environment, killed when ctx ends.
func (s *System) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	args = append([]string{"-t", strconv.Itoa(s.pid), "-m", "-p", "-u", "-C", "--", name}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", args...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_COLORS=0"}
	// A child that nsenter leaves behind must not hold Wait on its pipes.
	cmd.WaitDelay = time.Second
	return cmd
}

// Systemctl runs systemctl with args in systemd's namespaces, within
// Timeout, and returns its standard output. The error has its standard
// error.
func (s *System) Systemctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(s.ctx, Timeout)
	defer cancel()
	cmd := s.Command(ctx, "systemctl", append([]string{"--no-pager"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return stdout.String(), fmt.Errorf("systemctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Show returns properties of unit, as systemctl show reads them (MainPID
// is a pid of systemd's namespace).
func (s *System) Show(unit string, props ...string) (map[string]string, error) {
	out, err := s.Systemctl("show", "--property="+strings.Join(props, ","), "--", unit)
	if err != nil {
		return nil, err
	}
	m := make(map[string]string)
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m, nil
}

// WaitShow waits, within Timeout, until cond holds for unit's properties
// props, and returns them. On timeout it returns the last properties
// read, with an error.
func (s *System) WaitShow(unit string, props []string, cond func(map[string]string) bool) (map[string]string, error) {
	bound := time.NewTimer(Timeout)
	defer bound.Stop()
	for {
		m, err := s.Show(unit, props...)
		if err == nil && cond(m) {
			return m, nil
		}
		tick := time.NewTimer(pollInterval)
		select {
		case <-tick.C:
		case <-bound.C:
			tick.Stop()
			if err == nil {
				err = fmt.Errorf("systemdtest: %s: condition not met in %v: %v", unit, Timeout, m)
			}
			return m, err
		case <-s.ctx.Done():
			tick.Stop()
			return m, s.ctx.Err()
		}
	}
}

// UnitProcesses returns the processes of unit's control group, sorted by
// their pids in systemd's namespace (those MainPID names); none once the
// unit has stopped.
func (s *System) UnitProcesses(unit string) ([]Process, error) {
	m, err := s.Show(unit, "ControlGroup")
	if err != nil {
		return nil, err
	}
	cg := m["ControlGroup"]
	if cg == "" {
		return nil, nil
	}
	b, err := os.ReadFile(filepath.Join(s.cgroup, cg, "cgroup.procs"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ps []Process
	for _, f := range strings.Fields(string(b)) {
		hostPID, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("systemdtest: %s: %q in cgroup.procs", unit, f)
		}
		if p, err := readProcess(hostPID); err == nil { // else exited since
			ps = append(ps, p)
		}
	}
	slices.SortFunc(ps, func(a, b Process) int { return a.NSPID - b.NSPID })
	return ps, nil
}

// UnitPIDs returns the pids of UnitProcesses.
func (s *System) UnitPIDs(unit string) ([]int, error) {
	ps, err := s.UnitProcesses(unit)
	pids := make([]int, len(ps))
	for i, p := range ps {
		pids[i] = p.NSPID
	}
	return pids, err
}

// teardown kills systemd, and with it every process of its namespace, then
// removes its cgroups and checks that nothing is left.
func (s *System) teardown() {
	t := s.t
	if t.Failed() && s.pid != 0 {
		// No journal: the units' state is what systemd can tell.
		args := append([]string{"status", "--lines=0", "--"}, s.units...)
		out, err := s.Systemctl(args...)
		if out == "" && err != nil { // else err is the exit status of a unit that is not active
			out = err.Error()
		}
		t.Logf("systemdtest: at the end of the failed test:\n%s", out)
	}
	s.cancel()
	if s.cmd != nil {
		if s.pid != 0 {
			syscall.Kill(s.pid, syscall.SIGKILL)
		}
		s.cmd.Process.Kill() // unshare, which kills its child if still there
		select {
		case <-s.exited:
		case <-time.After(Timeout):
			t.Errorf("systemdtest: unshare (pid %d) did not exit", s.cmd.Process.Pid)
		}
	}
	if s.pidNS != "" {
		left, err := s.waitEmpty()
		if err != nil {
			t.Error(err)
		}
		if len(left) > 0 {
			t.Errorf("systemdtest: processes of systemd's namespace left after SIGKILL: %v", left)
		}
	}
	if err := removeCgroup(s.cgroup); err != nil {
		t.Errorf("systemdtest: %v", err)
	}
	if now, err := os.ReadFile("/proc/self/mountinfo"); err != nil {
		t.Error(err)
	} else if added, removed := diffLines(s.mounts, now); len(added)+len(removed) > 0 {
		t.Errorf("systemdtest: the test's mount table changed:\nadded:\n%s\nremoved:\n%s",
			strings.Join(added, "\n"), strings.Join(removed, "\n"))
	}
}

// waitEmpty waits, within Timeout, until no process of systemd's PID
// namespace is left, and returns those still there.
func (s *System) waitEmpty() ([]Process, error) {
	bound := time.NewTimer(Timeout)
	defer bound.Stop()
	for {
		left, err := ProcessesIn(s.pidNS)
		if err != nil || len(left) == 0 {
			return left, err
		}
		select {
		case <-time.After(pollInterval):
		case <-bound.C:
			return left, nil
		}
	}
}

// removeCgroup removes dir and the cgroups beneath it, depth first. A
// cgroup whose last process has just exited may be busy a little longer.
func removeCgroup(dir string) error {
	var dirs []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	if err != nil {
		return err
	}
	slices.Reverse(dirs)
	bound := time.Now().Add(Timeout)
	for _, d := range dirs {
		for {
			err := os.Remove(d)
			if err == nil || errors.Is(err, fs.ErrNotExist) {
				break
			}
			if !errors.Is(err, syscall.EBUSY) || time.Now().After(bound) {
				procs, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
				return fmt.Errorf("removing cgroup %s: %w (processes: %q)", d, err, procs)
			}
			time.Sleep(pollInterval)
		}
	}
	return nil
}

// cgroup2Root returns where the cgroup2 hierarchy is mounted: on
// /sys/fs/cgroup where it is the only one, on /sys/fs/cgroup/unified
// beside the v1 hierarchies.
func cgroup2Root() (string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if ok && len(f) >= 5 && len(g) >= 1 && g[0] == "cgroup2" && f[3] == "/" {
			return f[4], nil
		}
	}
	return "", errors.New("no cgroup2 hierarchy mounted")
}

// A Process is a process of a PID namespace.
type Process struct {
	HostPID int    // its pid in the test's PID namespace
	NSPID   int    // its pid in its own (innermost) PID namespace
	State   byte   // as /proc/PID/stat says: 'R', 'S', 'Z' (a zombie), ...
	Comm    string // its command name
}

func (p Process) String() string {
	return fmt.Sprintf("%s[%d, %d in its namespace, %c]", p.Comm, p.HostPID, p.NSPID, p.State)
}

// PIDNamespaceOf returns the PID namespace of process pid, as
// /proc/PID/ns/pid names it.
func PIDNamespaceOf(pid int) (string, error) {
	return os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
}

// ProcessesIn returns every process of PID namespace ns (as
// PIDNamespaceOf names it), zombies included.
func ProcessesIn(ns string) ([]Process, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var ps []Process
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if n, err := PIDNamespaceOf(pid); err != nil || n != ns {
			continue
		}
		if p, err := readProcess(pid); err == nil {
			ps = append(ps, p)
		}
	}
	return ps, nil
}

// readProcess reads process pid (a pid of the test's namespace) from
// /proc.
func readProcess(pid int) (Process, error) {
	p := Process{HostPID: pid}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return p, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				p.NSPID, _ = strconv.Atoi(f[len(f)-1])
			}
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return p, err
	}
	// PID (COMM) STATE PPID ...: COMM may hold spaces and parentheses.
	open, end := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
	if open < 0 || end < open || len(stat) < end+3 {
		return p, fmt.Errorf("systemdtest: /proc/%d/stat: %q", pid, stat)
	}
	p.Comm, p.State = string(stat[open+1:end]), stat[end+2]
	return p, nil
}

// Children returns the processes whose parent is process ppid (pids of the
// test's namespace): for example the first process of the PID namespace
// that `unshare --pid --fork` made.
func Children(ppid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		end := bytes.LastIndexByte(stat, ')')
		if end < 0 {
			continue
		}
		f := strings.Fields(string(stat[end+1:]))
		if len(f) >= 2 && f[1] == strconv.Itoa(ppid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// diffLines returns the lines of now not in before, and those of before
// not in now.
func diffLines(before, now []byte) (added, removed []string) {
	b := strings.Split(strings.TrimSpace(string(before)), "\n")
	n := strings.Split(strings.TrimSpace(string(now)), "\n")
	for _, l := range n {
		if !slices.Contains(b, l) {
			added = append(added, l)
		}
	}
	for _, l := range b {
		if !slices.Contains(n, l) {
			removed = append(removed, l)
		}
	}
	return added, removed
}
