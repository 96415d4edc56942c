package systemd

import (
	"fmt"
	"net"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// A Listener receives notifications the way a service manager does, for a
// process that supervises others (a container's PID 1, say) and must learn
// which of its descendants is the main one.
type Listener struct {
	c    *net.UnixConn
	addr string
}

// A Message is one notification datagram.
type Message struct {
	PID   int      // the sender, as the kernel vouches for it
	Vars  []string // the VAR=value assignments
	Files []*os.File
}

// Get returns the value of the last assignment to name, and whether there
// is one.
func (m *Message) Get(name string) (string, bool) {
	v, ok := "", false
	for _, a := range m.Vars {
		if n, val, found := strings.Cut(a, "="); found && n == name {
			v, ok = val, true
		}
	}
	return v, ok
}

// Listen opens a notification socket at addr (a path, or an abstract name
// starting with '@') that learns each sender's pid from the kernel.
func Listen(addr string) (*Listener, error) {
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("systemd: listen %s: %w", addr, err)
	}
	raw, err := c.SyscallConn()
	if err == nil {
		var serr error
		err = raw.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
		})
		if err == nil {
			err = serr
		}
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("systemd: listen %s: SO_PASSCRED: %w", addr, err)
	}
	return &Listener{c: c, addr: addr}, nil
}

// Addr returns the address to put in a child's NOTIFY_SOCKET.
func (l *Listener) Addr() string { return l.addr }

// Close closes the socket; a blocked Receive returns an error.
func (l *Listener) Close() error { return l.c.Close() }

// maxFiles bounds the descriptors one message may carry; the rest are cut
// by the kernel (MSG_CTRUNC) and the message is refused.
const maxFiles = 16

// Receive returns the next message. Descriptors that come with it belong
// to the caller, also when an error is returned for a message that carried
// them: they are closed then.
func (l *Listener) Receive() (Message, error) {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred)+unix.CmsgSpace(4*maxFiles))
	n, oobn, flags, _, err := l.c.ReadMsgUnix(buf, oob)
	if err != nil {
		return Message{}, err
	}
	var m Message
	cmsgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
	for _, cm := range cmsgs {
		switch {
		case cm.Header.Level != unix.SOL_SOCKET:
		case cm.Header.Type == unix.SCM_CREDENTIALS:
			if uc, err := unix.ParseUnixCredentials(&cm); err == nil {
				m.PID = int(uc.Pid)
			}
		case cm.Header.Type == unix.SCM_RIGHTS:
			fds, _ := unix.ParseUnixRights(&cm)
			for _, fd := range fds {
				unix.CloseOnExec(fd)
				m.Files = append(m.Files, os.NewFile(uintptr(fd), "notify"))
			}
		}
	}
	switch {
	case perr != nil:
		err = perr
	case flags&(unix.MSG_CTRUNC|unix.MSG_TRUNC) != 0:
		err = fmt.Errorf("message of %d bytes truncated", n)
	case m.PID == 0:
		err = fmt.Errorf("message without credentials")
	}
	if err != nil {
		for _, f := range m.Files {
			f.Close()
		}
		return Message{}, fmt.Errorf("systemd: receive on %s: %w", l.addr, err)
	}
	for _, line := range strings.Split(string(buf[:n]), "\n") {
		if line != "" {
			m.Vars = append(m.Vars, line)
		}
	}
	return m, nil
}
