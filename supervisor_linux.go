package udppool

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/udppool/udppool/internal/systemd"
)

// When the first process of a PID namespace exits, the kernel kills every
// other process in it: a container whose PID 1 hands over to a successor
// and exits takes the successor with it. So PID 1 does not serve. It stays
// as a small parent: it starts the serving generation, learns each new
// main process by the notify protocol that systemd uses (its children's
// NOTIFY_SOCKET names the supervisor, and a generation announces its
// successor before it exits), forwards signals to the main process, reaps
// every process that ends in the namespace, and exits with the main
// process's status once no process is left.

// supervisedSignals are the signals a supervisor passes to the main process.
var supervisedSignals = []os.Signal{unix.SIGHUP, unix.SIGINT, unix.SIGTERM, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2, unix.SIGWINCH}

// startAsSibling makes cmd a child of this process's parent rather than of
// this process where a service manager follows the main process: by the
// notify protocol (systemd, or the supervisor above), or by a PID file
// (managed is set). systemd treats a main process that is not its own
// child as alien: it cannot wait for it, and at the unit's stop it sends
// SIGKILL right after SIGTERM when nothing else is left in the unit,
// cutting the last generation's drain. A PID file can name the successor
// while it is still this process's child too: systemd reads the file again
// when ExecReload ends, which on a busy machine comes after the
// successor's Ready. A successor that is systemd's child is waited for
// like the first process.
func startAsSibling(cmd *exec.Cmd, managed bool) {
	if !managed && os.Getenv(systemd.NotifyEnv) == "" || os.Getpid() == 1 {
		return // nobody follows the main process, or PID 1, which cannot have siblings
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Cloneflags |= unix.CLONE_PARENT
}

// superviseIfPID1 runs the supervisor in PID 1 and exits with its status.
func (u *Upgrader) superviseIfPID1() {
	if os.Getpid() != 1 {
		return
	}
	code, err := u.supervise()
	if err != nil {
		fmt.Fprintf(os.Stderr, "udppool: supervisor: %v\n", err)
	}
	os.Exit(code)
}

func (u *Upgrader) supervise() (int, error) {
	var nonce [8]byte
	rand.Read(nonce[:])
	l, err := systemd.Listen("@udppool-supervisor-" + hex.EncodeToString(nonce[:]))
	if err != nil {
		return 1, err
	}
	defer l.Close()
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, append(slices.Clone(supervisedSignals), unix.SIGCHLD)...)
	cmd, err := u.command(context.Background())
	if err != nil {
		return 1, err
	}
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	outer := os.Getenv(systemd.NotifyEnv)
	cmd.Env = append(slices.DeleteFunc(cmd.Env, func(kv string) bool {
		return strings.HasPrefix(kv, systemd.NotifyEnv+"=")
	}), systemd.NotifyEnv+"="+l.Addr())
	if err := cmd.Start(); err != nil {
		return 1, fmt.Errorf("starting the first generation: %w", err)
	}
	sv := supervisor{main: cmd.Process.Pid, outer: outer}
	cmd.Process.Release() // reaped below, with every other process

	msgs := make(chan systemd.Message)
	go func() {
		for {
			m, err := l.Receive()
			if errors.Is(err, os.ErrClosed) {
				return
			}
			if err == nil {
				msgs <- m
			}
		}
	}()
	for {
		select {
		case m := <-msgs:
			sv.message(m)
		case sig := <-sigs:
			if sig != unix.SIGCHLD {
				sv.forward(sig.(unix.Signal))
				continue
			}
			if done := sv.reap(); done {
				return sv.code, nil
			}
		}
	}
}

// supervisor is the state of PID 1: the main process, and its status once
// it has exited.
type supervisor struct {
	main  int // 0 once the main process has exited
	code  int
	outer string // the supervisor's own manager, if any
}

// message takes a notification from a child. Only the main process may
// name a new one, as with systemd's NotifyAccess=main; a barrier's
// descriptor is closed once the message before it has been applied.
func (sv *supervisor) message(m systemd.Message) {
	defer func() {
		for _, f := range m.Files {
			f.Close()
		}
	}()
	v, naming := m.Get("MAINPID")
	pid, err := strconv.Atoi(v)
	naming = naming && err == nil && pid > 1
	switch {
	case m.PID == sv.main && sv.main != 0:
		if naming {
			sv.main = pid
		}
	case naming && pid == m.PID && sv.mainExited():
		// A generation whose successor died after taking over serves
		// again, and says so.
		sv.main = pid
	default:
		return
	}
	if sv.outer == "" {
		return
	}
	// The supervisor is the main process its own manager knows of.
	var relay []string
	for _, a := range m.Vars {
		name, _, _ := strings.Cut(a, "=")
		switch name {
		case "READY", "RELOADING", "MONOTONIC_USEC", "STOPPING", "STATUS", "ERRNO":
			relay = append(relay, a)
		}
	}
	if len(relay) > 0 {
		systemd.NotifySocket(sv.outer, relay...)
	}
}

// forward passes sig to the main process; once it has exited, to every
// process left in the namespace (what kill(-1) means in PID 1), so that a
// generation still draining hears that it is asked to stop.
func (sv *supervisor) forward(sig unix.Signal) {
	if sv.main != 0 {
		unix.Kill(sv.main, sig)
		return
	}
	unix.Kill(-1, sig)
}

// mainExited reports whether the main process has exited, reaping it if
// it has not been yet.
func (sv *supervisor) mainExited() bool {
	if sv.main == 0 {
		return true
	}
	var ws unix.WaitStatus
	if pid, err := unix.Wait4(sv.main, &ws, unix.WNOHANG, nil); err != nil || pid != sv.main {
		return false
	}
	sv.exited(ws)
	return true
}

// exited records the main process's status.
func (sv *supervisor) exited(ws unix.WaitStatus) {
	sv.main = 0
	switch {
	case ws.Exited():
		sv.code = ws.ExitStatus()
	case ws.Signaled():
		sv.code = 128 + int(ws.Signal())
	default:
		sv.code = 1
	}
}

// reap collects every child that has ended. It reports true once the main
// process has exited and no process is left; an old generation still
// draining keeps the namespace, and the supervisor, alive until it ends.
func (sv *supervisor) reap() bool {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ECHILD):
			return sv.main == 0
		case err != nil || pid == 0:
			return false
		}
		if pid == sv.main {
			sv.exited(ws)
		}
	}
}
