package udppool_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/nettest"
	"golang.org/x/sys/unix"
)

// TestSocketActivation passes sockets to a child the way systemd does
// (LISTEN_PID is the child's own pid: a shell sets it to $$ and execs the
// test binary in place). None of them has SO_REUSEPORT, so the pool could
// not bind beside them: a request for their address that works used the
// passed socket. The child serves QUIC on a dual-stack one and plain UDP on
// an IPv4 one; a TCP listener passed beside them is left, with the
// variables, for other code to claim.
func TestSocketActivation(t *testing.T) {
	if os.Getenv("UDPPOOL_TEST_CHILD") == "activation" {
		activationChild(t)
		return
	}
	needFamilies(t, v4)
	plain, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	files := []*os.File{file(t, plain)}
	names := "plain"
	ports := []string{strconv.Itoa(plain.LocalAddr().(*net.UDPAddr).Port)}
	if nettest.SupportsIPv6() {
		// On a dual-stack host "udp :0" binds [::] with IPV6_V6ONLY off.
		quic, err := net.ListenPacket("udp", ":0")
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, file(t, quic))
		names += ":quic"
		ports = append(ports, strconv.Itoa(quic.LocalAddr().(*net.UDPAddr).Port))
	}
	run := func(t *testing.T, files []*os.File, names string) string {
		script := fmt.Sprintf(`LISTEN_PID=$$ LISTEN_FDS=%d LISTEN_FDNAMES=%s exec "$0" -test.run='^TestSocketActivation$' -test.v`, len(files), names)
		cmd := exec.Command("/bin/sh", "-c", script, os.Args[0])
		cmd.Env = append(os.Environ(), "UDPPOOL_TEST_CHILD=activation", "UDPPOOL_TEST_PORTS="+strings.Join(ports, ","))
		cmd.ExtraFiles = files
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return string(out)
	}
	t.Run("udp", func(t *testing.T) {
		out := run(t, files, names)
		for _, want := range []string{"served plain", "env unset"} {
			if !strings.Contains(out, want) {
				t.Errorf("child did not report %q:\n%s", want, out)
			}
		}
		if len(files) > 1 && !strings.Contains(out, "served quic over 127.0.0.1 and ::1") {
			t.Errorf("child did not serve QUIC on the activated dual-stack socket:\n%s", out)
		}
	})
	t.Run("with-tcp", func(t *testing.T) {
		tl, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		tf, err := tl.(*net.TCPListener).File()
		tl.Close()
		if err != nil {
			t.Fatal(err)
		}
		defer tf.Close()
		out := run(t, append(files[:1:1], tf), "plain:https")
		for _, want := range []string{"served plain", "env kept", "fd 4 cloexec"} {
			if !strings.Contains(out, want) {
				t.Errorf("child did not report %q:\n%s", want, out)
			}
		}
	})
}

func file(t *testing.T, pc net.PacketConn) *os.File {
	t.Helper()
	f, err := pc.(*net.UDPConn).File()
	pc.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func activationChild(t *testing.T) {
	ports := strings.Split(os.Getenv("UDPPOOL_TEST_PORTS"), ",")
	passed, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	names := os.Getenv("LISTEN_FDNAMES") // gone once the pool has read them
	p := pool(t)
	c, err := p.ListenPacket(context.Background(), "udp", "127.0.0.1:"+ports[0])
	if err != nil {
		t.Fatalf("the activated socket was not used: %v", err)
	}
	defer c.Close()
	send := clientConn(t, v4)
	defer send.Close()
	send.WriteTo([]byte("hello"), c.LocalAddr())
	c.SetReadDeadline(time.Now().Add(quicTimeout))
	buf := make([]byte, 16)
	if n, _, err := c.ReadFrom(buf); err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("read on the activated socket: %q, %v", buf[:n], err)
	}
	st := p.Stats()
	if len(st) != 1 || st[0].Activated != "plain" {
		t.Fatalf("Stats: %+v, want one socket named plain", st)
	}
	fmt.Println("served plain")
	if names == "plain:quic" {
		tr, _ := serve(t, p, "udp", ":"+ports[1])
		port, _ := strconv.Atoi(ports[1])
		for _, ip := range []netip.Addr{v4, v6} {
			if got := handshake(t, ip, netip.AddrPortFrom(ip, uint16(port)), "echo"); got == "" {
				t.Fatalf("no answer from %v", ip)
			}
		}
		if k := tr.Keys(); len(k) != 1 || k[0].Network != "udp" {
			t.Fatalf("activated dual-stack socket has key %v", k)
		}
		fmt.Println("served quic over 127.0.0.1 and ::1")
	}
	if os.Getenv("LISTEN_FDS") == "" {
		fmt.Println("env unset")
	} else {
		fmt.Println("env kept")
	}
	for fd := 3 + 1; fd < 3+passed; fd++ {
		if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil && flags&unix.FD_CLOEXEC != 0 {
			fmt.Printf("fd %d cloexec\n", fd)
		}
	}
}
