//go:build linux

package systemd

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The variables of socket activation.
const (
	ListenPIDEnv     = "LISTEN_PID"
	ListenFDsEnv     = "LISTEN_FDS"
	ListenFDNamesEnv = "LISTEN_FDNAMES"
)

// listenFDsStart is the first passed descriptor (SD_LISTEN_FDS_START).
const listenFDsStart = 3

// maxListenFDs bounds LISTEN_FDS so that a garbled value does not make the
// process claim every descriptor it has.
const maxListenFDs = 1024

// ListenFiles returns the descriptors passed to this process by socket
// activation, each named (os.File.Name) by LISTEN_FDNAMES where it names
// them, else "unknown", as sd_listen_fds_with_names does. It returns
// nothing when LISTEN_PID names another process: the variables were
// inherited, not meant for it. Each descriptor is marked close-on-exec,
// so that no child inherits it; UnsetListenEnv removes the variables once
// the caller owns every descriptor.
func ListenFiles() ([]*os.File, error) {
	pid, fds, names := os.Getenv(ListenPIDEnv), os.Getenv(ListenFDsEnv), os.Getenv(ListenFDNamesEnv)
	if pid == "" && fds == "" {
		return nil, nil
	}
	if p, err := strconv.Atoi(pid); err != nil || p != os.Getpid() {
		return nil, nil
	}
	n, err := strconv.Atoi(fds)
	if err != nil || n < 0 || n > maxListenFDs {
		return nil, fmt.Errorf("systemd: malformed %s=%q", ListenFDsEnv, fds)
	}
	var nameList []string
	if names != "" {
		nameList = strings.Split(names, ":")
	}
	files := make([]*os.File, 0, n)
	for i := range n {
		fd := listenFDsStart + i
		unix.CloseOnExec(fd)
		name := "unknown"
		if i < len(nameList) && nameList[i] != "" {
			name = nameList[i]
		}
		files = append(files, os.NewFile(uintptr(fd), name))
	}
	return files, nil
}

// UnsetListenEnv removes the variables of socket activation, so that
// nobody else in the process claims the descriptors again.
func UnsetListenEnv() {
	os.Unsetenv(ListenPIDEnv)
	os.Unsetenv(ListenFDsEnv)
	os.Unsetenv(ListenFDNamesEnv)
}
