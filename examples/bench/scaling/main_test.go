package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestProgram builds the program and runs a tiny configuration of every
// workload: the JSON must hold a row per workload and socket count with
// work done, CPU time counted on both sides and no failure, and the
// targets must be there with a verdict. The rates are not judged: they
// depend on the machine.
func TestProgram(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the scaling program")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the program with")
	}
	bin := filepath.Join(t.TempDir(), "scaling")
	if out, err := exec.Command(gobin, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	run := func(args ...string) (stdout, stderr string, code int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.WaitDelay = 5 * time.Second
		var o, e strings.Builder
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee):
			return o.String(), e.String(), ee.ExitCode()
		case err != nil:
			t.Fatalf("run %v: %v", args, err)
		}
		return o.String(), e.String(), 0
	}

	const sockets = "1,2"
	profiles := t.TempDir()
	out, errOut, code := run("-rounds", "1", "-duration", "100ms", "-conns", "2", "-dialers", "2",
		"-sockets", sockets, "-steering=false", "-gate=false", "-json", "-cpuprofile", profiles)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, errOut)
	}
	var res struct {
		Machine machine  `json:"machine"`
		Rows    []row    `json:"rows"`
		Targets []judged `json:"targets"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("JSON: %v\n%s", err, out)
	}
	want := map[string]bool{}
	for _, w := range []string{"bulk/2 conns", "rr/2 conns", "handshakes/2 dialers"} {
		for s := range strings.SplitSeq(sockets, ",") {
			want[w+" N="+s] = true
		}
	}
	for _, r := range res.Rows {
		name := r.Workload + " N=" + itoa(r.Sockets)
		if !want[name] {
			t.Errorf("unexpected row %s", name)
		}
		delete(want, name)
		if r.Rate <= 0 || r.Failures != 0 || r.ServerCost <= 0 {
			t.Errorf("%s: rate %v %s, %d failures, server cost %v %s", name, r.Rate, r.RateUnit, r.Failures, r.ServerCost, r.CostUnit)
		}
		if r.ClientCores <= 0 || r.ServerCores <= 0 {
			t.Errorf("%s: CPU not counted: server %v cores, client %v", name, r.ServerCores, r.ClientCores)
		}
		if r.Workload == "rr/2 conns" && r.P99 <= 0 {
			t.Errorf("%s: no p99 latency", name)
		}
	}
	for name := range want {
		t.Errorf("no row %s", name)
	}
	// A profile of the server for each window: 3 workloads at 2 counts.
	for _, w := range []string{"bulk_2", "rr_2", "handshakes_2"} {
		for s := range strings.SplitSeq(sockets, ",") {
			name := filepath.Join(profiles, w+"_n"+s+"_r0.pprof")
			if fi, err := os.Stat(name); err != nil || fi.Size() == 0 {
				t.Errorf("profile %s: %v", name, err)
			}
		}
	}
	if len(res.Targets) == 0 {
		t.Error("no targets")
	}
	for _, tg := range res.Targets {
		if tg.Verdict == "" {
			t.Errorf("target %s without a verdict", tg.Key)
		}
	}
	if !strings.Contains(errOut, "workload (medians)") {
		t.Errorf("with -json the table goes to standard error:\n%s", errOut)
	}

	// Bad flags: exit 2, with the reason.
	for _, args := range [][]string{
		{"-sockets", "2,1"},
		{"-sockets", "1,2,2"},
		{"-sockets", "1,33"},
		{"-rounds", "0"},
		{"-run", "nothing matches this"},
		{"-resp", "70000"},
	} {
		if _, errOut, code := run(args...); code != exitFailed || errOut == "" {
			t.Errorf("%v: exit %d, want %d with a reason\n%s", args, code, exitFailed, errOut)
		}
	}
}

// TestVerdict: the rounds decide between a miss and noise.
func TestVerdict(t *testing.T) {
	for _, tc := range []struct {
		op     string
		v, b   float64
		rounds []float64
		want   string
	}{
		{">=", 1.7, 1.6, []float64{1.7, 1.65}, "met"},
		{">=", 1.7, 1.6, []float64{1.7, 1.5}, "met (1 of 2 rounds missed)"},
		{">=", 1.2, 1.6, []float64{1.1, 1.3}, "MISSED (every round)"},
		{">=", 1.5, 1.6, []float64{1.5, 1.7, 1.4}, "missed within noise (1 of 3 rounds met)"},
		{"<=", 1.01, 1.02, nil, "met"},
		{"<=", 1.05, 1.02, nil, "MISSED (every round)"},
	} {
		if got := verdict(tc.op, tc.v, tc.b, tc.rounds); got != tc.want {
			t.Errorf("verdict(%s %v, %v, %v) = %q, want %q", tc.op, tc.b, tc.v, tc.rounds, got, tc.want)
		}
	}
}

// TestParseSteering reads the metrics of BenchmarkUpgradeRatios as go test
// prints them.
func TestParseSteering(t *testing.T) {
	out := "goos: linux\n" +
		"BenchmarkUpgradeRatios-2   \t       3\t 812345678 ns/op\t      4071 direct-ns/pkt\t         2.402 forwarded/direct\t         1.013 steered/direct\n" +
		"BenchmarkUpgradeRatios-2   \t       3\t 712345678 ns/op\t      3900 direct-ns/pkt\t         2.5 forwarded/direct\t         0.98 steered/direct\n" +
		"PASS\n"
	ratios, direct, err := parseSteering(out)
	if err != nil || !slices.Equal(ratios, []float64{1.013, 0.98}) || !slices.Equal(direct, []float64{4071, 3900}) {
		t.Fatalf("parseSteering = %v, %v, %v; want [1.013 0.98], [4071 3900]", ratios, direct, err)
	}
	if _, _, err := parseSteering("PASS\n"); err == nil {
		t.Fatal("no benchmark line, no error")
	}
}

func TestQuantile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	if q := quantile(d, 0.99); q != 99 {
		t.Errorf("p99 of 1..100 = %v", q)
	}
	if q := quantile(d[:1], 0.99); q != 1 {
		t.Errorf("p99 of one = %v", q)
	}
	if q := quantile(nil, 0.5); q != 0 {
		t.Errorf("p50 of none = %v", q)
	}
}

func itoa(n int) string { return joinInts([]int{n}) }
