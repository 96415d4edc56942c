//go:build unix

package udppool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udppool/udppool/internal/fdpass"
)

// hello is the predecessor's first control message: the successor's
// generation, the connection ID secret and the sockets, whose descriptors
// travel with it in the same order.
type hello struct {
	PredPid int
	Gen     uint16
	PredGen uint16
	Key     []byte
	Sockets []helloSocket
	// Listeners are the TCP listening sockets (see Listen); their
	// descriptors follow the sockets'.
	Listeners []helloListener
}

// helloListener names a TCP listener as Listen was asked for it.
type helloListener struct {
	Network string
	Address string
}

type helloSocket struct {
	Network string
	Addr    string
	QUIC    bool // the predecessor serves QUIC on it
	AnyPort bool // bound for a port 0 key
	// Socket is the socket's index among the sockets of its address
	// (Key.Socket, WithSockets); Member its index in the address's
	// reuseport group, as the predecessor knows it (0 where it steers
	// none).
	Socket int `json:",omitempty"`
	Member int `json:",omitempty"`
}

// helloTimeout bounds the successor's wait for the hello, which the
// predecessor sends right after starting it.
const helloTimeout = 30 * time.Second

// start starts the successor and sends it the hello.
func (u *Upgrader) start(ctx context.Context) (*peer, error) {
	ctrl, ctrlChild, err := socketPair(unix.SOCK_STREAM)
	if err != nil {
		return nil, err
	}
	fwd, fwdChild, err := socketPair(unix.SOCK_DGRAM)
	if err != nil {
		ctrl.Close()
		ctrlChild.Close()
		return nil, err
	}
	s := &peer{gen: u.gen + 1, ctrl: ctrl, fwd: fwd, gone: make(chan struct{})}
	if s.gen == 0 {
		s.gen = 1
	}
	if s.raw, err = fwd.SyscallConn(); err != nil {
		s.close()
		return nil, err
	}
	cmd, err := u.command(ctx)
	if err == nil {
		n := 3 + len(cmd.ExtraFiles)
		cmd.ExtraFiles = append(cmd.ExtraFiles, ctrlChild, fwdChild)
		if cmd.Env == nil {
			cmd.Env = os.Environ()
		}
		cmd.Env = append(cmd.Env, fmt.Sprintf("%s=%d,%d", upgradeEnv, n, n+1))
		startAsSibling(cmd, u.opts.pidFile != "")
		err = cmd.Start()
	}
	ctrlChild.Close()
	fwdChild.Close()
	if err != nil {
		s.close()
		return nil, fmt.Errorf("starting successor: %w", err)
	}
	s.cmd, s.pid = cmd, cmd.Process.Pid
	if err := u.sendHello(s); err != nil {
		s.kill()
		return nil, fmt.Errorf("handing sockets to the successor: %w", err)
	}
	return s, nil
}

func (u *Upgrader) command(ctx context.Context) (*exec.Cmd, error) {
	if u.opts.command != nil {
		return u.opts.command(ctx)
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	return cmd, nil
}

// socketPair returns a connected pair of Unix sockets: this process's end,
// and the successor's as a blocking file for exec.Cmd.ExtraFiles.
func socketPair(typ int) (*net.UnixConn, *os.File, error) {
	// As the net package does: no fork between creating the descriptors
	// and marking them close-on-exec (not every system has SOCK_CLOEXEC).
	syscall.ForkLock.RLock()
	fds, err := unix.Socketpair(unix.AF_UNIX, typ, 0)
	if err == nil {
		unix.CloseOnExec(fds[0])
		unix.CloseOnExec(fds[1])
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return nil, nil, os.NewSyscallError("socketpair", err)
	}
	if typ == unix.SOCK_DGRAM {
		// Room for bursts of forwarded datagrams; the kernel caps it.
		for _, fd := range fds {
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
		}
	}
	c, err := fileUnixConn(os.NewFile(uintptr(fds[0]), "udppool-upgrade"))
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	return c, os.NewFile(uintptr(fds[1]), "udppool-upgrade"), nil
}

// fileUnixConn turns f into a *net.UnixConn and closes f.
func fileUnixConn(f *os.File) (*net.UnixConn, error) {
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("descriptor %s is a %T, not a Unix socket", f.Name(), c)
	}
	return uc, nil
}

// sendHello sends the hello with duplicates of the descriptors of every
// socket of u's pools.
func (u *Upgrader) sendHello(s *peer) error {
	h := hello{PredPid: os.Getpid(), Gen: s.gen, PredGen: u.gen, Key: u.key[:]}
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	u.mu.Lock()
	pools := append([]*Pool(nil), u.pools...)
	ephemeral := maps.Clone(u.ephemeral)
	u.mu.Unlock()
	for _, p := range pools {
		p.mu.Lock()
		for _, e := range p.entries {
			if e.sock == nil || e.closing.Load() {
				continue
			}
			fd, err := dupRaw(e.sock.raw)
			if err != nil {
				continue // closing: nothing to hand over
			}
			fds = append(fds, fd)
			h.Sockets = append(h.Sockets, helloSocket{Network: e.key.Network, Addr: e.key.Addr.String(), QUIC: e.qt != nil, AnyPort: ephemeral[e.key],
				Socket: e.key.Socket, Member: e.sock.memberIndex()})
		}
		p.mu.Unlock()
	}
	u.mu.Lock()
	for sp, f := range u.tcp {
		if fd, err := dupFile(f); err == nil {
			fds = append(fds, fd)
			h.Listeners = append(h.Listeners, helloListener{Network: sp.network, Address: sp.address})
		}
	}
	u.mu.Unlock()
	body, err := json.Marshal(h)
	if err != nil {
		return err
	}
	return fdpass.Send(s.ctrl, body, fds)
}

// connectPredecessor takes over the control and forwarding sockets named by
// the environment variable's value ("ctrl,fwd" descriptor numbers) and
// reads the hello.
func (u *Upgrader) connectPredecessor(env string) error {
	a, b, ok := strings.Cut(env, ",")
	cfd, err1 := strconv.Atoi(a)
	ffd, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil {
		return fmt.Errorf("malformed %s=%q", upgradeEnv, env)
	}
	unix.CloseOnExec(cfd)
	unix.CloseOnExec(ffd)
	ctrl, err := fileUnixConn(os.NewFile(uintptr(cfd), "udppool-upgrade"))
	if err != nil {
		unix.Close(ffd)
		return err
	}
	fwd, err := fileUnixConn(os.NewFile(uintptr(ffd), "udppool-upgrade"))
	if err != nil {
		ctrl.Close()
		return err
	}
	s := &peer{ctrl: ctrl, fwd: fwd, gone: make(chan struct{})}
	if s.raw, err = fwd.SyscallConn(); err != nil {
		s.close()
		return err
	}
	h, files, err := readHello(ctrl)
	if err != nil {
		s.close()
		return err
	}
	if len(h.Key) != len(u.key) || h.Gen == 0 {
		s.close()
		for _, f := range files {
			f.Close()
		}
		return errors.New("malformed hello")
	}
	copy(u.key[:], h.Key)
	u.codec = newCIDCodec(u.key)
	u.gen, s.gen, s.pid = h.Gen, h.PredGen, h.PredPid
	u.log = u.log.With(processGenAttr(u.gen))
	for i, hs := range h.Sockets {
		ap, err := netip.ParseAddrPort(hs.Addr)
		if err != nil {
			files[i].Close()
			continue
		}
		if hs.Socket < 0 || hs.Socket >= MaxSockets || hs.Member < 0 || hs.Member >= 2*MaxSockets {
			files[i].Close()
			continue
		}
		k := Key{Network: hs.Network, Addr: ap, Socket: hs.Socket}
		if u.inherited[k] != nil { // named twice: keep the first
			files[i].Close()
			continue
		}
		u.inherited[k] = files[i]
		if rc, err := files[i].SyscallConn(); err == nil {
			u.predInodes[k], _ = socketInode(rc)
		}
		u.predKeys[k] = true
		u.predQUIC[k] = hs.QUIC
		u.addPredMember(k, hs.Member, h.PredGen)
		if hs.AnyPort {
			u.anyPort = append(u.anyPort, k)
		}
	}
	for i, hl := range h.Listeners {
		f := files[len(h.Sockets)+i]
		sp := spelling{hl.Network, hl.Address}
		if u.tcpInherited[sp] != nil {
			f.Close()
			continue
		}
		u.tcpInherited[sp] = f
	}
	u.pred = s
	u.publish()
	go u.watchPredecessor(s)
	go u.receive(s)
	return nil
}

// maxHelloFDs bounds the descriptors of a hello: SCM_MAX_FD, Linux's
// limit for one message, with room to spare.
const maxHelloFDs = 1024

// readHello reads the hello and the descriptors that come with it.
func readHello(ctrl *net.UnixConn) (hello, []*os.File, error) {
	return readHelloFDs(ctrl, maxHelloFDs)
}

// readHelloFDs is readHello with room for maxFDs descriptors. Every
// descriptor received is closed again unless the hello is returned.
func readHelloFDs(ctrl *net.UnixConn, maxFDs int) (hello, []*os.File, error) {
	ctrl.SetReadDeadline(time.Now().Add(helloTimeout))
	defer ctrl.SetReadDeadline(time.Time{})
	body, files, err := fdpass.Receive(ctrl, maxFDs)
	if err != nil {
		return hello{}, nil, fmt.Errorf("hello: %w", err)
	}
	fail := func(err error) (hello, []*os.File, error) {
		for _, f := range files {
			f.Close()
		}
		return hello{}, nil, err
	}
	var h hello
	if err := json.Unmarshal(body, &h); err != nil {
		return fail(err)
	}
	if len(h.Sockets)+len(h.Listeners) != len(files) {
		return fail(fmt.Errorf("hello names %d sockets and %d listeners, %d descriptors came", len(h.Sockets), len(h.Listeners), len(files)))
	}
	return h, files, nil
}

// sendForward writes one forwarded datagram without waiting: a full socket
// pair drops it.
func sendForward(to *peer, b []byte) {
	to.raw.Control(func(fd uintptr) {
		unix.Write(int(fd), b)
	})
}

// kill ends a successor that failed before ready and reaps it.
func (s *peer) kill() {
	s.cmd.Process.Kill()
	if err := s.cmd.Wait(); errors.Is(err, syscall.ECHILD) {
		// A sibling (see startAsSibling), reaped by its parent: it is
		// gone once its end of the control socket is.
		s.ctrl.SetReadDeadline(time.Now().Add(helloTimeout))
		io.Copy(io.Discard, s.ctrl)
	}
	s.close()
}

// release lets a successor that took over run on its own: this process
// has no use for its exit status.
func (s *peer) release() {
	s.cmd.Process.Release()
}

// dupFile returns a close-on-exec duplicate of f's descriptor, without
// f.Fd, which would put the socket, shared with the net package's copy,
// into blocking mode.
func dupFile(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	return dupRaw(rc)
}

// listenerFile returns a file of its own for l's socket. Not l.File: the
// net package marks such a file as one whose Fd (which net.FileListener
// calls at each later Listen) puts the socket into blocking mode, and the
// socket is shared with every listener open on it, here and in the other
// generation, whose accepts would then block threads past their deadlines.
func listenerFile(l *net.TCPListener) (*os.File, error) {
	rc, err := l.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd, err := dupRaw(rc)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "tcp "+l.Addr().String()), nil
}

// dupRaw returns a close-on-exec duplicate of rc's descriptor.
func dupRaw(rc syscall.RawConn) (int, error) {
	fd, derr := -1, error(nil)
	if err := rc.Control(func(sfd uintptr) { fd, derr = unix.FcntlInt(sfd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	return fd, derr
}
