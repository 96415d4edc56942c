package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"
)

// A workload is what one measurement's client does.
type workload struct {
	kind  string // "bulk", "rr" or "handshakes"
	conns int    // connections, or dialers for handshakes
}

func (w workload) String() string {
	if w.kind == "handshakes" {
		return fmt.Sprintf("handshakes/%d dialers", w.conns)
	}
	return fmt.Sprintf("%s/%d conns", w.kind, w.conns)
}

// key is the workload's name in JSON and in file names.
func (w workload) key() string { return fmt.Sprintf("%s_%d", w.kind, w.conns) }

// rateUnit and costUnit name what rate and serverCost measure.
func (w workload) rateUnit() string {
	switch w.kind {
	case "bulk":
		return "MB/s"
	case "rr":
		return "req/s"
	}
	return "hs/s"
}

func (w workload) costUnit() string {
	switch w.kind {
	case "bulk":
		return "s/GB"
	case "rr":
		return "µs/req"
	}
	return "µs/hs"
}

// A sample is one measurement: one workload against one server, for one
// window.
type sample struct {
	Window     float64 `json:"window_s"`     // between the client's start and stop, as the server saw it
	ServerCPU  float64 `json:"server_cpu_s"` // the server process's CPU time in the window
	ClientCPU  float64 `json:"client_cpu_s"` // the client process's, in its own window
	Received   int64   `json:"received_bytes"`
	Requests   int64   `json:"requests"`
	Handshakes int64   `json:"handshakes"`
	Failures   int64   `json:"failures"`
	P99        float64 `json:"p99_s"`
}

func (s sample) rate(w workload) float64 {
	switch w.kind {
	case "bulk":
		return float64(s.Received) / s.Window / 1e6
	case "rr":
		return float64(s.Requests) / s.Window
	}
	return float64(s.Handshakes) / s.Window
}

// serverCost is the server's CPU time per unit of work: seconds per GB
// received, or microseconds per request or handshake.
func (s sample) serverCost(w workload) float64 {
	switch w.kind {
	case "bulk":
		return s.ServerCPU / (float64(s.Received) / 1e9)
	case "rr":
		return s.ServerCPU / float64(s.Requests) * 1e6
	}
	return s.ServerCPU / float64(s.Handshakes) * 1e6
}

// env is what every measurement of a run shares.
type env struct {
	self       string // this program, run again as the client
	cert       tls.Certificate
	caFile     string
	duration   time.Duration
	reqSize    int
	respSize   int
	clientCPUs []int  // nil: the client is not pinned
	profileDir string // "": no CPU profiles
}

// measure starts a server with n sockets, runs a client process with w
// against it, and reads the server's counters and CPU time when the client
// says its window starts and stops.
func measure(e *env, w workload, n, round int) (sample, error) {
	var s sample
	srv, err := startServer(n, e.cert)
	if err != nil {
		return s, fmt.Errorf("server with %d sockets: %w", n, err)
	}
	args := []string{"client", "-addr", srv.addr(), "-workload", w.kind, "-conns", strconv.Itoa(w.conns),
		"-duration", e.duration.String(), "-req", strconv.Itoa(e.reqSize), "-resp", strconv.Itoa(e.respSize), "-ca", e.caFile}
	if e.clientCPUs != nil {
		args = append(args, "-cpus", joinInts(e.clientCPUs))
	}
	// Setting up 256 connections on a busy machine takes a few seconds;
	// the client never runs much longer than its window after that.
	ctx, cancel := context.WithTimeout(context.Background(), e.duration+2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.self, args...)
	cmd.WaitDelay = 5 * time.Second
	cmd.SysProcAttr = childAttr()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return s, errors.Join(err, srv.close())
	}
	if err := cmd.Start(); err != nil {
		return s, errors.Join(err, srv.close())
	}
	var (
		t0               time.Time
		cpu0             time.Duration
		recv0            int64
		prof             *os.File
		res              clientResult
		started, stopped bool
		perr             error
	)
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == lineStart && !started:
			started = true
			if e.profileDir != "" {
				name := filepath.Join(e.profileDir, fmt.Sprintf("%s_n%d_r%d.pprof", w.key(), n, round))
				if prof, perr = os.Create(name); perr == nil {
					perr = pprof.StartCPUProfile(prof)
				}
			}
			t0, cpu0 = time.Now(), cpuTime()
			recv0 = srv.received.Load()
		case line == lineStop && started && !stopped:
			stopped = true
			s.Window, s.ServerCPU = time.Since(t0).Seconds(), (cpuTime() - cpu0).Seconds()
			s.Received = srv.received.Load() - recv0
			if prof != nil {
				pprof.StopCPUProfile()
				perr = errors.Join(perr, prof.Close())
			}
		case strings.HasPrefix(line, lineResult):
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, lineResult)), &res); err != nil {
				perr = errors.Join(perr, fmt.Errorf("client result %q: %w", line, err))
			}
		}
	}
	if prof != nil && !stopped { // the client died inside its window
		pprof.StopCPUProfile()
		prof.Close()
	}
	werr := cmd.Wait()
	cerr := srv.close()
	switch {
	case werr != nil:
		return s, fmt.Errorf("%v against %d sockets: client: %w\n%s", w, n, werr, stderr.Bytes())
	case !stopped || res.Window == 0:
		return s, fmt.Errorf("%v against %d sockets: the client reported no window\n%s", w, n, stderr.Bytes())
	case perr != nil:
		return s, perr
	case cerr != nil:
		return s, cerr
	}
	s.ClientCPU, s.Requests, s.Handshakes, s.Failures, s.P99 = res.CPU, res.Requests, res.Handshakes, res.Failures, res.P99
	if res.Failures > 0 {
		fmt.Fprintf(os.Stderr, "%v against %d sockets: %d failures, the first: %s\n", w, n, res.Failures, res.FirstError)
	}
	return s, nil
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}
