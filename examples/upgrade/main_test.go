//go:build linux

// The test is Linux only: it becomes the subreaper of the servers, so that
// the successor, orphaned when the first server exits, is reaped by the
// test and its exit status seen.

package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"go.uber.org/goleak"
	"golang.org/x/net/nettest"
	"golang.org/x/sys/unix"

	"github.com/udppool/udppool/udppooltest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every blocking step, so that a bug fails the test
// instead of hanging it. It is never asserted as a duration.
const testTimeout = 30 * time.Second

// maxRequests bounds the keep-alive client's loop.
const maxRequests = 100_000

// upgradeSockets is TestUpgrade's -sockets.
const upgradeSockets = 2

// TestUpgrade builds the command and runs the demonstration over IPv4 and
// IPv6, serving the address from upgradeSockets sockets: a client keeps
// its connection and makes request after request while the first server
// hands over to its successor on SIGHUP. No request may fail, new
// connections go to the successor, the first server exits 0 once drained,
// and the successor exits 0 on SIGTERM; each serves from upgradeSockets
// sockets of its own.
func TestUpgrade(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("cannot become a subreaper to reap the successor: %v", err)
	}
	t.Cleanup(func() { unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })
	bin := build(t)
	certFile, keyFile, roots := certificateFiles(t)
	for _, c := range []struct {
		family, host string
		supported    bool
	}{
		{"IPv4", "127.0.0.1", nettest.SupportsIPv4()},
		{"IPv6", "::1", nettest.SupportsIPv6()},
	} {
		t.Run(c.family, func(t *testing.T) {
			if !c.supported {
				t.Skipf("host has no %s loopback", c.family)
			}
			port := freePort(t, c.host)
			addr := net.JoinHostPort(c.host, strconv.Itoa(port))
			// With a fleet's server ID in every connection ID and two
			// sockets on the address, steered by connection ID, on both
			// sides of the upgrade; the deployment tests run with neither.
			s := start(t, bin, "-listen", addr, "-cert", certFile, "-key", keyFile, "-drain", "2s",
				"-server-id", "c4605e", "-sockets", strconv.Itoa(upgradeSockets))
			first := s.wait("ready", 1)
			if first.pid != s.first.Process.Pid {
				t.Fatalf("first server says pid %d, started as %d", first.pid, s.first.Process.Pid)
			}
			if got := heldUDPSockets(t, port, first.pid); len(got) != upgradeSockets {
				t.Fatalf("first server holds %d UDP sockets on port %d, want %d: %v", len(got), port, upgradeSockets, got)
			}
			url := "https://" + addr + "/"
			if a := freshGet(t, roots, url); a != first.answer {
				t.Fatalf("first server answered %+v, want %+v", a, first.answer)
			}

			ka := &keepAlive{roots: roots, url: url, changed: make(chan struct{})}
			tcp := &keepAlive{roots: roots, url: url, tcp: true, changed: make(chan struct{})}
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			wg.Go(func() { ka.run(ctx) })
			wg.Go(func() { tcp.run(ctx) })
			defer func() { cancel(); wg.Wait() }()
			ka.waitFor(t, "20 answers of the first server", func() bool { return ka.answers[first.answer] >= 20 })
			tcp.waitFor(t, "20 answers of the first server over TCP", func() bool { return tcp.answers[first.answer] >= 20 })

			syscall.Kill(first.pid, syscall.SIGHUP)
			next := s.wait("ready", 2)
			if next.pid == first.pid {
				t.Fatalf("successor has the first server's pid %d", next.pid)
			}
			// The successor is ready: new connections are its own (a few
			// tries, for a server that is not quite there yet).
			for i := 0; ; i++ {
				a := freshGet(t, roots, url)
				if a == next.answer {
					break
				}
				if i == 10 {
					t.Fatalf("new connections after the hand-over still answered by %+v, want %+v", a, next.answer)
				}
			}
			ka.waitFor(t, "the keep-alive client to reach the successor", func() bool { return ka.answers[next.answer] >= 20 })

			exit := s.wait("exit", 1)
			if !strings.Contains(exit.line, ": 0 of ") {
				t.Errorf("first server did not drain: %s", exit.line)
			}
			s.reap(first.pid)
			// The successor bound sockets of its own; once the first
			// server is gone and the successor has let go of the copies
			// of its sockets it held meanwhile, they are all the port has.
			waitSockets(t, port, next.pid, upgradeSockets)
			ka.waitFor(t, "20 more answers of the successor", func() bool { return ka.answers[next.answer] >= 40 })
			tcp.waitFor(t, "20 answers of the successor over TCP", func() bool { return tcp.answers[next.answer] >= 20 })
			cancel()
			wg.Wait()

			for _, k := range []*keepAlive{ka, tcp} {
				proto := "HTTP/3"
				if k.tcp {
					proto = "HTTPS over TCP"
				}
				k.mu.Lock()
				t.Logf("%s keep-alive client: %d requests, answers %v, %d retried by the client (rejected or unusable connection), %d failed %v",
					proto, k.requests, k.answers, k.retried, len(k.errs), k.errs)
				if len(k.errs) > 0 {
					t.Errorf("%s: %d requests failed: %v", proto, len(k.errs), k.errs)
				}
				k.mu.Unlock()
			}

			syscall.Kill(next.pid, syscall.SIGTERM)
			s.wait("exit", 2)
			s.reap(next.pid)
			t.Logf("servers' output:\n%s", s.output())
		})
	}
}

// TestGeneratedCertificate runs the command without -cert and -key: it
// serves with a certificate of its own for the loopback addresses, and
// exits 0 on SIGTERM.
func TestGeneratedCertificate(t *testing.T) {
	if !nettest.SupportsIPv4() {
		t.Skip("host has no IPv4 loopback")
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t, "127.0.0.1")))
	s := start(t, build(t), "-listen", addr, "-drain", "2s")
	first := s.wait("ready", 1)
	var peer *x509.Certificate
	h3 := &http3.Transport{TLSClientConfig: &tls.Config{
		InsecureSkipVerify: true, // the certificate is checked below
		VerifyConnection: func(cs tls.ConnectionState) error {
			peer = cs.PeerCertificates[0]
			return nil
		},
	}}
	a, _, err := get(context.Background(), h3, "https://"+addr+"/")
	h3.Close()
	if err != nil {
		t.Fatal(err)
	}
	if a != first.answer {
		t.Errorf("answered %+v, want %+v", a, first.answer)
	}
	for _, host := range []string{"localhost", "127.0.0.1", "::1"} {
		if err := peer.VerifyHostname(host); err != nil {
			t.Error(err)
		}
	}
	roots := x509.NewCertPool()
	roots.AddCert(peer)
	if _, err := peer.Verify(x509.VerifyOptions{Roots: roots}); err != nil {
		t.Errorf("not a valid self-signed certificate: %v", err)
	}
	syscall.Kill(first.pid, syscall.SIGTERM)
	s.wait("exit", 1)
	s.reap(first.pid)
}

// build builds the command into a temporary directory, with the race
// detector if the test has it.
func build(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command to build the example: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "upgrade")
	args := []string{"build", "-o", bin}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-race" && s.Value == "true" {
				args = append(args, "-race")
			}
		}
	}
	if out, err := exec.Command(goTool, append(args, ".")...).CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return bin
}

// certificateFiles writes a server certificate for 127.0.0.1 and ::1 and
// its key as PEM files, and returns them with the roots that verify it.
func certificateFiles(t *testing.T) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	certs := udppooltest.TLS(t)
	certFile, keyFile = udppooltest.PEMFiles(t, certs.Certificate)
	return certFile, keyFile, certs.Roots
}

// freePort returns a UDP port that is free on host.
func freePort(t *testing.T, host string) int {
	t.Helper()
	c, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// An answer is what a response body says: the serving process and its
// generation.
type answer struct{ pid, gen int }

var answerRE = regexp.MustCompile(`pid (\d+) gen (\d+)`)

func parseAnswer(s string) (answer, bool) {
	m := answerRE.FindStringSubmatch(s)
	if m == nil {
		return answer{}, false
	}
	pid, _ := strconv.Atoi(m[1])
	gen, _ := strconv.Atoi(m[2])
	return answer{pid, gen}, true
}

// get makes one request and returns its answer and how many times the
// client sent it: more than once if the server rejected it, or its
// connection was going away, and the client sent it again.
func get(ctx context.Context, rt http.RoundTripper, url string) (answer, int, error) {
	ctx, cancel := context.WithTimeout(ctx, testTimeout)
	defer cancel()
	tries := 0
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GetConn: func(string) { tries++ }})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return answer{}, 0, err
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return answer{}, tries, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return answer{}, tries, err
	}
	a, ok := parseAnswer(string(body))
	if resp.StatusCode != http.StatusOK || !ok {
		return answer{}, tries, fmt.Errorf("%s: %q", resp.Status, body)
	}
	return a, tries, nil
}

// freshGet makes one request over HTTP/3 on a new connection, trusting
// roots.
func freshGet(t *testing.T, roots *x509.CertPool, url string) answer {
	t.Helper()
	return freshGetOver(t, roots, url, false)
}

// freshGetOver makes one request on a new connection, over HTTPS on TCP
// if tcp, else over HTTP/3.
func freshGetOver(t *testing.T, roots *x509.CertPool, url string, tcp bool) answer {
	t.Helper()
	rt, closeClient := (&keepAlive{roots: roots, tcp: tcp}).client()
	defer closeClient()
	a, _, err := get(context.Background(), rt, url)
	if err != nil {
		t.Fatalf("request on a new connection (tcp %v): %v", tcp, err)
	}
	return a
}

// keepAlive makes request after request, on one connection for as long as
// the server keeps it, or on a new connection each if fresh; over HTTP/3,
// or over HTTPS on TCP (HTTP/2) if tcp.
type keepAlive struct {
	roots *x509.CertPool
	url   string
	fresh bool
	tcp   bool

	mu       sync.Mutex
	requests int
	retried  int
	answers  map[answer]int
	errs     []error
	changed  chan struct{} // closed and replaced at each request
}

// client returns a new client and the function that closes its
// connections.
func (k *keepAlive) client() (http.RoundTripper, func()) {
	tc := &tls.Config{RootCAs: k.roots}
	if k.tcp {
		t := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true}
		return t, t.CloseIdleConnections
	}
	t := &http3.Transport{TLSClientConfig: tc}
	return t, func() { t.Close() }
}

func (k *keepAlive) run(ctx context.Context) {
	rt, closeClient := k.client()
	defer func() { closeClient() }()
	for range maxRequests {
		if k.fresh {
			closeClient()
			rt, closeClient = k.client()
		}
		a, tries, err := get(ctx, rt, k.url)
		if ctx.Err() != nil {
			return
		}
		k.mu.Lock()
		k.requests++
		if tries > 1 {
			k.retried++
		}
		if err != nil {
			k.errs = append(k.errs, err)
		} else {
			if k.answers == nil {
				k.answers = make(map[answer]int)
			}
			k.answers[a]++
		}
		close(k.changed)
		k.changed = make(chan struct{})
		k.mu.Unlock()
	}
}

// waitFor waits until cond, called with k.mu held, holds.
func (k *keepAlive) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	timeout := time.NewTimer(testTimeout)
	defer timeout.Stop()
	for {
		k.mu.Lock()
		ok, ch, n := cond(), k.changed, k.requests
		k.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-timeout.C:
			k.mu.Lock()
			defer k.mu.Unlock()
			t.Fatalf("waiting for %s: %d requests, answers %v, failures %v", what, n, k.answers, k.errs)
		}
	}
}

// servers are the processes of one run: the first as a child of the
// test, its successor as the first's child and, once orphaned, the test's.
// They share one output.
type servers struct {
	t      *testing.T
	first  *exec.Cmd
	reaped map[int]bool

	mu      sync.Mutex
	lines   []string
	changed chan struct{} // closed and replaced at each line
	done    chan struct{} // closed when every server has closed the output
}

func start(t *testing.T, bin string, args ...string) *servers {
	t.Helper()
	s := &servers{t: t, reaped: make(map[int]bool), changed: make(chan struct{}), done: make(chan struct{})}
	// A pipe of our own, not StdoutPipe, which Wait closes when the first
	// server exits, although its successor still writes to it.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	s.first = exec.Command(bin, args...)
	s.first.Stdout, s.first.Stderr = w, w
	err = s.first.Start()
	w.Close()
	if err != nil {
		r.Close()
		t.Fatal(err)
	}
	go s.read(r)
	t.Cleanup(s.stop)
	return s
}

func (s *servers) read(r io.ReadCloser) {
	defer close(s.done)
	defer r.Close()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		s.mu.Lock()
		s.lines = append(s.lines, sc.Text())
		close(s.changed)
		s.changed = make(chan struct{})
		s.mu.Unlock()
	}
}

func (s *servers) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.lines, "\n")
}

// A serverLine is a line of the servers' output that names a process.
type serverLine struct {
	line string
	answer
}

// wait returns the first line that starts with word and names generation
// gen, waiting for it.
func (s *servers) wait(word string, gen int) serverLine {
	s.t.Helper()
	return s.waitFrom(0, word, gen)
}

// mark returns the number of lines so far, for waitFrom.
func (s *servers) mark() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.lines)
}

// waitFrom is wait, skipping the first from lines.
func (s *servers) waitFrom(from int, word string, gen int) serverLine {
	s.t.Helper()
	timeout := time.NewTimer(testTimeout)
	defer timeout.Stop()
	for {
		s.mu.Lock()
		ch := s.changed
		for _, l := range s.lines[from:] {
			if a, ok := parseAnswer(l); ok && strings.HasPrefix(l, word+" ") && a.gen == gen {
				s.mu.Unlock()
				return serverLine{l, a}
			}
		}
		s.mu.Unlock()
		select {
		case <-ch:
		case <-s.done:
			s.t.Fatalf("servers exited before %q of generation %d:\n%s", word, gen, s.output())
		case <-timeout.C:
			s.t.Fatalf("no %q of generation %d:\n%s", word, gen, s.output())
		}
	}
}

// reap waits for server pid to exit and checks that it exited 0. The
// successor can be reaped only after the first server has exited.
func (s *servers) reap(pid int) {
	s.t.Helper()
	s.reaped[pid] = true
	done := make(chan error, 1)
	go func() {
		if pid == s.first.Process.Pid {
			done <- s.first.Wait()
			return
		}
		var ws unix.WaitStatus
		if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil {
			done <- err
		} else if !ws.Exited() || ws.ExitStatus() != 0 {
			done <- fmt.Errorf("exit status %v", ws)
		} else {
			done <- nil
		}
	}()
	timeout := time.NewTimer(testTimeout)
	defer timeout.Stop()
	select {
	case err := <-done:
		if err != nil {
			s.t.Errorf("server %d: %v\n%s", pid, err, s.output())
		}
	case <-timeout.C:
		syscall.Kill(pid, syscall.SIGKILL)
		<-done
		s.t.Errorf("server %d did not exit:\n%s", pid, s.output())
	}
}

// stop kills the servers that a failed test left running, and reaps them.
func (s *servers) stop() {
	var left []int
	s.mu.Lock()
	for _, l := range s.lines {
		if a, ok := parseAnswer(l); ok && strings.HasPrefix(l, "ready ") && !s.reaped[a.pid] && a.pid != s.first.Process.Pid {
			left = append(left, a.pid)
		}
	}
	s.mu.Unlock()
	for _, pid := range left {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	if !s.reaped[s.first.Process.Pid] {
		s.first.Process.Kill()
		s.first.Wait()
	}
	for _, pid := range left {
		var ws unix.WaitStatus
		unix.Wait4(pid, &ws, 0, nil)
	}
	select {
	case <-s.done:
	case <-time.After(testTimeout):
		s.t.Errorf("servers' output still open:\n%s", s.output())
	}
}

// TestSignalsDuringDrain signals the first server while it drains, with a
// connection held open so that the drain lasts: a SIGHUP is refused with
// a line, SIGTERM and SIGINT let the drain finish, and the server exits 0
// (before, signal.Stop restored the default action and they killed it).
func TestSignalsDuringDrain(t *testing.T) {
	h := startHeld(t)
	s, first, held, roots := h.s, h.first, h.held, h.roots
	addr := h.addr

	syscall.Kill(first.pid, syscall.SIGHUP)
	next := s.wait("ready", 2)
	s.wait("draining", 1)
	syscall.Kill(first.pid, syscall.SIGHUP)
	s.wait("upgrade refused", 1)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		syscall.Kill(first.pid, sig)
		s.wait(sig.String(), 1)
	}
	if a := freshGet(t, roots, "https://"+addr+"/"); a != next.answer {
		t.Errorf("new connection during the drain answered by %+v, want %+v", a, next.answer)
	}
	held.CloseWithError(0, "")
	e := s.wait("exit", 1)
	if !strings.Contains(e.line, ": 0 of ") {
		t.Errorf("first server did not drain: %s", e.line)
	}
	s.reap(first.pid)
	syscall.Kill(next.pid, syscall.SIGTERM)
	s.wait("exit", 2)
	s.reap(next.pid)
}

// TestSuccessorDiesDuringDrain kills the successor while the first server
// drains, with a connection held open so that the drain lasts: the first
// server says it resumed and answers new connections again over HTTP/3
// and over TCP, while its drain goes on; it can upgrade again, and exits 0
// once drained. Before, it had already shut both servers down at the
// hand-over, and nothing served the port until it exited.
func TestSuccessorDiesDuringDrain(t *testing.T) {
	h := startHeld(t)
	s, first, held, roots := h.s, h.first, h.held, h.roots
	url := "https://" + h.addr + "/"

	syscall.Kill(first.pid, syscall.SIGHUP)
	next := s.wait("ready", 2)
	s.wait("draining", 1)
	for _, tcp := range []bool{false, true} {
		if a := freshGetOver(t, roots, url, tcp); a != next.answer {
			t.Fatalf("new connection (tcp %v) after the hand-over answered by %+v, want %+v", tcp, a, next.answer)
		}
	}
	// The successor is the first server's child: the first reaps it.
	s.reaped[next.pid] = true
	syscall.Kill(next.pid, syscall.SIGKILL)
	s.wait("resumed", 1)
	for _, tcp := range []bool{false, true} {
		if a := freshGetOver(t, roots, url, tcp); a != first.answer {
			t.Errorf("new connection (tcp %v) after the successor died answered by %+v, want %+v", tcp, a, first.answer)
		}
	}
	if err := held.Context().Err(); err != nil {
		t.Errorf("the held connection did not survive: %v", err)
	}

	// Serving again, it upgrades again; the held connection keeps the
	// first drain going meanwhile.
	from := s.mark()
	syscall.Kill(first.pid, syscall.SIGHUP)
	third := s.waitFrom(from, "ready", 2)
	if a := freshGet(t, roots, url); a != third.answer {
		t.Errorf("new connection after the second upgrade answered by %+v, want %+v", a, third.answer)
	}
	held.CloseWithError(0, "")
	e := s.wait("exit", 1)
	if !strings.Contains(e.line, ": 0 of ") {
		t.Errorf("first server did not drain: %s", e.line)
	}
	s.reap(first.pid)
	syscall.Kill(third.pid, syscall.SIGTERM)
	s.waitFrom(from, "exit", 2)
	s.reap(third.pid)
}

// heldServer is a first server on 127.0.0.1 with a 1m drain, and a QUIC
// connection to it that speaks no HTTP/3, which keeps a drain going until
// the test closes it.
type heldServer struct {
	s     *servers
	first serverLine
	held  *quic.Conn
	roots *x509.CertPool
	addr  string
}

func startHeld(t *testing.T) heldServer {
	t.Helper()
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("cannot become a subreaper to reap the successor: %v", err)
	}
	t.Cleanup(func() { unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })
	if !nettest.SupportsIPv4() {
		t.Skip("no IPv4 loopback")
	}
	bin := build(t)
	certFile, keyFile, roots := certificateFiles(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t, "127.0.0.1")))
	s := start(t, bin, "-listen", addr, "-cert", certFile, "-key", keyFile, "-drain", "1m")
	first := s.wait("ready", 1)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	held, err := quic.DialAddr(ctx, addr, &tls.Config{RootCAs: roots, NextProtos: []string{http3.NextProtoH3}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { held.CloseWithError(0, "") })
	return heldServer{s: s, first: first, held: held, roots: roots, addr: addr}
}
