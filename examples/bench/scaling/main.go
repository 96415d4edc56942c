// Command scaling measures how a QUIC server on one pooled address scales
// with the number of sockets serving it (udppool.WithSockets): N = 1, 2,
// 4 ... up to the number of CPUs (at most udppool.MaxSockets), each
// against the same workloads, in interleaved rounds, with ratios against
// N = 1 measured in the same run.
//
//	go run ./examples/bench/scaling            # a table
//	go run ./examples/bench/scaling -json      # one JSON object (the table goes to standard error)
//
// The server (one udppool Transport and Listener, N sockets) runs in this
// process; each measurement's client is this program run again, in a
// process of its own, so that their CPU times are counted apart: the
// server's with getrusage over the client's measured window, the client's
// by the client over the same window. Where the machine has two CPUs or
// more, the server is pinned to the first half of them (rounded up) and the
// client to the rest (sched_setaffinity, Linux; -pin=false shares them),
// and GOMAXPROCS follows. On a 2-core machine that is one core each, so
// N > 1 shows what more sockets cost, not what they gain: the receive path
// of one socket then already shares its core with everything else.
//
// Workloads, each over loopback (127.0.0.1), every loop bounded in count
// and time:
//
//   - bulk/C conns: C connections, each uploading on one stream for the
//     window; aggregate MB/s the server read, and server CPU seconds per GB.
//   - rr/C conns: C connections, each sending requests (-req bytes, one
//     stream per request, as HTTP/3 does) and reading the responses (-resp
//     bytes) one after another; requests/s, p99 latency, server CPU per
//     request.
//   - handshakes/D dialers: D clients dialing new connections, each from a
//     new UDP socket, one after another; handshakes/s and server CPU per
//     handshake.
//
// Each connection has a UDP socket of its own, as real clients have; the
// server's reuseport program spreads their handshakes over its sockets.
//
// Targets, printed with a verdict (see -gate): throughput at N = the
// server's cores at least 0.8 x cores x throughput at N = 1, judged only
// where the server has two cores or more to itself; the per-datagram cost
// of kernel steering at most 1.02 x direct, from the root package's
// BenchmarkUpgradeRatios (run with go test where the module's source is at
// hand; -steering=false skips it). Exit status as examples/bench's: 0 met
// or not judged, 1 a target missed by every round, 3 missed by the median
// but met in some rounds, 2 could not measure; -gate=false exits 0 once it
// has measured.
//
// -cpuprofile DIR writes a CPU profile of the server for each measured
// window (DIR/<workload>_n<N>_r<round>.pprof); `go tool pprof -top -cum`
// over those of one workload and N shows, for example, the share of
// quic-go's receive loop, (*Transport).listen, in the server's CPU time.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/udppool/udppool"
	"github.com/udppool/udppool/udppooltest/testca"
)

// Exit statuses; see the package documentation.
const (
	exitMissed = 1
	exitFailed = 2
	exitNoise  = 3
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "client" {
		os.Exit(clientMain(os.Args[2:]))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// config is what the flags say.
type config struct {
	rounds     int
	duration   time.Duration
	sockets    []int
	conns      []int
	dialers    int
	only       *regexp.Regexp
	pin        bool
	serverCPUs int
	steering   bool
	asJSON     bool
	gate       bool
	reqSize    int
	respSize   int
	profileDir string
}

func parseFlags(args []string, stderr io.Writer) (config, []int, error) {
	fs := flag.NewFlagSet("scaling", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	fs.IntVar(&c.rounds, "rounds", 3, "interleaved rounds; medians are reported")
	fs.DurationVar(&c.duration, "duration", time.Second, "measured window of each workload per round")
	socketsFlag := fs.String("sockets", "", "socket counts to compare, comma-separated, 1 first (default 1, 2, 4 ... up to the number of CPUs or udppool.MaxSockets)")
	connsFlag := fs.String("conns", "16,64,256", "connection counts of the bulk and rr workloads, comma-separated")
	fs.IntVar(&c.dialers, "dialers", 16, "concurrent dialers of the handshakes workload")
	runFlag := fs.String("run", "", "run only the workloads whose name (as in the table) matches this regular expression")
	fs.BoolVar(&c.pin, "pin", true, "pin server and client to separate CPUs where there are two or more")
	fs.IntVar(&c.serverCPUs, "server-cpus", 0, "with -pin, how many CPUs the server gets (default half, rounded up); the client gets the rest")
	fs.BoolVar(&c.steering, "steering", true, "run the root package's "+steeringBench+" for the steering target (needs the go command and the module's source)")
	fs.BoolVar(&c.asJSON, "json", false, "print one JSON object instead of a table")
	fs.BoolVar(&c.gate, "gate", true, "exit with status 1 if a target is missed in every round, 3 if missed within noise")
	fs.IntVar(&c.reqSize, "req", 64, "request size of the rr workloads (bytes)")
	fs.IntVar(&c.respSize, "resp", 1024, "response size of the rr workloads (bytes, at most 65535)")
	fs.StringVar(&c.profileDir, "cpuprofile", "", "write a CPU profile of the server for each measured window into this `directory`")
	if err := fs.Parse(args); err != nil {
		return c, nil, err
	}
	if fs.NArg() > 0 {
		return c, nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	all, err := allowedCPUs()
	if err != nil {
		return c, nil, err
	}
	switch {
	case c.rounds < 1:
		return c, nil, fmt.Errorf("-rounds %d: need at least 1", c.rounds)
	case c.duration <= 0:
		return c, nil, fmt.Errorf("-duration %v: need a positive window", c.duration)
	case c.dialers < 1:
		return c, nil, fmt.Errorf("-dialers %d: need at least 1", c.dialers)
	case c.reqSize < 0 || c.reqSize > maxRequest:
		return c, nil, fmt.Errorf("-req %d: want 0 to %d", c.reqSize, maxRequest)
	case c.respSize < 0 || c.respSize > math.MaxUint16:
		return c, nil, fmt.Errorf("-resp %d: want 0 to %d", c.respSize, math.MaxUint16)
	case c.serverCPUs < 0 || c.serverCPUs >= len(all) && c.serverCPUs > 0:
		return c, nil, fmt.Errorf("-server-cpus %d: want 1 to %d (one CPU at least is the client's)", c.serverCPUs, len(all)-1)
	}
	if c.conns, err = parseInts(*connsFlag); err != nil {
		return c, nil, fmt.Errorf("-conns: %w", err)
	}
	for _, n := range c.conns {
		if n < 1 || n > 4096 {
			return c, nil, fmt.Errorf("-conns %d: want 1 to 4096", n)
		}
	}
	if *socketsFlag == "" {
		top := min(len(all), udppool.MaxSockets)
		for n := 1; n < top; n *= 2 {
			c.sockets = append(c.sockets, n)
		}
		c.sockets = append(c.sockets, top)
	} else if c.sockets, err = parseInts(*socketsFlag); err != nil {
		return c, nil, fmt.Errorf("-sockets: %w", err)
	}
	if c.sockets[0] != 1 {
		return c, nil, fmt.Errorf("-sockets %s: the first count must be 1, the baseline", *socketsFlag)
	}
	for i, n := range c.sockets {
		if n < 1 || n > udppool.MaxSockets || slices.Contains(c.sockets[:i], n) {
			return c, nil, fmt.Errorf("-sockets %s: want different counts from 1 to %d", *socketsFlag, udppool.MaxSockets)
		}
	}
	if *runFlag != "" {
		if c.only, err = regexp.Compile(*runFlag); err != nil {
			return c, nil, fmt.Errorf("-run: %w", err)
		}
	}
	return c, all, nil
}

// machine describes where a run ran, for the table's heading and the JSON.
type machine struct {
	CPUs       int     `json:"cpus"`
	ServerCPUs []int   `json:"server_cpus"` // nil: not pinned
	ClientCPUs []int   `json:"client_cpus"`
	Pinned     bool    `json:"pinned"`
	PinError   string  `json:"pin_error,omitempty"`
	GOMAXPROCS int     `json:"server_gomaxprocs"`
	Load       float64 `json:"load_average_1m_at_start"` // 0 where unknown
	LoadEnd    float64 `json:"load_average_1m_at_end"`
	GoVersion  string  `json:"go_version"`
	OS         string  `json:"os"`
}

func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// A row is the medians of one workload at one socket count.
type row struct {
	Workload    string  `json:"workload"`
	Sockets     int     `json:"sockets"`
	Rate        float64 `json:"rate"`
	RateUnit    string  `json:"rate_unit"`
	OverOne     float64 `json:"over_n1"` // Rate over the same workload's at N = 1
	RoundMin    float64 `json:"over_n1_round_min"`
	RoundMax    float64 `json:"over_n1_round_max"`
	ServerCores float64 `json:"server_cores"` // server CPU time over the window
	ClientCores float64 `json:"client_cores"`
	ServerCost  float64 `json:"server_cost"`
	CostUnit    string  `json:"server_cost_unit"`
	// CostOverOne is ServerCost over the same workload's at N = 1: what
	// more sockets cost per unit of work. Unlike the rate it hardly moves
	// when other processes take the server's cores.
	CostOverOne float64 `json:"server_cost_over_n1"`
	P99         float64 `json:"p99_s,omitempty"`
	Failures    int64   `json:"failures"`
}

// A judged target: a ratio, its bound and what the rounds say.
type judged struct {
	Key      string  `json:"key"`
	Value    float64 `json:"value"`
	Op       string  `json:"op,omitempty"`
	Bound    float64 `json:"bound,omitempty"`
	Verdict  string  `json:"verdict"`
	RoundMin float64 `json:"round_min,omitempty"`
	RoundMax float64 `json:"round_max,omitempty"`
	DirectNs float64 `json:"direct_ns_per_datagram,omitempty"` // steered_over_direct's baseline
}

func run(args []string, stdout, stderr io.Writer) int {
	c, all, err := parseFlags(args, stderr)
	if err != nil {
		if err != flag.ErrHelp {
			fmt.Fprintln(stderr, err)
		}
		return exitFailed
	}
	log.SetFlags(0)
	log.SetOutput(stderr)
	var workloads []workload
	for _, n := range c.conns {
		workloads = append(workloads, workload{"bulk", n})
	}
	for _, n := range c.conns {
		workloads = append(workloads, workload{"rr", n})
	}
	workloads = append(workloads, workload{"handshakes", c.dialers})
	if c.only != nil {
		workloads = slices.DeleteFunc(workloads, func(w workload) bool { return !c.only.MatchString(w.String()) })
	}
	if len(workloads) == 0 {
		fmt.Fprintln(stderr, "-run matches no workload")
		return exitFailed
	}

	// The steering benchmark first, before any pinning: it compiles.
	var steer *judged
	if c.steering {
		fmt.Fprintf(stderr, "running %s ...\n", steeringBench)
		ratios, direct, err := steeringRatio(context.Background())
		if err != nil {
			steer = &judged{Key: "steered_over_direct", Verdict: "not measured: " + firstLine(err.Error())}
		} else {
			steer = &judged{Key: "steered_over_direct", Value: median(ratios), Op: "<=", Bound: 1.02,
				RoundMin: slices.Min(ratios), RoundMax: slices.Max(ratios), DirectNs: median(direct)}
			steer.Verdict = verdict(steer.Op, steer.Value, steer.Bound, ratios)
		}
	}

	m := machine{CPUs: len(all), GoVersion: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH, Load: loadAverage()}
	e := &env{duration: c.duration, reqSize: c.reqSize, respSize: c.respSize, profileDir: c.profileDir}
	if c.pin && len(all) >= 2 {
		k := c.serverCPUs
		if k == 0 {
			k = (len(all) + 1) / 2
		}
		srv, cli := all[:k], all[k:]
		if err := pin(srv); err != nil {
			m.PinError = err.Error()
		} else {
			m.Pinned, m.ServerCPUs, m.ClientCPUs = true, srv, cli
			e.clientCPUs = cli
		}
	}
	m.GOMAXPROCS = runtime.GOMAXPROCS(0)
	if e.self, err = os.Executable(); err != nil {
		fmt.Fprintln(stderr, err)
		return exitFailed
	}
	dir, err := os.MkdirTemp("", "scaling")
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitFailed
	}
	defer os.RemoveAll(dir)
	ca, err := testca.NewCA()
	if err == nil {
		e.cert, err = ca.Issue(testca.Leaf{Names: []string{"localhost", "127.0.0.1"}})
	}
	if err == nil {
		e.caFile = filepath.Join(dir, "ca.pem")
		err = os.WriteFile(e.caFile, ca.PEM(), 0o600)
	}
	if err == nil && e.profileDir != "" {
		err = os.MkdirAll(e.profileDir, 0o755)
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitFailed
	}

	// samples[workload][n][round]
	samples := make(map[workload]map[int][]sample)
	for _, w := range workloads {
		samples[w] = make(map[int][]sample)
	}
	for round := range c.rounds {
		// Interleave: every workload and socket count once per round, in
		// rotated orders, so that drift in the machine's speed hits all
		// alike.
		for i := range workloads {
			w := workloads[(i+round)%len(workloads)]
			for j := range c.sockets {
				n := c.sockets[(j+round)%len(c.sockets)]
				s, err := measure(e, w, n, round)
				if err != nil {
					fmt.Fprintln(stderr, err)
					return exitFailed
				}
				samples[w][n] = append(samples[w][n], s)
			}
		}
		fmt.Fprintf(stderr, "round %d of %d done\n", round+1, c.rounds)
	}

	m.LoadEnd = loadAverage()
	rows, targets := summarize(c, m, workloads, samples)
	if steer != nil {
		targets = append(targets, *steer)
	}
	w := stdout
	if c.asJSON {
		w = stderr
	}
	printTable(w, c, m, rows, targets)
	if c.asJSON {
		out, _ := json.MarshalIndent(struct {
			Machine  machine  `json:"machine"`
			Rounds   int      `json:"rounds"`
			Window   float64  `json:"window_s"`
			Rows     []row    `json:"rows"`
			Targets  []judged `json:"targets"`
			Sockets  []int    `json:"sockets"`
			Workload []string `json:"workloads"`
		}{m, c.rounds, c.duration.Seconds(), rows, targets, c.sockets, names(workloads)}, "", "  ")
		fmt.Fprintln(stdout, string(out))
	}
	var missed, noisy []string
	for _, t := range targets {
		switch {
		case strings.HasPrefix(t.Verdict, "MISSED"):
			missed = append(missed, t.Key)
		case strings.HasPrefix(t.Verdict, "missed"):
			noisy = append(noisy, t.Key)
		}
	}
	if len(missed) > 0 {
		fmt.Fprintf(stderr, "targets missed in every round: %s\n", strings.Join(missed, ", "))
	}
	if len(noisy) > 0 {
		fmt.Fprintf(stderr, "targets missed by the median but met in some rounds: %s\n", strings.Join(noisy, ", "))
	}
	switch {
	case !c.gate:
		return 0
	case len(missed) > 0:
		return exitMissed
	case len(noisy) > 0:
		return exitNoise
	}
	return 0
}

func names(ws []workload) []string {
	var s []string
	for _, w := range ws {
		s = append(s, w.String())
	}
	return s
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func median(v []float64) float64 {
	v = slices.DeleteFunc(slices.Clone(v), func(x float64) bool { return math.IsNaN(x) || math.IsInf(x, 0) })
	if len(v) == 0 {
		return math.NaN()
	}
	slices.Sort(v)
	return v[len(v)/2]
}

func each(ss []sample, f func(sample) float64) []float64 {
	v := make([]float64, len(ss))
	for i, s := range ss {
		v[i] = f(s)
	}
	return v
}

// summarize computes the rows and the scaling targets. Medians are over
// the rounds; a ratio's spread is over the rounds' own ratios (the
// measurements of one round ran next to each other).
func summarize(c config, m machine, workloads []workload, samples map[workload]map[int][]sample) ([]row, []judged) {
	var rows []row
	var targets []judged
	cores := len(m.ServerCPUs)
	for _, w := range workloads {
		base := each(samples[w][1], func(s sample) float64 { return s.rate(w) })
		baseCost := median(each(samples[w][1], func(s sample) float64 { return s.serverCost(w) }))
		for _, n := range c.sockets {
			ss := samples[w][n]
			rates := each(ss, func(s sample) float64 { return s.rate(w) })
			var perRound []float64
			for i := range min(len(rates), len(base)) {
				perRound = append(perRound, rates[i]/base[i])
			}
			r := row{
				Workload: w.String(), Sockets: n, RateUnit: w.rateUnit(), CostUnit: w.costUnit(),
				Rate:        median(rates),
				ServerCores: median(each(ss, func(s sample) float64 { return s.ServerCPU / s.Window })),
				ClientCores: median(each(ss, func(s sample) float64 { return s.ClientCPU / s.Window })),
				ServerCost:  median(each(ss, func(s sample) float64 { return s.serverCost(w) })),
			}
			r.OverOne = r.Rate / median(base)
			r.CostOverOne = r.ServerCost / baseCost
			r.RoundMin, r.RoundMax = slices.Min(perRound), slices.Max(perRound)
			if w.kind == "rr" {
				r.P99 = median(each(ss, func(s sample) float64 { return s.P99 }))
			}
			for _, s := range ss {
				r.Failures += s.Failures
			}
			rows = append(rows, r)

			// Throughput at N = the server's cores against cores x N = 1;
			// where that cannot be judged, the largest N's for information.
			at := c.sockets[len(c.sockets)-1]
			if m.Pinned && cores >= 2 && slices.Contains(c.sockets, cores) {
				at = cores
			}
			if n != at || n == 1 {
				continue
			}
			t := judged{Key: "scaling_" + w.key() + "_n" + strconv.Itoa(n), Value: r.OverOne, RoundMin: r.RoundMin, RoundMax: r.RoundMax}
			switch {
			case !m.Pinned:
				t.Verdict = "(info) not judged: server and client share the CPUs"
			case cores < 2:
				t.Verdict = fmt.Sprintf("(info) not judged: the server has %d core", cores)
			case n != cores:
				t.Verdict = fmt.Sprintf("(info) not judged: the server has %d cores, not %d", cores, n)
			default:
				t.Op, t.Bound = ">=", 0.8*float64(cores)
				t.Verdict = verdict(t.Op, t.Value, t.Bound, perRound)
			}
			targets = append(targets, t)
		}
	}
	return rows, targets
}

// verdict judges a median v against bound and the rounds' values.
func verdict(op string, v, bound float64, rounds []float64) string {
	meets := func(x float64) bool {
		if op == "<=" {
			return x <= bound
		}
		return x >= bound
	}
	met := 0
	for _, x := range rounds {
		if meets(x) {
			met++
		}
	}
	n := len(rounds)
	switch {
	case meets(v) && met == n:
		return "met"
	case meets(v):
		return fmt.Sprintf("met (%d of %d rounds missed)", n-met, n)
	case met == 0:
		return "MISSED (every round)"
	default:
		return fmt.Sprintf("missed within noise (%d of %d rounds met)", met, n)
	}
}

func printTable(w io.Writer, c config, m machine, rows []row, targets []judged) {
	pinned := "not pinned: server and client share the CPUs"
	switch {
	case m.Pinned:
		pinned = fmt.Sprintf("server on CPUs %s, client on CPUs %s", joinInts(m.ServerCPUs), joinInts(m.ClientCPUs))
	case m.PinError != "":
		pinned = "not pinned (" + m.PinError + ")"
	}
	fmt.Fprintf(w, "%d CPUs (%s), %s, load average %.2f at the start, %.2f at the end (this program's own load included);\n",
		m.CPUs, m.OS, pinned, m.Load, m.LoadEnd)
	fmt.Fprintf(w, "%d rounds of %v per workload and socket count\n\n", c.rounds, c.duration)
	fmt.Fprintf(w, "%-22s %7s %14s %7s %15s %7s %7s %14s %7s %9s\n",
		"workload (medians)", "sockets", "rate", "x N=1", "rounds min..max", "server", "client", "server cpu", "cpu", "p99")
	fmt.Fprintf(w, "%-22s %7s %14s %7s %15s %7s %7s %14s %7s %9s\n", "", "", "", "", "", "cores", "cores", "", "x N=1", "")
	for _, r := range rows {
		p99 := ""
		if r.P99 > 0 {
			p99 = fmt.Sprintf("%.2f ms", r.P99*1e3)
		}
		spread := ""
		if r.Sockets != 1 {
			spread = fmt.Sprintf("%.2f..%.2f", r.RoundMin, r.RoundMax)
		}
		fail := ""
		if r.Failures > 0 {
			fail = fmt.Sprintf("  %d failed", r.Failures)
		}
		fmt.Fprintf(w, "%-22s %7d %14s %7.3f %15s %7.2f %7.2f %14s %7.3f %9s%s\n", r.Workload, r.Sockets,
			fmt.Sprintf("%.1f %s", r.Rate, r.RateUnit), r.OverOne, spread, r.ServerCores, r.ClientCores,
			fmt.Sprintf("%.3g %s", r.ServerCost, r.CostUnit), r.CostOverOne, p99, fail)
	}
	fmt.Fprintf(w, "\n%-28s %8s %10s %15s  %s\n", "target", "value", "bound", "rounds min..max", "verdict")
	for _, t := range targets {
		bound, spread := "", ""
		if t.Op != "" {
			bound = fmt.Sprintf("%s %.3g", t.Op, t.Bound)
		}
		if t.RoundMax > 0 {
			spread = fmt.Sprintf("%.2f..%.2f", t.RoundMin, t.RoundMax)
		}
		fmt.Fprintf(w, "%-28s %8.3f %10s %15s  %s\n", t.Key, t.Value, bound, spread, t.Verdict)
	}
	fmt.Fprint(w, `
x N=1: the rate over the same workload's at 1 socket (medians); rounds: that ratio in each round alone.
server, client cores: each process's CPU time over the window. server cpu: the server's CPU time per
unit of work; cpu x N=1: that over N = 1's, which other processes on the machine hardly move.
scaling_*: throughput at N = the server's cores over N = 1, bound 0.8 x cores, judged where the server
has two cores or more to itself.
`)
	fmt.Fprintf(w, "steered_over_direct: %s (root package, go test -count %d), per datagram, bound 1.02.\n", steeringBench, steeringRuns)
}
