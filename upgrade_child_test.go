//go:build linux

package udppool

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// The upgrade tests re-execute the test binary as the server processes: a
// process started with upgradeChildEnv set runs upgradeChild instead of the
// tests, and so do its successors, which Upgrade starts from the same
// binary with the same arguments and environment.
const (
	upgradeChildEnv   = "UDPPOOL_TEST_UPGRADE_CHILD"   // the port to serve
	upgradeFailEnv    = "UDPPOOL_TEST_UPGRADE_FAIL"    // a file whose presence makes the next successor fail
	upgradeModeEnv    = "UDPPOOL_TEST_UPGRADE_MODE"    // "inherit" forces inherited sockets
	upgradeDrainEnv   = "UDPPOOL_TEST_UPGRADE_DRAIN"   // the drain grace period
	upgradeTrustEnv   = "UDPPOOL_TEST_UPGRADE_TRUST"   // set: no WithRefuseForeign, the Upgrader's own check alone
	upgradeWatchEnv   = "UDPPOOL_TEST_UPGRADE_WATCH"   // a descriptor that reads EOF once the test process is gone
	upgradePlainEnv   = "UDPPOOL_TEST_UPGRADE_PLAIN"   // an address on which to echo plain datagrams with "gen G"
	upgradeSocketsEnv = "UDPPOOL_TEST_UPGRADE_SOCKETS" // sockets of the transport (WithSockets), by generation: "2,3" is 2 for odd, 3 for even ones
	// watchFD is where every generation keeps the watch descriptor, open
	// across exec: above those that exec.Cmd.ExtraFiles numbers.
	watchFD       = 200
	upgradePIDEnv = "UDPPOOL_TEST_UPGRADE_PIDFILE"
	testALPN      = "udppool-upgrade-test"
)

// runUpgradeChild runs the server if this process is one; it reports
// whether it was.
func runUpgradeChild() bool {
	port := os.Getenv(upgradeChildEnv)
	if port == "" {
		return false
	}
	watchTest()
	if err := upgradeChild(port); err != nil {
		fmt.Printf("error pid %d: %v\n", os.Getpid(), err)
		os.Exit(1)
	}
	os.Exit(0)
	return true
}

// watchTest ends this server process when the test process is gone, also
// when it died of its own timeout without running its cleanups: the test
// holds the only write end of a pipe whose read end every generation
// inherits (the first as the descriptor named by upgradeWatchEnv, its
// successors as watchFD, which exec leaves open).
func watchTest() {
	fd := watchFD
	if v := os.Getenv(upgradeWatchEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return
		}
		if err := unix.Dup3(n, watchFD, 0); err != nil {
			return
		}
		unix.Close(n)
		os.Unsetenv(upgradeWatchEnv)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		return // started without a watch
	}
	go func() {
		var b [1]byte
		for {
			n, err := unix.Read(fd, b[:])
			if err == unix.EINTR {
				continue
			}
			if n == 0 || err != nil {
				fmt.Printf("test gone pid %d: exiting\n", os.Getpid())
				os.Exit(4)
			}
		}
	}()
}

// upgradeChild serves a request-response protocol over QUIC on the
// dual-stack wildcard of port: each stream is a request, answered with
// "pid N gen G", plus " goaway" once this process hands over, which tells
// keep-alive clients to reconnect. Its lines on standard output tell the
// test what happens: "ready", "upgrade-failed", "drained", "exit".
func upgradeChild(port string) error {
	var opts []UpgradeOption
	if os.Getenv(upgradeModeEnv) == "inherit" {
		opts = append(opts, WithInheritance(true))
	}
	readyTimeout := 10 * time.Second
	if os.Getenv(upgradeFailEnv) != "" {
		readyTimeout = 2 * time.Second // the test waits for a hung successor's end
	}
	opts = append(opts, WithReadyTimeout(readyTimeout), WithUpgradeLogger(slog.New(slog.NewTextHandler(os.Stdout, nil))))
	if f := os.Getenv(upgradePIDEnv); f != "" {
		opts = append(opts, WithPIDFile(f))
	}
	u, err := NewUpgrader(opts...)
	if err != nil {
		return err
	}
	pid, gen := os.Getpid(), u.Generation()
	// Refusing foreign sockets must not refuse the predecessor's.
	p := New(WithUpgrader(u), WithRefuseForeign(os.Getenv(upgradeTrustEnv) == ""))
	var topts []TransportOption
	if n := childSockets(gen); n > 0 {
		topts = append(topts, WithSockets(n))
	}
	tr, err := p.Transport(context.Background(), "udp", ":"+port, topts...)
	if err != nil {
		return err
	}
	cert, err := selfSigned()
	if err != nil {
		return err
	}
	ln, err := tr.Listen(&tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{testALPN}},
		&quic.Config{MaxIdleTimeout: 30 * time.Second})
	if err != nil {
		return err
	}
	fmt.Printf("bound pid %d gen %d port %d\n", pid, gen, tr.LocalAddr().(*net.UDPAddr).Port)
	if f := os.Getenv(upgradeFailEnv); f != "" && u.HasPredecessor() {
		if data, err := os.ReadFile(f); err == nil {
			os.Remove(f)
			how := strings.TrimSpace(string(data))
			switch {
			case how == "hang":
				select {} // never ready: the predecessor's timeout kills us
			case strings.HasPrefix(how, "wait "):
				// Ready once the test has created the file named.
				for {
					if _, err := os.Stat(strings.TrimPrefix(how, "wait ")); err == nil {
						break
					}
					time.Sleep(10 * time.Millisecond)
				}
			default:
				os.Exit(3) // bound, joined, and dead before ready
			}
		}
	}
	if addr := os.Getenv(upgradePlainEnv); addr != "" {
		pc, err := p.ListenPacket(context.Background(), "udp4", addr)
		if err != nil {
			return err
		}
		defer pc.Close()
		go echoGen(pc, gen)
	}
	var draining atomic.Bool
	answer := func() string {
		s := fmt.Sprintf("pid %d gen %d", pid, gen)
		if draining.Load() {
			s += " goaway"
		}
		return s
	}
	served := make(chan struct{})
	// The open connections, to say which ones a forced drain cut.
	var openMu sync.Mutex
	open := make(map[*quic.Conn]bool)
	go func() {
		defer close(served)
		for {
			conn, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			openMu.Lock()
			open[conn] = true
			openMu.Unlock()
			context.AfterFunc(conn.Context(), func() {
				openMu.Lock()
				delete(open, conn)
				openMu.Unlock()
			})
			go serveConn(conn, answer)
		}
	}()
	// Signals are caught before the ready line tells the test it may
	// send them.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM)
	defer signal.Stop(sigs)
	if err := u.Ready(); err != nil {
		return err
	}
	fmt.Printf("ready pid %d gen %d\n", pid, gen)
	if u.HasPredecessor() {
		go func() {
			<-u.predGone // after the programs for this process alone
			fmt.Printf("alone pid %d gen %d\n", pid, gen)
		}()
	}
	upgraded := make(chan error, 1)
wait:
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGTERM {
				break wait
			}
			go func() { upgraded <- u.Upgrade(context.Background()) }()
		case err := <-upgraded:
			if err != nil {
				fmt.Printf("upgrade-failed pid %d gen %d: %v\n", pid, gen, err)
			}
		case <-u.Exit():
			break wait
		}
	}
	draining.Store(true)
	grace, _ := time.ParseDuration(os.Getenv(upgradeDrainEnv))
	ctx, cancel := context.WithTimeout(context.Background(), max(grace, time.Second))
	// Which connections were open when the grace ended (a snapshot
	// before Shutdown closes them).
	var stuck []string
	snapped := make(chan struct{})
	cut := context.AfterFunc(ctx, func() {
		defer close(snapped)
		openMu.Lock()
		defer openMu.Unlock()
		for conn := range open {
			stuck = append(stuck, fmt.Sprintf("socket %d from %v", socketOf(conn), conn.RemoteAddr()))
		}
		ln.mu.Lock()
		stuck = append(stuck, fmt.Sprintf("handshakes not delivered %d", ln.inflight))
		ln.mu.Unlock()
	})
	forced := ln.Shutdown(ctx) != nil
	if !cut() {
		<-snapped
	}
	if !forced {
		stuck = nil
	}
	cancel()
	if forced {
		fmt.Printf("stuck pid %d gen %d: %s\n", pid, gen, strings.Join(stuck, ", "))
	}
	fmt.Printf("drained pid %d gen %d forced %t\n", pid, gen, forced)
	<-served
	// Datagrams the kernel placed wrong: moved to a sibling socket here,
	// or forwarded to the other generation (below).
	var rerouted uint64
	for _, s := range p.Stats() {
		rerouted += s.Rerouted
	}
	fmt.Printf("misplaced pid %d gen %d forwarded %d rerouted %d\n", pid, gen, u.forwarded.Load(), rerouted)
	tr.Close()
	if err := u.Stop(); err != nil {
		return err
	}
	signal.Stop(sigs)
	leaks := "none"
	if err := goleak.Find(goleak.IgnoreTopFunction("os/signal.signal_recv"), goleak.IgnoreTopFunction("os/signal.loop"),
		goleak.IgnoreAnyFunction("github.com/udppool/udppool.watchTest.func1")); err != nil {
		leaks = strconv.Quote(err.Error())
	}
	fmt.Printf("exit pid %d gen %d sockets %d leaks %s forwarded %d\n", pid, gen, openSockets(), leaks, u.forwarded.Load()+rerouted)
	return nil
}

// childSockets returns the socket count of generation gen from
// upgradeSocketsEnv, 0 if it names none.
func childSockets(gen uint16) int { return socketsFor(os.Getenv(upgradeSocketsEnv), gen) }

// socketsFor returns the socket count of generation gen from v, a value of
// upgradeSocketsEnv, or from the variable's setting in v's place ("NAME=v").
func socketsFor(v string, gen uint16) int {
	v = strings.TrimPrefix(v, upgradeSocketsEnv+"=")
	if v == "" {
		return 0
	}
	counts := strings.Split(v, ",")
	n, err := strconv.Atoi(counts[(int(gen)-1)%len(counts)])
	if err != nil {
		return 0
	}
	return n
}

func serveConn(conn *quic.Conn, answer func() string) {
	for {
		str, err := conn.AcceptStream(context.Background())
		if err != nil {
			return
		}
		go func() {
			if _, err := io.Copy(io.Discard, io.LimitReader(str, 1<<10)); err != nil {
				str.CancelWrite(1)
				return
			}
			str.Write([]byte(answer()))
			str.Close()
		}()
	}
}

// openSockets counts this process's socket descriptors.
func openSockets() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

// selfSigned makes a certificate for localhost; the test's clients do not
// verify it (each server generation has its own).
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// watchPipe returns the read end of a pipe for a first server's
// ExtraFiles, whose number in the child becomes upgradeWatchEnv's value,
// and keeps the write end open until the test's cleanup: when the test
// process dies, however it dies, every server generation exits.
func watchPipe(t *testing.T) (r *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r
}

// echoGen answers every datagram on pc with "gen G" until pc closes.
func echoGen(pc net.PacketConn, gen uint16) {
	buf := make([]byte, 2048)
	for {
		_, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		pc.WriteTo([]byte(fmt.Sprintf("gen %d", gen)), addr)
	}
}
