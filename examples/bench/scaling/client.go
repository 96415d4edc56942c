package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// The client process's lines on standard output: the parent reads the
// server's counters and CPU time when it sees each of the first two.
const (
	lineStart  = "start"
	lineStop   = "stop"
	lineResult = "result "
)

// maxOps bounds the requests of one connection, the handshakes of one
// dialer and the 64 KiB writes of one upload in a measurement, whatever
// its duration.
const maxOps = 1 << 20

// maxSamples bounds the latencies one connection keeps.
const maxSamples = 1 << 16

// clientResult is what the client process reports at the end.
type clientResult struct {
	Sent       int64   `json:"sent_bytes"`
	Requests   int64   `json:"requests"`
	Handshakes int64   `json:"handshakes"`
	Failures   int64   `json:"failures"`
	P50        float64 `json:"p50_s"`
	P99        float64 `json:"p99_s"`
	CPU        float64 `json:"cpu_s"` // this process's CPU time during the window
	Window     float64 `json:"window_s"`
	FirstError string  `json:"first_error,omitempty"`
}

type clientConfig struct {
	addr     string
	workload string
	conns    int
	duration time.Duration
	reqSize  int
	respSize int
	tls      *tls.Config
}

// clientMain is the client process: it loads the server with one workload
// for one window and reports on standard output.
func clientMain(args []string) int {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	var c clientConfig
	fs.StringVar(&c.addr, "addr", "", "server address")
	fs.StringVar(&c.workload, "workload", "", "bulk, rr or handshakes")
	fs.IntVar(&c.conns, "conns", 16, "connections (bulk, rr) or dialers (handshakes)")
	fs.DurationVar(&c.duration, "duration", time.Second, "measured window")
	fs.IntVar(&c.reqSize, "req", 64, "request size")
	fs.IntVar(&c.respSize, "resp", 1024, "response size")
	caFile := fs.String("ca", "", "PEM file of the CA to trust")
	cpus := fs.String("cpus", "", "pin to these CPUs (comma-separated)")
	if err := fs.Parse(args); err != nil {
		return exitFailed
	}
	if *cpus != "" {
		list, err := parseInts(*cpus)
		if err == nil {
			err = pin(list)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "client: pin:", err)
			return exitFailed
		}
	}
	pem, err := os.ReadFile(*caFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		return exitFailed
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		fmt.Fprintln(os.Stderr, "client: no certificate in", *caFile)
		return exitFailed
	}
	c.tls = &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{alpn}, MinVersion: tls.VersionTLS13}
	out := bufio.NewWriter(os.Stdout)
	res, err := runClient(c, func(line string) {
		fmt.Fprintln(out, line)
		out.Flush()
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		return exitFailed
	}
	b, _ := json.Marshal(res)
	fmt.Fprintln(out, lineResult+string(b))
	out.Flush()
	return 0
}

// A clientConn is one connection on a UDP socket of its own, as real
// clients have: the server's sockets see as many 4-tuples as connections,
// whichever way the group spreads new handshakes (by destination
// connection ID, or the kernel's hash of the 4-tuple).
type clientConn struct {
	uc   *net.UDPConn
	tr   *quic.Transport
	conn *quic.Conn
}

func dial(ctx context.Context, c clientConfig) (*clientConn, error) {
	raddr, err := net.ResolveUDPAddr("udp4", c.addr)
	if err != nil {
		return nil, err
	}
	uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	tr := &quic.Transport{Conn: uc}
	conn, err := tr.Dial(ctx, raddr, c.tls, quicConfig())
	if err != nil {
		tr.Close()
		uc.Close()
		return nil, err
	}
	return &clientConn{uc: uc, tr: tr, conn: conn}, nil
}

func (cc *clientConn) close() {
	cc.conn.CloseWithError(0, "")
	cc.tr.Close()
	cc.uc.Close()
}

// runClient connects, says lineStart, loads the server for the duration,
// says lineStop and returns the counts of the window.
func runClient(c clientConfig, say func(string)) (clientResult, error) {
	var res clientResult
	if c.conns < 1 || c.duration <= 0 {
		return res, errors.New("need at least one connection and a positive duration")
	}
	// Every connection of bulk and rr is set up before the window; a
	// handshake workload dials inside it.
	var conns []*clientConn
	defer func() {
		for _, cc := range conns {
			cc.close()
		}
	}()
	if c.workload != "handshakes" {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		var mu sync.Mutex
		var wg sync.WaitGroup
		var firstErr error
		sem := make(chan struct{}, 8)
		for range c.conns {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				cc, err := dial(ctx, c)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					firstErr = cmp(firstErr, err)
					return
				}
				conns = append(conns, cc)
			})
		}
		wg.Wait()
		cancel()
		if firstErr != nil {
			return res, fmt.Errorf("setting up %d connections: %w", c.conns, firstErr)
		}
	}

	var (
		sent, requests, handshakes, failures atomic.Int64
		mu                                   sync.Mutex
		latencies                            []time.Duration
		firstErr                             error
	)
	fail := func(err error) {
		failures.Add(1)
		mu.Lock()
		firstErr = cmp(firstErr, err)
		mu.Unlock()
	}
	say(lineStart)
	cpu0, start := cpuTime(), time.Now()
	deadline := start.Add(c.duration)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	stopped := make(chan struct{})
	go func() {
		<-ctx.Done()
		res.CPU = (cpuTime() - cpu0).Seconds()
		res.Window = time.Since(start).Seconds()
		say(lineStop)
		close(stopped)
	}()
	var wg sync.WaitGroup
	switch c.workload {
	case "bulk":
		for _, cc := range conns {
			wg.Go(func() {
				if err := upload(ctx, cc.conn, deadline, &sent); err != nil {
					fail(err)
				}
			})
		}
	case "rr":
		req := make([]byte, 3+c.reqSize)
		req[0] = kindRequest
		binary.BigEndian.PutUint16(req[1:], uint16(c.respSize))
		for _, cc := range conns {
			wg.Go(func() {
				var own []time.Duration
				for range maxOps {
					t0 := time.Now()
					err := request(ctx, cc.conn, req, c.respSize)
					if ended(ctx, deadline) {
						break // cut by the window's end: not a failure, not a sample
					}
					if err != nil {
						// The connection's part ends here: a connection
						// that failed would fail every later request at
						// once, and count them by the million.
						fail(err)
						break
					}
					requests.Add(1)
					if len(own) < maxSamples {
						own = append(own, time.Since(t0))
					}
				}
				mu.Lock()
				latencies = append(latencies, own...)
				mu.Unlock()
			})
		}
	case "handshakes":
		for range c.conns {
			wg.Go(func() {
				failed := 0
				for range maxOps {
					cc, err := dial(ctx, c)
					if ended(ctx, deadline) {
						if err == nil {
							cc.close()
						}
						break
					}
					if err != nil {
						fail(err)
						if failed++; failed == maxDialFailures {
							break
						}
						continue
					}
					cc.close()
					handshakes.Add(1)
				}
			})
		}
	default:
		return res, fmt.Errorf("unknown workload %q", c.workload)
	}
	wg.Wait()
	<-stopped
	res.Sent, res.Requests, res.Handshakes, res.Failures = sent.Load(), requests.Load(), handshakes.Load(), failures.Load()
	if firstErr != nil {
		res.FirstError = firstErr.Error()
	}
	slices.Sort(latencies)
	res.P50, res.P99 = quantile(latencies, 0.50).Seconds(), quantile(latencies, 0.99).Seconds()
	return res, nil
}

// maxDialFailures ends a dialer that keeps failing, so that an error that
// comes at once (no descriptors left) cannot spin.
const maxDialFailures = 10

// ended reports whether the window is over. The streams' deadlines are the
// window's, and a stream can see its deadline pass before the context's
// timer fires: asking only the context would take that error for a
// failure.
func ended(ctx context.Context, deadline time.Time) bool {
	return ctx.Err() != nil || !time.Now().Before(deadline)
}

// upload writes to one stream until the deadline.
func upload(ctx context.Context, conn *quic.Conn, deadline time.Time, sent *atomic.Int64) error {
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return ignoreEnd(ctx, err)
	}
	defer st.CancelWrite(0)
	st.SetWriteDeadline(deadline)
	if _, err := st.Write([]byte{kindBulk}); err != nil {
		return ignoreEnd(ctx, err)
	}
	chunk := make([]byte, 64<<10)
	for range maxOps {
		n, err := st.Write(chunk)
		sent.Add(int64(n))
		if err != nil {
			return ignoreEnd(ctx, err)
		}
	}
	return nil
}

// request sends one request on a new stream and reads the response.
func request(ctx context.Context, conn *quic.Conn, req []byte, respSize int) error {
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok {
		st.SetDeadline(d)
	}
	if _, err := st.Write(req); err != nil {
		st.CancelRead(0)
		return err
	}
	st.Close()
	n, err := io.Copy(io.Discard, st)
	if err != nil {
		return err
	}
	if n != int64(respSize) {
		return fmt.Errorf("response of %d bytes, want %d", n, respSize)
	}
	return nil
}

// ignoreEnd drops the error that the window's end causes.
func ignoreEnd(ctx context.Context, err error) error {
	var ne net.Error
	if d, _ := ctx.Deadline(); ended(ctx, d) || errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	return err
}

func cmp(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// quantile returns the q-quantile of sorted durations, zero for none.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func parseInts(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("%q: not a list of integers", s)
		}
		out = append(out, v)
	}
	return out, nil
}
