//go:build linux

package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NS is one network namespace. It holds only a file descriptor: no thread
// of the process stays inside, so the namespace disappears once Close has
// been called and every socket created in it has been closed.
//
// All methods are safe for concurrent use, and Do calls do not serialize
// one another: each gets its own thread.
type NS struct {
	// mu is write-locked only by Close, so that Close cannot close (and
	// the process reuse) the descriptor while a Do is joining it.
	mu sync.RWMutex
	f  *os.File // nil after Close
}

// New creates a network namespace with only the loopback interface, up
// (127.0.0.1/8 and ::1/128). The calling goroutine's own namespace is
// left unchanged. If the kernel refuses to create namespaces, typically
// for lack of root, the error wraps ErrUnsupported.
func New() (*NS, error) {
	primeNetProbe()
	var f *os.File
	err := onDiscardedThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			hint := ""
			if errors.Is(err, unix.EPERM) {
				hint = " (needs root or CAP_SYS_ADMIN)"
			}
			return fmt.Errorf("%w: unshare(CLONE_NEWNET): %w%s", ErrUnsupported, err, hint)
		}
		var err error
		// thread-self, not self: only this thread is in the new namespace.
		if f, err = os.Open("/proc/thread-self/ns/net"); err != nil {
			return err
		}
		if err := withHandle(func(nl *netlink.Handle) error {
			lo, err := nl.LinkByName("lo")
			if err != nil {
				return err
			}
			return nl.LinkSetUp(lo)
		}); err != nil {
			f.Close()
			return fmt.Errorf("bringing lo up: %w", err)
		}
		return nil
	})
	if err != nil && !errors.Is(err, ErrUnsupported) {
		err = fmt.Errorf("netns: creating namespace: %w", err)
	}
	if err != nil {
		return nil, err
	}
	return &NS{f: f}, nil
}

// Do runs fn on a fresh OS thread that has joined the namespace, and
// returns fn's error. Sockets that fn creates itself, synchronously, are
// in the namespace and stay there: they can be returned and used from
// any goroutine afterwards. Goroutines that fn starts do not inherit the
// namespace, since they run on other threads; so create every socket
// inside fn, then use it anywhere.
//
// Whatever else depends on the namespace must happen inside fn too:
// net.Interfaces (it opens a netlink socket), child processes (forked
// from fn's thread, they are born in the namespace),
// reading /proc/sys/net or /proc/thread-self/net. Not /proc/net or
// /proc/self/net, though: those show the main thread's namespace, which
// is the host's.
//
// fn must not call t.FailNow, t.Fatal or t.Skip: they end the wrong
// goroutine; Do then returns an error rather than hanging, but the test
// goes on. Report failures through fn's error instead.
//
// The thread is thrown away afterwards instead of being handed back to
// the Go scheduler, so no other goroutine ever runs in the namespace.
// Do may be called concurrently, also on the same NS.
func (n *NS) Do(fn func() error) error {
	return onDiscardedThread(func() error {
		if err := n.enter(); err != nil {
			return err
		}
		return fn()
	})
}

func (n *NS) enter() error {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.f == nil {
		return ErrClosed
	}
	if err := unix.Setns(int(n.f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("netns: setns: %w", err)
	}
	return nil
}

// Netlink runs fn inside the namespace with a route netlink handle of the
// namespace, to change its links, addresses and routes, for example
//
//	n.Netlink(func(nl *netlink.Handle) error {
//		link, err := nl.LinkByName(netns.Iface)
//		if err != nil {
//			return err
//		}
//		return nl.LinkSetMTU(link, 1280)
//	})
//
// The rules of Do apply to fn.
func (n *NS) Netlink(fn func(*netlink.Handle) error) error {
	return n.Do(func() error { return withHandle(fn) })
}

// withHandle runs fn with a route netlink handle of the calling thread's
// namespace: the handle's socket is created here, and a netlink socket
// acts on the namespace it was created in.
func withHandle(fn func(*netlink.Handle) error) error {
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netns: netlink: %w", err)
	}
	defer nl.Close()
	return fn(nl)
}

// Sysctl sets a sysctl inside the namespace, for example
// Sysctl("net.ipv4.ip_forward", "1"). Keys are dotted, or slash-separated
// when a component contains a dot (an interface name such as "eth0.100").
//
// Only keys under net are accepted: they are the only ones the kernel
// keeps per network namespace, and writing any other would change the
// host.
func (n *NS) Sysctl(key, value string) error {
	path, err := sysctlPath(key)
	if err != nil {
		return err
	}
	return n.Do(func() error {
		// /proc/sys/net resolves to the namespace of the thread that
		// opens the file, so this open must happen here.
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			return fmt.Errorf("netns: sysctl %s: %w", key, err)
		}
		_, err = f.WriteString(value)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("netns: sysctl %s=%s: %w", key, value, err)
		}
		return nil
	})
}

func sysctlPath(key string) (string, error) {
	sep := "."
	if strings.Contains(key, "/") {
		sep = "/"
	}
	parts := strings.Split(key, sep)
	if len(parts) < 2 || parts[0] != "net" {
		return "", fmt.Errorf("netns: sysctl %q is not under net, so not per namespace", key)
	}
	for _, p := range parts {
		if p == "" || p == "." || p == ".." {
			return "", fmt.Errorf("netns: bad sysctl key %q", key)
		}
	}
	return "/proc/sys/" + strings.Join(parts, "/"), nil
}

// Close releases the namespace. Sockets created inside keep it alive
// until they are closed. Close is idempotent; later Do calls return
// ErrClosed.
func (n *NS) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.f == nil {
		return nil
	}
	err := n.f.Close()
	n.f = nil
	return err
}

// errGoexit is returned by Do when fn ended its goroutine without
// returning, which tests do by calling t.FailNow from inside fn.
var errGoexit = errors.New("netns: fn called runtime.Goexit (t.Fatal, t.FailNow or t.Skip inside Do?)")

// onDiscardedThread runs fn on a goroutine locked to its thread, and
// lets that goroutine end still locked: the runtime then terminates the
// thread instead of reusing it, which is what makes it safe for fn to
// change the thread's namespace. New threads are not cloned from such a
// thread either, since LockOSThread makes the runtime create them from a
// clean template thread.
func onDiscardedThread(fn func() error) error {
	done := make(chan error, 1)
	go func() {
		err := errGoexit
		defer func() { done <- err }()
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// The main thread cannot exit: the runtime would park it
			// forever, still in the namespace, keeping it alive. Hold it
			// so the nested goroutine gets another thread, then give it
			// back untouched.
			err = onDiscardedThread(fn)
			runtime.UnlockOSThread()
			return
		}
		err = fn()
	}()
	return <-done
}

var primeOnce sync.Once

// primeNetProbe makes package net probe IPv4/IPv6 support now, from the
// host namespace. net runs that probe once per process, on first need,
// and uses the answer to pick the family of every wildcard "udp"/"tcp"
// listen. Were the first such listen made inside an IPv6Only namespace
// (no 127.0.0.1, so no IPv4-mapped support), all later ones, on the host
// too, would silently become IPv4-only.
func primeNetProbe() {
	primeOnce.Do(func() {
		done := make(chan struct{})
		// A new unlocked goroutine never runs on a namespaced thread,
		// since those are locked until they die.
		go func() {
			defer close(done)
			errStop := errors.New("stop before bind")
			lc := net.ListenConfig{Control: func(string, string, syscall.RawConn) error {
				return errStop // the probe has run by now; bind nothing
			}}
			if c, err := lc.ListenPacket(context.Background(), "udp", ":0"); err == nil {
				c.Close()
			}
		}()
		<-done
	})
}

var available struct {
	once sync.Once
	err  error
}

// Available reports, as an error suitable for t.Skip, why this process
// cannot create network namespaces, or nil if it can. It finds out once,
// by creating and discarding one.
func Available() error {
	available.once.Do(func() {
		n, err := New()
		if err == nil {
			err = n.Close()
		}
		if err != nil && !errors.Is(err, ErrUnsupported) {
			err = fmt.Errorf("%w: %w", ErrUnsupported, err)
		}
		available.err = err
	})
	return available.err
}

// NewHosts creates two simulated hosts of the given kind; see Hosts for
// what they look like. The caller must Close them.
func NewHosts(kind Kind) (_ *Hosts, err error) {
	if !kind.HasIPv4() && !kind.HasIPv6() {
		return nil, fmt.Errorf("netns: invalid %v", kind)
	}
	h := &Hosts{Kind: kind}
	defer func() {
		if err != nil {
			h.Close()
		}
	}()
	if h.Server, err = New(); err != nil {
		return nil, err
	}
	if h.Client, err = New(); err != nil {
		return nil, err
	}

	for _, n := range []*NS{h.Server, h.Client} {
		if !kind.HasIPv6() {
			// Before the veth exists, so that it never gets IPv6 at all;
			// "all" also removes ::1 from lo.
			for _, k := range []string{"net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"} {
				if err := n.Sysctl(k, "1"); err != nil {
					return nil, err
				}
			}
		}
		if !kind.HasIPv4() {
			// The kernel adds 127.0.0.1/8 when lo comes up. Without it Go's
			// IPv4-mapped probe and any IPv4 bind fail, as on an
			// IPv6-only host.
			if err := n.Netlink(func(nl *netlink.Handle) error {
				lo, err := nl.LinkByName("lo")
				if err != nil {
					return err
				}
				return nl.AddrDel(lo, addr(netip.MustParsePrefix("127.0.0.1/8")))
			}); err != nil {
				return nil, fmt.Errorf("netns: removing 127.0.0.1/8 from lo: %w", err)
			}
		}
	}

	// Created in Server with the peer born in Client, named by its
	// descriptor: the pair never exists in the host namespace and no
	// /var/run/netns name is needed. h.Client is not yet shared, so its
	// descriptor cannot be closed meanwhile.
	peer := netlink.NsFd(int(h.Client.f.Fd()))
	if err := h.Server.Netlink(func(nl *netlink.Handle) error {
		return nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: Iface}, PeerName: Iface, PeerNamespace: peer})
	}); err != nil {
		return nil, fmt.Errorf("netns: creating the veth pair: %w", err)
	}
	runtime.KeepAlive(h.Client.f)

	setup := func(n *NS, v4, v6 netip.Prefix) error {
		return n.Netlink(func(nl *netlink.Handle) error {
			link, err := nl.LinkByName(Iface)
			if err != nil {
				return err
			}
			if err := nl.LinkSetUp(link); err != nil {
				return fmt.Errorf("setting %s up: %w", Iface, err)
			}
			if kind.HasIPv4() {
				if err := nl.AddrAdd(link, addr(v4)); err != nil {
					return fmt.Errorf("adding %v to %s: %w", v4, Iface, err)
				}
			}
			if kind.HasIPv6() {
				a := addr(v6)
				a.Flags = unix.IFA_F_NODAD // usable at once, not "tentative"
				if err := nl.AddrAdd(link, a); err != nil {
					return fmt.Errorf("adding %v to %s: %w", v6, Iface, err)
				}
			}
			return nil
		})
	}
	if err := setup(h.Server, serverV4, serverV6); err != nil {
		return nil, fmt.Errorf("netns: server: %w", err)
	}
	if err := setup(h.Client, clientV4, clientV6); err != nil {
		return nil, fmt.Errorf("netns: client: %w", err)
	}
	if kind.HasIPv4() {
		h.ServerV4, h.ClientV4 = serverV4.Addr(), clientV4.Addr()
	}
	if kind.HasIPv6() {
		h.ServerV6, h.ClientV6 = serverV6.Addr(), clientV6.Addr()
	}
	return h, nil
}

// addr converts p for the netlink package.
func addr(p netip.Prefix) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{
		IP:   p.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}}
}
