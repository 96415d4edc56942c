// Command bench compares udppool against the raw socket, side by side in
// one run: the benchmarks of bench_test.go are interleaved over several
// rounds, and the table shows medians and the ratios that matter. It exits
// with status 1 if a ratio misses its target, unless -gate=false.
//
//	go run ./examples/bench          # a table
//	go run ./examples/bench -json    # one JSON object
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"math"
	"os"
	"regexp"
	"slices"
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
}

func main() {
	rounds := flag.Int("rounds", 7, "interleaved rounds; medians are reported")
	benchtime := flag.Duration("benchtime", 300*time.Millisecond, "time per benchmark per round")
	bulktime := flag.Duration("bulktime", time.Second, "time per QUIC bulk transfer benchmark per round")
	asJSON := flag.Bool("json", false, "print one JSON object instead of a table")
	only := flag.String("run", "", "run only the benchmarks whose name matches this regular expression")
	gate := flag.Bool("gate", true, "exit with status 1 if a target is missed (a brief run that only checks that the benchmarks still work sets it to false: its ratios are noise)")
	testing.Init()
	flag.Parse()

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
			os.Exit(2)
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
				os.Exit(2)
			}
			r := testing.Benchmark(b.fn)
			if r.N == 0 {
				fmt.Fprintf(os.Stderr, "%s failed\n", b.name)
				os.Exit(1)
			}
			res := result{nsPerOp: float64(r.T.Nanoseconds()) / float64(r.N), allocsPerOp: float64(r.AllocsPerOp())}
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

	summary := map[string]float64{
		"throughput_pooled_over_raw":  mbs("quic bulk/pooled") / mbs("quic bulk/raw"),
		"throughput_wrapper_over_raw": mbs("quic bulk/wrapper") / mbs("quic bulk/raw"),
		"acquire_release_ns":          ns("acquire-release/10 keys"),
		"acquire_release_allocs":      med("acquire-release/10 keys", func(r result) float64 { return r.allocsPerOp }),
		"acquire_10k_over_10":         ns("acquire-release/10000 keys") / ns("acquire-release/10 keys"),
		"acquire_10k_cycling_over_10": ns("acquire-release/10000 keys, cycling all") / ns("acquire-release/10 keys"),
		"parallel_speedup":            ns("acquire-release/64 keys") / ns("acquire-release/64 keys parallel"),
		"first_acquire_over_listen":   ns("first acquire/pool") / ns("first acquire/net.ListenPacket"),
		"datagram_pooled_over_raw":    mbs("datagrams ReadFrom-WriteTo/pooled") / mbs("datagrams ReadFrom-WriteTo/raw"),
		"datagram_msg_pooled_over_raw": mbs("datagrams ReadMsgUDP-WriteMsgUDP/pooled") /
			mbs("datagrams ReadMsgUDP-WriteMsgUDP/raw"),
		"throughput_raw_mb_s":    mbs("quic bulk/raw"),
		"throughput_pooled_mb_s": mbs("quic bulk/pooled"),
		"rounds":                 float64(*rounds),
	}
	maps.DeleteFunc(summary, func(_ string, v float64) bool { return math.IsNaN(v) })
	// With -json the table goes to standard error, the object to standard
	// output, so one run gives both.
	w := os.Stdout
	if *asJSON {
		w = os.Stderr
	}
	fmt.Fprintf(w, "%-42s %12s %10s %10s\n", "benchmark (median of rounds)", "ns/op", "allocs/op", "MB/s")
	for _, b := range benches {
		mb := ""
		if v := mbs(b.name); v > 0 {
			mb = fmt.Sprintf("%.1f", v)
		}
		fmt.Fprintf(w, "%-42s %12.1f %10.0f %10s\n", b.name, ns(b.name), med(b.name, func(r result) float64 { return r.allocsPerOp }), mb)
	}
	fmt.Fprintln(w)
	targets := []struct {
		key, target string
		ok          bool
		needs       string // another ratio the target compares with
	}{
		{"throughput_pooled_over_raw", ">= 0.98", summary["throughput_pooled_over_raw"] >= 0.98, ""},
		{"throughput_wrapper_over_raw", "below pooled", summary["throughput_wrapper_over_raw"] < summary["throughput_pooled_over_raw"], "throughput_pooled_over_raw"},
		{"acquire_release_ns", "< 200", summary["acquire_release_ns"] < 200, ""},
		{"acquire_release_allocs", "<= 1", summary["acquire_release_allocs"] <= 1, ""},
		{"acquire_10k_over_10", "<= 1.5", summary["acquire_10k_over_10"] <= 1.5, ""},
		{"parallel_speedup", "> 1", summary["parallel_speedup"] > 1, ""},
		{"acquire_10k_cycling_over_10", "(info)", true, ""},
		{"datagram_pooled_over_raw", "(info)", true, ""},
		{"datagram_msg_pooled_over_raw", "(info)", true, ""},
		{"first_acquire_over_listen", "(info)", true, ""},
	}
	fmt.Fprintf(w, "%-32s %10s %14s  %s\n", "ratio", "value", "target", "")
	var missed []string
	for _, t := range targets {
		if _, ok := summary[t.key]; !ok {
			continue
		}
		if _, ok := summary[t.needs]; t.needs != "" && !ok {
			t.ok, t.target = true, "(info)" // not measured this run (see -run)
		}
		mark := "met"
		if !t.ok {
			mark = "MISSED"
			missed = append(missed, t.key)
		}
		if t.target == "(info)" {
			mark = ""
		}
		fmt.Fprintf(w, "%-32s %10.3f %14s  %s\n", t.key, summary[t.key], t.target, mark)
	}
	if *asJSON {
		out, _ := json.MarshalIndent(summary, "", "  ")
		fmt.Println(string(out))
	}
	if len(missed) > 0 {
		fmt.Fprintf(os.Stderr, "targets missed: %s\n", strings.Join(missed, ", "))
		if *gate {
			os.Exit(1)
		}
	}
}
