package udppool

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/sys/unix"

	"github.com/udppool/udppool/internal/systemd"
)

// inProc is an upgrade whose first generation is the test process itself
// (an Upgrader made by newTestUpgrader, serving on a pool of the test) and
// whose successors are child processes running upgradeChild, so that a
// test can act on the predecessor's Upgrader between the steps of a
// hand-over.
type inProc struct {
	*upgradeServers
	u       *Upgrader
	pool    *Pool
	tr      *Transport
	failDir string
	logs    *syncBuffer

	mu   sync.Mutex
	cmds []*exec.Cmd
}

// startInProc makes the test's Upgrader and its pool's transport on a free
// dual-stack port. Every successor started is killed at cleanup.
func startInProc(t *testing.T, opts ...UpgradeOption) *inProc {
	t.Helper()
	return startInProcOn(t, false, opts...)
}

// startInProcOn is startInProc where, with anyPort, every generation asks
// for port 0.
func startInProcOn(t *testing.T, anyPort bool, opts ...UpgradeOption) *inProc {
	t.Helper()
	return startInProcEnv(t, anyPort, nil, opts...)
}

// startInProcEnv is startInProcOn with more environment for successors.
func startInProcEnv(t *testing.T, anyPort bool, env []string, opts ...UpgradeOption) *inProc {
	t.Helper()
	return startInProcWith(t, anyPort, env, nil, opts...)
}

// startInProcWith is startInProcEnv with options for the test process's
// transport.
func startInProcWith(t *testing.T, anyPort bool, env []string, topts []TransportOption, opts ...UpgradeOption) *inProc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	asked := 0
	if !anyPort {
		asked = int(freePort(t))
	}
	ip := &inProc{
		upgradeServers: &upgradeServers{t: t, port: uint16(asked), changed: make(chan struct{}), done: make(chan struct{})},
		failDir:        t.TempDir(),
		logs:           &syncBuffer{},
	}
	out, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	go ip.read(out)
	watch := watchPipe(t)
	command := func(ctx context.Context) (*exec.Cmd, error) {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.ExtraFiles = []*os.File{watch}
		cmd.Env = append(os.Environ(),
			upgradeChildEnv+"="+strconv.Itoa(asked),
			upgradeDrainEnv+"=1s",
			upgradeFailEnv+"="+filepath.Join(ip.failDir, "fail"),
			upgradeTrustEnv+"=1", // the default must be safe
			upgradeWatchEnv+"=3",
		)
		cmd.Env = append(cmd.Env, env...)
		cmd.Stdout, cmd.Stderr = w, os.Stderr
		ip.mu.Lock()
		ip.cmds = append(ip.cmds, cmd)
		ip.mu.Unlock()
		return cmd, nil
	}
	opts = append([]UpgradeOption{WithUpgradeCommand(command), WithReadyTimeout(testTimeout),
		WithUpgradeLogger(slog.New(slog.NewTextHandler(ip.logs, nil)))}, opts...)
	ip.u = newTestUpgrader(t, opts...)
	ip.pool = New(WithUpgrader(ip.u))
	ip.tr, err = ip.pool.Transport(context.Background(), "udp", ":"+strconv.Itoa(asked), topts...)
	if err != nil {
		t.Fatal(err)
	}
	ip.port = uint16(ip.tr.LocalAddr().(*net.UDPAddr).Port)
	t.Cleanup(func() {
		ip.tr.Close()
		ip.u.Stop()
		ip.pool.Close()
		ip.mu.Lock()
		cmds := ip.cmds
		ip.mu.Unlock()
		// Released after a hand-over or not, each successor is a child of
		// this process: kill and reap it by pid.
		for _, pid := range ip.pids() {
			syscall.Kill(pid, syscall.SIGKILL)
			var ws unix.WaitStatus
			unix.Wait4(pid, &ws, 0, nil)
		}
		_ = cmds
		w.Close()
		select {
		case <-ip.done:
		case <-time.After(testTimeout):
			t.Errorf("successors' output still open")
		}
	})
	return ip
}

// pids returns the successors' pids, from their "bound" lines.
func (ip *inProc) pids() []int {
	ip.upgradeServers.mu.Lock()
	defer ip.upgradeServers.mu.Unlock()
	var pids []int
	for _, l := range ip.lines {
		if sl, ok := parseServerLine(l); ok && sl.word == "bound" {
			pids = append(pids, sl.pid)
		}
	}
	return pids
}

// serve runs a listener on ip.tr that answers "pid N gen 1"; closing the
// listener (or Shutdown) ends it.
func (ip *inProc) serve() *Listener {
	ip.t.Helper()
	ln, err := ip.tr.Listen(&tls.Config{Certificates: []tls.Certificate{testServerCert(ip.t)}, NextProtos: []string{testALPN}},
		&quic.Config{MaxIdleTimeout: 30 * time.Second})
	if err != nil {
		ip.t.Fatal(err)
	}
	answer := func() string { return fmt.Sprintf("pid %d gen %d", os.Getpid(), ip.u.Generation()) }
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			go serveConn(conn, answer)
		}
	})
	ip.t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln
}

// upgradeAsync runs Upgrade and returns its result's channel.
func (ip *inProc) upgradeAsync() <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- ip.u.Upgrade(context.Background()) }()
	return ch
}

func waitErr(t *testing.T, ch <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(testTimeout):
		t.Fatalf("%s: no result after %v", what, testTimeout)
		return nil
	}
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(testTimeout):
		t.Fatalf("%s: not after %v", what, testTimeout)
	}
}

// requestAddr makes one request on a fresh connection.
func requestAddr(ctx context.Context, addr string) (string, error) {
	conn, err := dialUpgrade(ctx, addr)
	if err != nil {
		return "", err
	}
	defer conn.CloseWithError(0, "")
	return request(ctx, conn)
}

// TestUpgradeSuccessorDiesAfterReady kills the successor after the
// hand-over while the predecessor drains: the predecessor must learn it
// (Resumed), take new handshakes back (fresh connections answered by it),
// keep its connections, log it, and be able to upgrade again.
func TestUpgradeSuccessorDiesAfterReady(t *testing.T) {
	for _, mode := range []string{"steer", "inherit", "steer/sockets=2"} {
		t.Run(mode, func(t *testing.T) {
			var env []string
			var topts []TransportOption
			switch mode {
			case "inherit":
				env = []string{upgradeModeEnv + "=inherit"} // the successor's choice
			case "steer/sockets=2":
				env = []string{upgradeSocketsEnv + "=2"}
				topts = []TransportOption{WithSockets(2)}
			}
			ip := startInProcWith(t, false, env, topts, WithInheritance(mode == "inherit"))
			ln := ip.serve()
			addr := fmt.Sprintf("127.0.0.1:%d", ip.port)
			self := fmt.Sprintf("pid %d gen 1", os.Getpid())
			ctx, cancel := context.WithTimeout(context.Background(), 2*testTimeout)
			defer cancel()
			old, err := dialUpgrade(ctx, addr)
			if err != nil {
				t.Fatal(err)
			}
			defer old.CloseWithError(0, "")
			if a, err := request(ctx, old); err != nil || a != self {
				t.Fatalf("before the upgrade: %q, %v", a, err)
			}

			if err := waitErr(t, ip.upgradeAsync(), "Upgrade"); err != nil {
				t.Fatal(err)
			}
			next := ip.wait("ready", 2)
			waitClosed(t, ip.u.Exit(), "Exit")
			wantState(t, ip.u, stateHanded, "the hand-over")
			if err := ip.u.Upgrade(ctx); !errors.Is(err, ErrUpgradeInProgress) {
				t.Errorf("Upgrade after the hand-over: %v, want ErrUpgradeInProgress", err)
			}
			if err := ip.u.Ready(); err != nil {
				t.Errorf("Ready after the hand-over: %v", err)
			}
			wantState(t, ip.u, stateHanded, "Upgrade and Ready after the hand-over")
			resumed := ip.u.Resumed()
			go ln.Shutdown(ctx) // the drain, as an application starts it
			if a, err := requestAddr(ctx, addr); err != nil || !strings.HasPrefix(a, fmt.Sprintf("pid %d gen 2", next.pid)) {
				t.Fatalf("after the hand-over: %q, %v; want the successor", a, err)
			}

			syscall.Kill(next.pid, syscall.SIGKILL)
			waitClosed(t, resumed, "Resumed after the successor died")
			wantState(t, ip.u, stateAlone, "the successor died")
			ip.serve() // listen again, as Resumed asks
			for i := range 5 {
				if a, err := requestAddr(ctx, addr); err != nil || a != self {
					t.Fatalf("fresh request %d after the successor died: %q, %v; want %q", i, a, err, self)
				}
			}
			if a, err := request(ctx, old); err != nil || !strings.HasPrefix(a, self) {
				t.Errorf("the drained connection after the successor died: %q, %v", a, err)
			}
			for _, want := range []string{
				fmt.Sprintf(`msg="udppool: successor started" pid=%d process_generation=1 peer_pid=%d peer_generation=2`, os.Getpid(), next.pid),
				fmt.Sprintf(`msg="udppool: successor ready; handing over" pid=%d process_generation=1 peer_pid=%d`, os.Getpid(), next.pid),
				fmt.Sprintf(`msg="udppool: successor exited after taking over; this process takes new handshakes back" pid=%d process_generation=1 peer_pid=%d`, os.Getpid(), next.pid),
			} {
				if !strings.Contains(ip.logs.String(), want) {
					t.Errorf("no log record %s; log:\n%s", want, ip.logs)
				}
			}
			// And upgrade again.
			if err := waitErr(t, ip.upgradeAsync(), "second Upgrade"); err != nil {
				t.Fatalf("Upgrade after the successor died: %v", err)
			}
			again := ip.waitCount2("ready", 2)
			if a, err := requestAddr(ctx, addr); err != nil || !strings.HasPrefix(a, fmt.Sprintf("pid %d gen 2", again.pid)) {
				t.Errorf("after the second hand-over: %q, %v; want pid %d", a, err, again.pid)
			}
			if st := ip.u.Stats(); st != (UpgradeStats{Started: 2, Succeeded: 2}) {
				t.Errorf("Stats after two hand-overs: %+v", st)
			}
		})
	}
}

// waitCount2 returns the second line of word from gen.
func (s *upgradeServers) waitCount2(word string, gen int) serverLine {
	s.t.Helper()
	s.waitCount(word, gen, 2)
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, l := range s.lines {
		if sl, ok := parseServerLine(l); ok && sl.word == word && sl.gen == gen {
			if n++; n == 2 {
				return sl
			}
		}
	}
	s.t.Fatal("lost a line")
	return serverLine{}
}

// TestUpgradeStopRacesUpgrade calls Stop while a successor starts: Upgrade
// must fail, install nothing, close no Exit, and end the successor, even
// if the successor becomes ready after Stop.
func TestUpgradeStopRacesUpgrade(t *testing.T) {
	ip := startInProc(t)
	go0 := filepath.Join(ip.failDir, "go")
	if err := os.WriteFile(filepath.Join(ip.failDir, "fail"), []byte("wait "+go0), 0o666); err != nil {
		t.Fatal(err)
	}
	done := ip.upgradeAsync()
	bound := ip.wait("bound", 2)
	wantState(t, ip.u, stateStarting, "the successor bound")
	if err := ip.u.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(go0, nil, 0o666); err != nil { // the successor may be ready now
		t.Fatal(err)
	}
	err := waitErr(t, done, "Upgrade racing Stop")
	if !errors.Is(err, ErrUpgraderStopped) {
		t.Errorf("Upgrade racing Stop: %v, want ErrUpgraderStopped", err)
	}
	ip.u.mu.Lock()
	succ, at := ip.u.succ, ip.u.at
	ip.u.mu.Unlock()
	if succ != nil || at != stateStopped {
		t.Errorf("after Stop raced Upgrade: state %v, successor %v; want Stopped, none", at, succ)
	}
	select {
	case <-ip.u.Exit():
		t.Errorf("Exit closed after Stop without a hand-over")
	default:
	}
	if want := fmt.Sprintf(`level=ERROR msg="udppool: successor failed before ready; this process serves on" pid=%d process_generation=1 peer_pid=%d`, os.Getpid(), bound.pid); !strings.Contains(ip.logs.String(), want) {
		t.Errorf("no log record %s; log:\n%s", want, ip.logs)
	}
	if err := syscall.Kill(bound.pid, 0); err == nil {
		// Not reaped means not ended: the Upgrader reaps what it kills.
		t.Errorf("successor %d still runs after Upgrade returned", bound.pid)
	}
	if st := ip.u.Stats(); st != (UpgradeStats{Started: 1, Failed: 1}) {
		t.Errorf("Stats after an upgrade that Stop ended: %+v", st)
	}
}

// TestUpgradePortZero upgrades a server whose socket was bound for port 0:
// the successor must serve on the port the socket got, not on a new one.
func TestUpgradePortZero(t *testing.T) {
	ip := startInProcOn(t, true)
	ip.serve()
	if err := waitErr(t, ip.upgradeAsync(), "Upgrade"); err != nil {
		t.Fatal(err)
	}
	b := ip.wait("bound", 2)
	if want := fmt.Sprintf("port %d", ip.port); b.rest != want {
		t.Fatalf("successor bound %q, want %q (the predecessor's)", b.rest, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if a, err := requestAddr(ctx, fmt.Sprintf("127.0.0.1:%d", ip.port)); err != nil || !strings.HasPrefix(a, fmt.Sprintf("pid %d gen 2", b.pid)) {
		t.Errorf("after the upgrade: %q, %v; want the successor on port %d", a, err, ip.port)
	}
}

// TestUpgradeForeignSocketInGroup joins a plain same-user SO_REUSEPORT
// socket to the server's port before the upgrade: the successor must find
// that the group's index 1 is not its own and refuse the upgrade with an
// error that names the foreign socket, and the old process serves on; the
// foreign socket must get no handshake.
func TestUpgradeForeignSocketInGroup(t *testing.T) {
	ip := startInProc(t)
	ip.serve()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp", fmt.Sprintf(":%d", ip.port))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	foreign := pc.(*net.UDPConn)
	ino := inodeOf(t, foreign)

	err = waitErr(t, ip.upgradeAsync(), "Upgrade")
	if err == nil {
		t.Errorf("Upgrade succeeded with a foreign socket in the group")
	} else {
		if !errors.Is(err, ErrUpgradeFailed) {
			t.Errorf("Upgrade: %v, want ErrUpgradeFailed", err)
		}
		if !strings.Contains(err.Error(), fmt.Sprintf("inode %d", ino)) {
			t.Errorf("Upgrade's error does not name the foreign socket (inode %d): %v", ino, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	self := fmt.Sprintf("pid %d gen 1", os.Getpid())
	for i := range 3 {
		qctx, qcancel := context.WithTimeout(ctx, 2*time.Second)
		a, err := requestAddr(qctx, fmt.Sprintf("127.0.0.1:%d", ip.port))
		qcancel()
		if err != nil || a != self {
			t.Errorf("fresh request %d after the refused upgrade: %q, %v; want %q", i, a, err, self)
		}
	}
	// What the foreign socket got: the probe at most, no handshake.
	handshakes := 0
	buf := make([]byte, 2048)
	for {
		foreign.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		n, err := foreign.Read(buf)
		if err != nil {
			break
		}
		if n >= 1200 {
			handshakes++
		}
	}
	if handshakes != 0 {
		t.Errorf("the foreign socket received %d handshake datagrams", handshakes)
	}
}

// TestUpgradeInheritedPlainSocket hands over an inherited plain socket:
// after the hand-over every datagram must reach the successor, none the
// old process's plain handle, which keeps reading (before: 128 of 200
// went to the old process).
func TestUpgradeInheritedPlainSocket(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	ip := startInProcEnv(t, false, []string{upgradePlainEnv + "=" + addr, upgradeModeEnv + "=inherit"}, WithInheritance(true))
	ip.serve()
	pc, err := ip.pool.ListenPacket(context.Background(), "udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go echoGen(pc, 1)
	client, err := net.Dial("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ask := func() string {
		buf := make([]byte, 64)
		for range 10 {
			client.Write([]byte("which"))
			client.SetReadDeadline(time.Now().Add(testTimeout / 10))
			if n, err := client.Read(buf); err == nil {
				return string(buf[:n])
			}
		}
		t.Fatal("no answer")
		return ""
	}
	if a := ask(); a != "gen 1" {
		t.Fatalf("before the upgrade: %q", a)
	}
	if err := waitErr(t, ip.upgradeAsync(), "Upgrade"); err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for range 200 {
		counts[ask()]++
	}
	if counts["gen 1"] != 0 || counts["gen 2"] != 200 {
		t.Errorf("answers after the hand-over: %v, want all 200 from gen 2", counts)
	}
	// The successor dies: the old process reads its socket again.
	resumed := ip.u.Resumed()
	syscall.Kill(ip.wait("ready", 2).pid, syscall.SIGKILL)
	waitClosed(t, resumed, "Resumed after the successor died")
	for i := range 20 {
		if a := ask(); a != "gen 1" {
			t.Fatalf("answer %d after the successor died: %q, want gen 1", i, a)
		}
	}
}

// TestUpgradeStopDuringHandOver calls Stop after the successor's Ready has
// come, while the predecessor tells the service manager (it waits for the
// manager's barrier, which the test holds): the successor must not be
// installed after Stop, Exit must stay open, and the successor is ended.
// TestUpgradeStopRacesUpgrade covers a Stop before the Ready.
func TestUpgradeStopDuringHandOver(t *testing.T) {
	ip := startInProc(t)
	goFile := filepath.Join(ip.failDir, "go")
	if err := os.WriteFile(filepath.Join(ip.failDir, "fail"), []byte("wait "+goFile), 0o666); err != nil {
		t.Fatal(err)
	}
	done := ip.upgradeAsync()
	bound := ip.wait("bound", 2)
	// The manager appears once the successor runs, so that it is this
	// process's child all the same (see startAsSibling).
	m := newManager(t)
	t.Setenv(systemd.NotifyEnv, m.l.Addr())
	if err := os.WriteFile(goFile, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	var barrier []*os.File
	for barrier == nil {
		var msg systemd.Message
		select {
		case msg = <-m.msgs:
		case <-time.After(testTimeout):
			t.Fatal("no barrier from the hand-over")
		}
		if v, ok := msg.Get("MAINPID"); ok && v != strconv.Itoa(bound.pid) {
			t.Errorf("MAINPID=%s, want the successor's %d", v, bound.pid)
		}
		if v, _ := msg.Get("BARRIER"); v == "1" {
			barrier = msg.Files
		} else {
			for _, f := range msg.Files {
				f.Close()
			}
		}
	}
	wantState(t, ip.u, stateStarting, "the successor's Ready, before the manager has read it")
	if err := ip.u.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, f := range barrier {
		f.Close() // the manager has read it
	}
	if err := waitErr(t, done, "Upgrade"); !errors.Is(err, ErrUpgraderStopped) {
		t.Errorf("Upgrade with Stop during its hand-over: %v, want ErrUpgraderStopped", err)
	}
	ip.u.mu.Lock()
	succ, at := ip.u.succ, ip.u.at
	ip.u.mu.Unlock()
	if succ != nil || at != stateStopped {
		t.Errorf("after Stop during the hand-over: state %v, successor %v; want Stopped, none", at, succ)
	}
	select {
	case <-ip.u.Exit():
		t.Errorf("Exit closed after Stop")
	default:
	}
	if err := syscall.Kill(bound.pid, 0); err == nil {
		t.Errorf("successor %d still runs after Upgrade returned", bound.pid)
	}
}
