package udppool

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/udppool/udppool/internal/systemd"
)

// A service manager has to know which process is the service. systemd
// learns it from the notify socket (MAINPID=, with Type=notify) or from a
// PID file (PIDFile=); either way it must learn the successor's pid before
// the old main process exits, or it takes the exit for the service's end
// and stops the rest of the unit, the successor with it. The Upgrader
// therefore tells it at the hand-over, from the old process, which systemd
// trusts by default (NotifyAccess=main), and waits until systemd has read
// the message.

// WithPIDFile makes the Upgrader keep a PID file at path naming the
// process that serves: the first generation writes it when it is ready,
// each successor replaces it (atomically, by rename) before its
// predecessor is told to exit, a predecessor whose upgrade failed writes
// its own pid again, and the last generation removes it when it stops. A
// systemd unit with Type=simple or Type=forking and PIDFile= set to the
// same path then follows upgrades. On Linux a successor then starts as a
// child of this process's parent (the service manager) rather than of
// this process, as under NOTIFY_SOCKET, so that the manager can wait for
// it as for any main process.
func WithPIDFile(path string) UpgradeOption {
	return func(o *upgradeOptions) { o.pidFile = path }
}

// barrierTimeout bounds the wait for the service manager to read the
// hand-over message.
const barrierTimeout = 5 * time.Second

// notify sends state to the service manager, if NOTIFY_SOCKET names one.
// A service without one (the common case outside systemd) is not an error,
// and a manager that cannot be reached must not stop an upgrade: the
// result is only logged.
func (u *Upgrader) notify(state ...string) {
	if err := systemd.Notify(state...); err != nil && !errors.Is(err, systemd.ErrNoSocket) {
		u.log.Warn("udppool: notifying the service manager", slog.Any("cause", err))
	}
}

// announceReady tells the world that this process serves: a PID file
// names it, and a first generation tells the service manager it is ready
// (a successor's readiness is announced by its predecessor, which systemd
// still takes for the main process).
func (u *Upgrader) announceReady() error {
	if err := u.writePIDFile(); err != nil {
		return err
	}
	if u.first {
		u.notify("READY=1")
	}
	return nil
}

// notifyReloading marks the start of an upgrade, as a reload.
func (u *Upgrader) notifyReloading() {
	u.notify("RELOADING=1", "MONOTONIC_USEC="+strconv.FormatInt(systemd.MonotonicUsec(), 10))
}

// notifyUpgradeFailed ends the reload with this process still the main one.
func (u *Upgrader) notifyUpgradeFailed(cause error) {
	u.restorePIDFile()
	status := strings.ReplaceAll(fmt.Sprintf("upgrade failed: %v", cause), "\n", " ")
	u.notify("READY=1", "STATUS="+status)
}

// restorePIDFile makes the PID file name this process again, which is the
// main one after all; a failure is only logged, as this process serves on.
func (u *Upgrader) restorePIDFile() {
	if err := u.writePIDFile(); err != nil {
		u.log.Warn("udppool: restoring the PID file", slog.Any("cause", err))
	}
}

// notifyResumed makes this process the main one again after its
// successor died. systemd accepts it only with NotifyAccess=all (with the
// default it has taken the successor's exit for the service's); the
// supervisor of a PID namespace and a PID file follow it either way.
func (u *Upgrader) notifyResumed() {
	u.restorePIDFile()
	u.notify("MAINPID="+strconv.Itoa(os.Getpid()), "READY=1", "STATUS=successor exited; serving again")
}

// notifyHandOver makes pid the main process and waits until the manager
// has read it, so that this process's exit cannot come first.
func (u *Upgrader) notifyHandOver(pid int) {
	addr := os.Getenv(systemd.NotifyEnv)
	if addr == "" {
		return
	}
	u.notify("MAINPID="+strconv.Itoa(pid), "READY=1")
	if err := systemd.Barrier(addr, barrierTimeout); err != nil {
		u.log.Warn("udppool: waiting for the service manager", slog.Any("cause", err))
	}
}

// notifyStopping tells the manager that the service stops, if this process
// is still the main one, and removes a PID file that names it.
func (u *Upgrader) notifyStopping() {
	u.notify("STOPPING=1")
	path := u.opts.pidFile
	if path == "" {
		return
	}
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(os.Getpid()) {
		os.Remove(path)
	}
}

// writePIDFile replaces the PID file with one naming this process. The new
// file is complete before it appears, so a reader never sees it empty.
func (u *Upgrader) writePIDFile() error {
	path := u.opts.pidFile
	if path == "" {
		return nil
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err == nil {
		_, err = fmt.Fprintf(f, "%d\n", os.Getpid())
		err = errors.Join(err, f.Chmod(0o644), f.Close())
		if err == nil {
			err = os.Rename(f.Name(), path)
		}
		if err != nil {
			os.Remove(f.Name())
		}
	}
	if err != nil {
		return fmt.Errorf("udppool: writing PID file %s: %w", path, err)
	}
	return nil
}
