// Package rawsock binds UDP sockets that package net will not bind (an
// IPv4-mapped address, a chosen IPV6_V6ONLY beside SO_REUSEPORT), for
// tests that play a second process on a port.
package rawsock

import (
	"errors"
	"net/netip"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// A Socket is a bare descriptor, closed at the end of the test that bound
// it. It is its own syscall.RawConn, for code that takes a socket as one.
type Socket int

// SyscallConn returns s.
func (s Socket) SyscallConn() (syscall.RawConn, error) { return s, nil }

// Control calls f with the descriptor.
func (s Socket) Control(f func(uintptr)) error { f(uintptr(s)); return nil }

// Read is unsupported: nothing reads a bare socket through it.
func (s Socket) Read(func(uintptr) bool) error { return errors.ErrUnsupported }

// Write is unsupported, as Read.
func (s Socket) Write(func(uintptr) bool) error { return errors.ErrUnsupported }

// Bind binds an AF_INET6 UDP socket to addr with SO_REUSEPORT and the
// given IPV6_V6ONLY.
func Bind(t testing.TB, addr netip.AddrPort, v6only bool) Socket {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	on := 0
	if v6only {
		on = 1
	}
	for _, err := range []error{
		unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, on),
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1),
		unix.Bind(fd, &unix.SockaddrInet6{Port: int(addr.Port()), Addr: addr.Addr().As16()}),
	} {
		if err != nil {
			t.Fatalf("binding %v (v6only %v): %v", addr, v6only, err)
		}
	}
	return Socket(fd)
}
