// Command bench compares udppool against the raw socket, side by side in
// one run: the benchmarks of bench_test.go are interleaved over several
// rounds, and the table shows medians and the ratios that matter, each
// target's margin and the spread of its ratio over the rounds, so that a
// reader tells a regression (every round misses) from noise (the rounds
// straddle the target).
//
//	go run ./examples/bench          # a table
//	go run ./examples/bench -json    # one JSON object
//
// Exit status, with -gate=true (the default):
//
//	0  every target met by the median of the rounds
//	1  a target missed by every round: a regression, not noise
//	3  a target missed by the median but met in some rounds: inconclusive,
//	   rerun with more -rounds on a quieter machine
//	2  the program could not measure (a bad flag, a benchmark that failed)
//
// With -gate=false it exits 0 whatever the ratios (still 2 if it could
// not measure).
//
// quic-go logs through the standard logger; the program collects those
// lines and prints them at the end with where they come from (for example
// the "Not a *net.UDPConn?" warning that the wrapper case provokes on
// purpose).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"maps"
	"math"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/udppool/udppool/examples/bench/benchcases"
)

type bench struct {
	name string
	fn   func(*testing.B)
}

// isBulk reports whether a benchmark is a QUIC transfer: its iterations
// take a tenth of a second each, so it needs a longer benchtime to average
// over more than one or two of them.
func (b bench) isBulk() bool { return strings.HasPrefix(b.name, "quic bulk") }

type result struct {
	nsPerOp     float64
	allocsPerOp float64
	mbPerSec    float64
	// cpuPerOp is the process's CPU time (user and system, all threads)
	// per operation in the benchmark's last run, setup included; zero where
	// the platform does not say. Unlike nsPerOp it hardly grows when other
	// processes take the machine's cores, so the ratio of a parallel
	// benchmark's to a serial one's shows contention on a busy machine too:
	// 1 means the cores did not slow each other down.
	cpuPerOp float64
}

// Exit statuses; see the package documentation.
const (
	exitMissed = 1
	exitFailed = 2
	exitNoise  = 3
)

// A target is a bound that a ratio must meet; op "" marks a ratio that is
// reported for information only.
type target struct {
	key      string
	op       string  // "<", "<=", ">" or ">="
	bound    float64 // the bound, or
	boundKey string  // the ratio whose value is the bound
}

func (t target) String() string {
	if t.boundKey != "" {
		return t.op + " " + strings.TrimSuffix(strings.TrimPrefix(t.boundKey, "throughput_"), "_over_raw")
	}
	return fmt.Sprintf("%s %g", t.op, t.bound)
}

func (t target) meets(v, bound float64) bool {
	switch t.op {
	case "<":
		return v < bound
	case "<=":
		return v <= bound
	case ">":
		return v > bound
	default:
		return v >= bound
	}
}

// margin is how far v lies on the good side of bound, relative to bound:
// positive when met, negative when missed.
func (t target) margin(v, bound float64) float64 {
	m := (v - bound) / math.Abs(bound)
	if t.op == "<" || t.op == "<=" {
		m = -m
	}
	return m + 0 // no "-0.0%" for a value on its bound
}

// verdict judges the median v and the rounds, of which met (of n) meet
// the target.
func (t target) verdict(v, bound float64, met, n int) string {
	switch {
	case t.meets(v, bound) && met == n:
		return "met"
	case t.meets(v, bound):
		return fmt.Sprintf("met (%d of %d rounds missed)", n-met, n)
	case met == 0:
		return "MISSED (every round)"
	default:
		return fmt.Sprintf("missed within noise (%d of %d rounds met)", met, n)
	}
}

func main() {
	rounds := flag.Int("rounds", 7, "interleaved rounds; medians are reported")
	benchtime := flag.Duration("benchtime", 300*time.Millisecond, "time per benchmark per round")
	bulktime := flag.Duration("bulktime", time.Second, "time per QUIC bulk transfer benchmark per round")
	asJSON := flag.Bool("json", false, "print one JSON object instead of a table")
	only := flag.String("run", "", "run only the benchmarks whose name matches this regular expression")
	gate := flag.Bool("gate", true, "exit with status 1 if a target is missed in every round, 3 if missed within noise (a brief run that only checks that the benchmarks still work sets it to false: its ratios are noise)")
	var overrides []target
	flag.Func("target", "override or add a target, as `ratio<bound` (or <=, >, >=), e.g. parallel_speedup>1.2; repeatable", func(v string) error {
		t, err := parseTarget(v)
		overrides = append(overrides, t)
		return err
	})
	testing.Init()
	flag.Parse()
	if *rounds < 1 {
		fmt.Fprintln(os.Stderr, "-rounds must be at least 1")
		os.Exit(exitFailed)
	}
	log.SetFlags(0)
	log.SetOutput(&quicLog)

	benches := []bench{
		{"acquire-release/10 keys", benchcases.AcquireRelease(10)},
		{"acquire-release/64 keys", benchcases.AcquireRelease(64)},
		{"acquire-release/10000 keys", benchcases.AcquireRelease(10000)},
		{"acquire-release/10000 keys, cycling all", benchcases.AcquireReleaseCycle(10000)},
		{"acquire-release/64 keys parallel", benchcases.AcquireReleaseParallel},
		{"first acquire/pool", benchcases.FirstAcquire},
		{"first acquire/net.ListenPacket", benchcases.ListenPacketBaseline},
		{"datagrams ReadFrom-WriteTo/raw", benchcases.Datagrams(false, false)},
		{"datagrams ReadFrom-WriteTo/pooled", benchcases.Datagrams(true, false)},
		{"datagrams ReadMsgUDP-WriteMsgUDP/raw", benchcases.Datagrams(false, true)},
		{"datagrams ReadMsgUDP-WriteMsgUDP/pooled", benchcases.Datagrams(true, true)},
		{"quic bulk/raw", benchcases.QUICBulk(benchcases.Raw)},
		{"quic bulk/pooled", benchcases.QUICBulk(benchcases.Pooled)},
		{"quic bulk/wrapper", benchcases.QUICBulk(benchcases.Wrapper)},
	}
	if *only != "" {
		re, err := regexp.Compile(*only)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(exitFailed)
		}
		benches = slices.DeleteFunc(benches, func(b bench) bool { return !re.MatchString(b.name) })
	}
	samples := make(map[string][]result)
	for round := range *rounds {
		// Interleave: every benchmark once per round, in a rotated order,
		// so drift in the machine's speed hits all of them alike.
		for i := range benches {
			b := benches[(i+round)%len(benches)]
			d := *benchtime
			if b.isBulk() {
				d = *bulktime
			}
			if err := flag.Set("test.benchtime", d.String()); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(exitFailed)
			}
			// testing.Benchmark calls fn with growing b.N until it runs
			// long enough; the CPU time of its last call is the one that
			// matches r.
			var lastCPU time.Duration
			r := testing.Benchmark(func(tb *testing.B) {
				start := cpuTime()
				b.fn(tb)
				lastCPU = cpuTime() - start
			})
			if r.N == 0 {
				fmt.Fprintf(os.Stderr, "%s failed\n", b.name)
				os.Exit(exitFailed)
			}
			res := result{nsPerOp: float64(r.T.Nanoseconds()) / float64(r.N), allocsPerOp: float64(r.AllocsPerOp())}
			if lastCPU > 0 {
				res.cpuPerOp = float64(lastCPU.Nanoseconds()) / float64(r.N)
			}
			if r.Bytes > 0 {
				res.mbPerSec = float64(r.Bytes) * float64(r.N) / 1e6 / r.T.Seconds()
			}
			samples[b.name] = append(samples[b.name], res)
		}
		fmt.Fprintf(os.Stderr, "round %d of %d done\n", round+1, *rounds)
	}
	med := func(name string, f func(result) float64) float64 {
		var v []float64
		for _, r := range samples[name] {
			v = append(v, f(r))
		}
		if len(v) == 0 {
			return math.NaN() // not run (see -run)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	ns := func(name string) float64 { return med(name, func(r result) float64 { return r.nsPerOp }) }
	mbs := func(name string) float64 { return med(name, func(r result) float64 { return r.mbPerSec }) }
	cpu := func(name string) float64 { return med(name, func(r result) float64 { return r.cpuPerOp }) }

	// ratios computes every ratio from one statistic per benchmark: the
	// median over the rounds (the reported value), or a single round's
	// sample (the spread).
	ratios := func(ns, mbs, allocs, cpu func(string) float64) map[string]float64 {
		return map[string]float64{
			"throughput_pooled_over_raw":  mbs("quic bulk/pooled") / mbs("quic bulk/raw"),
			"throughput_wrapper_over_raw": mbs("quic bulk/wrapper") / mbs("quic bulk/raw"),
			"acquire_release_ns":          ns("acquire-release/10 keys"),
			"acquire_release_allocs":      allocs("acquire-release/10 keys"),
			"acquire_10k_over_10":         ns("acquire-release/10000 keys") / ns("acquire-release/10 keys"),
			"acquire_10k_cycling_over_10": ns("acquire-release/10000 keys, cycling all") / ns("acquire-release/10 keys"),
			"parallel_speedup":            ns("acquire-release/64 keys") / ns("acquire-release/64 keys parallel"),
			"parallel_cpu_over_serial":    cpu("acquire-release/64 keys parallel") / cpu("acquire-release/64 keys"),
			"first_acquire_over_listen":   ns("first acquire/pool") / ns("first acquire/net.ListenPacket"),
			"datagram_pooled_over_raw":    mbs("datagrams ReadFrom-WriteTo/pooled") / mbs("datagrams ReadFrom-WriteTo/raw"),
			"datagram_msg_pooled_over_raw": mbs("datagrams ReadMsgUDP-WriteMsgUDP/pooled") /
				mbs("datagrams ReadMsgUDP-WriteMsgUDP/raw"),
			"throughput_raw_mb_s":    mbs("quic bulk/raw"),
			"throughput_pooled_mb_s": mbs("quic bulk/pooled"),
		}
	}
	summary := ratios(ns, mbs, func(name string) float64 { return med(name, func(r result) float64 { return r.allocsPerOp }) }, cpu)
	maps.DeleteFunc(summary, func(_ string, v float64) bool { return math.IsNaN(v) || math.IsInf(v, 0) })
	// perRound[i] holds the ratios of round i alone: benchmarks of one
	// round ran next to each other, so their ratio is one measurement and
	// the rounds' ratios show how much a value moves from noise alone.
	perRound := make([]map[string]float64, *rounds)
	for i := range perRound {
		at := func(name string, f func(result) float64) float64 {
			if s := samples[name]; i < len(s) {
				return f(s[i])
			}
			return math.NaN()
		}
		perRound[i] = ratios(
			func(n string) float64 { return at(n, func(r result) float64 { return r.nsPerOp }) },
			func(n string) float64 { return at(n, func(r result) float64 { return r.mbPerSec }) },
			func(n string) float64 { return at(n, func(r result) float64 { return r.allocsPerOp }) },
			func(n string) float64 { return at(n, func(r result) float64 { return r.cpuPerOp }) })
	}
	spread := func(key string) (lo, hi float64, vals []float64) {
		lo, hi = math.Inf(1), math.Inf(-1)
		for _, r := range perRound {
			if v, ok := r[key]; ok && !math.IsNaN(v) && !math.IsInf(v, 0) {
				lo, hi, vals = min(lo, v), max(hi, v), append(vals, v)
			}
		}
		return lo, hi, vals
	}
	for _, o := range overrides {
		if _, ok := perRound[0][o.key]; !ok {
			fmt.Fprintf(os.Stderr, "-target: no ratio %q\n", o.key)
			os.Exit(exitFailed)
		}
	}
	summary["rounds"] = float64(*rounds)

	// With -json the table goes to standard error, the object to standard
	// output, so one run gives both.
	w := os.Stdout
	if *asJSON {
		w = os.Stderr
	}
	fmt.Fprintf(w, "%-42s %12s %10s %10s %10s\n", "benchmark (median of rounds)", "ns/op", "allocs/op", "MB/s", "cpu ns/op")
	for _, b := range benches {
		mb := ""
		if v := mbs(b.name); v > 0 {
			mb = fmt.Sprintf("%.1f", v)
		}
		c := ""
		if v := cpu(b.name); v > 0 {
			c = fmt.Sprintf("%.1f", v)
		}
		fmt.Fprintf(w, "%-42s %12.1f %10.0f %10s %10s\n", b.name, ns(b.name), med(b.name, func(r result) float64 { return r.allocsPerOp }), mb, c)
	}
	fmt.Fprintln(w)
	targets := []target{
		{key: "throughput_pooled_over_raw", op: ">=", bound: 0.98},
		{key: "throughput_wrapper_over_raw", op: "<", boundKey: "throughput_pooled_over_raw"},
		{key: "acquire_release_ns", op: "<", bound: 200},
		{key: "acquire_release_allocs", op: "<=", bound: 1},
		{key: "acquire_10k_over_10", op: "<=", bound: 1.5},
		{key: "parallel_speedup", op: ">", bound: 1},
		{key: "parallel_cpu_over_serial"},
		{key: "acquire_10k_cycling_over_10"},
		{key: "datagram_pooled_over_raw"},
		{key: "datagram_msg_pooled_over_raw"},
		{key: "first_acquire_over_listen"},
	}
	for _, o := range overrides {
		if i := slices.IndexFunc(targets, func(t target) bool { return t.key == o.key }); i >= 0 {
			targets[i] = o
		} else {
			targets = append(targets, o)
		}
	}
	fmt.Fprintf(w, "%-30s %10s %14s %9s %21s  %s\n", "ratio", "value", "target", "margin", "rounds: min..max", "verdict")
	var missed, noisy []string
	for _, t := range targets {
		v, ok := summary[t.key]
		if !ok {
			continue
		}
		lo, hi, vals := spread(t.key)
		rng := ""
		if len(vals) > 0 {
			rng = fmt.Sprintf("%.3f..%.3f (%d)", lo, hi, len(vals))
			summary[t.key+"_round_min"], summary[t.key+"_round_max"] = lo, hi
		}
		if t.op == "" {
			fmt.Fprintf(w, "%-30s %10.3f %14s %9s %21s\n", t.key, v, "(info)", "", rng)
			continue
		}
		bound := t.bound
		if t.boundKey != "" {
			b, ok := summary[t.boundKey]
			if !ok { // not measured this run (see -run)
				fmt.Fprintf(w, "%-30s %10.3f %14s %9s %21s\n", t.key, v, "(info)", "", rng)
				continue
			}
			bound = b
		}
		// The bound of a ratio to another ratio moves with the rounds too:
		// each round compares with its own.
		roundBound := func(i int) float64 {
			if t.boundKey != "" {
				return perRound[i][t.boundKey]
			}
			return bound
		}
		met := 0
		for i, r := range perRound {
			if x, ok := r[t.key]; ok && t.meets(x, roundBound(i)) {
				met++
			}
		}
		verdict := t.verdict(v, bound, met, len(vals))
		switch {
		case strings.HasPrefix(verdict, "MISSED"):
			missed = append(missed, t.key)
		case strings.HasPrefix(verdict, "missed"):
			noisy = append(noisy, t.key)
		}
		fmt.Fprintf(w, "%-30s %10.3f %14s %+8.1f%% %21s  %s\n", t.key, v, t.String(), 100*t.margin(v, bound), rng, verdict)
	}
	fmt.Fprintln(w, "\ncpu ns/op: CPU time of the whole process per operation, setup included; parallel_cpu_over_serial near 1")
	fmt.Fprintln(w, "means the cores do not slow each other down, however busy the machine is.")
	fmt.Fprintln(w, "margin: how far the value is on the good side of its target (negative: the bad side), relative to the target.")
	fmt.Fprintln(w, "rounds: the ratio of each round alone (benchmarks of a round run side by side); a target that the")
	fmt.Fprintln(w, "median misses while some rounds meet it is missed within this run's noise: rerun with more -rounds.")
	quicLog.explain(w)
	if *asJSON {
		out, _ := json.MarshalIndent(summary, "", "  ")
		fmt.Println(string(out))
	}
	if len(missed) > 0 {
		fmt.Fprintf(os.Stderr, "targets missed in every round: %s\n", strings.Join(missed, ", "))
	}
	if len(noisy) > 0 {
		fmt.Fprintf(os.Stderr, "targets missed by the median but met in some rounds: %s\n", strings.Join(noisy, ", "))
	}
	os.Exit(exitCode(*gate, missed, noisy))
}

// exitCode is the program's exit status once it has measured.
func exitCode(gate bool, missed, noisy []string) int {
	switch {
	case !gate:
		return 0
	case len(missed) > 0:
		return exitMissed
	case len(noisy) > 0:
		return exitNoise
	}
	return 0
}

var targetRE = regexp.MustCompile(`^([a-z0-9_]+)(<=|>=|<|>)([-+0-9.eE]+)$`)

// parseTarget parses a -target flag.
func parseTarget(v string) (target, error) {
	m := targetRE.FindStringSubmatch(strings.ReplaceAll(v, " ", ""))
	if m == nil {
		return target{}, fmt.Errorf("target %q: want ratio<bound, ratio<=bound, ratio>bound or ratio>=bound", v)
	}
	bound, err := strconv.ParseFloat(m[3], 64)
	if err != nil {
		return target{}, fmt.Errorf("target %q: %w", v, err)
	}
	return target{key: m[1], op: m[2], bound: bound}, nil
}
