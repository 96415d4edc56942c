package main

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestVerdicts: a target met by the median and every round is met; missed
// by every round it is a regression (exit 1 with -gate); missed by the
// median but met by some rounds it is noise (exit 3); -gate=false exits 0.
func TestVerdicts(t *testing.T) {
	gt := target{key: "parallel_speedup", op: ">", bound: 1}
	lt := target{key: "acquire_release_ns", op: "<", bound: 200}
	for _, tc := range []struct {
		t       target
		v       float64
		met, n  int
		verdict string
		margin  float64
	}{
		{gt, 1.2, 5, 5, "met", 0.2},
		{gt, 1.2, 4, 5, "met (1 of 5 rounds missed)", 0.2},
		{gt, 0.63, 0, 6, "MISSED (every round)", -0.37},
		{gt, 0.95, 2, 7, "missed within noise (2 of 7 rounds met)", -0.05},
		{lt, 150, 3, 3, "met", 0.25},
		{lt, 250, 0, 3, "MISSED (every round)", -0.25},
	} {
		if got := tc.t.verdict(tc.v, tc.t.bound, tc.met, tc.n); got != tc.verdict {
			t.Errorf("%v at %v, %d of %d rounds met: verdict %q, want %q", tc.t, tc.v, tc.met, tc.n, got, tc.verdict)
		}
		if got := tc.t.margin(tc.v, tc.t.bound); got < tc.margin-1e-9 || got > tc.margin+1e-9 {
			t.Errorf("%v at %v: margin %v, want %v", tc.t, tc.v, got, tc.margin)
		}
	}
	for _, tc := range []struct {
		gate          bool
		missed, noisy []string
		code          int
	}{
		{true, nil, nil, 0},
		{true, []string{"a"}, []string{"b"}, exitMissed},
		{true, nil, []string{"b"}, exitNoise},
		{false, []string{"a"}, nil, 0},
	} {
		if got := exitCode(tc.gate, tc.missed, tc.noisy); got != tc.code {
			t.Errorf("exitCode(%v, %v, %v) = %d, want %d", tc.gate, tc.missed, tc.noisy, got, tc.code)
		}
	}
	if _, err := parseTarget("parallel_speedup=>1"); err == nil {
		t.Error("a malformed -target parsed")
	}
}

// TestProgram builds the program and runs one cheap benchmark with targets
// whose outcome does not depend on timing (the allocation count of an
// acquire is 1): met exits 0, missed in every round exits 1, with -gate=false
// 0, a target naming no ratio 2. One short QUIC transfer through the
// wrapper provokes quic-go's "Not a *net.UDPConn?" warning, which must come
// after the table, explained, not before it bare.
func TestProgram(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the benchmark program")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the program with")
	}
	bin := filepath.Join(t.TempDir(), "bench")
	if out, err := exec.Command(gobin, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	run := func(args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"-rounds", "2", "-benchtime", "5ms", "-bulktime", "1ms"}, args...)...)
		cmd.WaitDelay = time.Second
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee):
			return string(out), ee.ExitCode()
		case err != nil:
			t.Fatalf("run %v: %v", args, err)
		}
		return string(out), 0
	}
	alloc := "-run=^acquire-release/10 keys$"
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{alloc, "-target", "acquire_release_allocs<=1", "-target", "acquire_release_ns<1e12"}, 0},
		{[]string{alloc, "-target", "acquire_release_allocs<0.5", "-target", "acquire_release_ns<1e12"}, exitMissed},
		{[]string{alloc, "-target", "acquire_release_allocs<0.5", "-gate=false"}, 0},
		{[]string{alloc, "-target", "no_such_ratio>1"}, exitFailed},
	} {
		out, code := run(tc.args...)
		if code != tc.code {
			t.Errorf("%v: exit %d, want %d\n%s", tc.args, code, tc.code, out)
		}
	}
	out, code := run("-run=^quic bulk/wrapper$", "-gate=false")
	if code != 0 {
		t.Fatalf("wrapper transfer: exit %d\n%s", code, out)
	}
	warn := strings.Index(out, "Not a *net.UDPConn?")
	table := strings.Index(out, "benchmark (median of rounds)")
	if warn < 0 || table < 0 || warn < table || !strings.Contains(out[warn:], "sys_conn.go") {
		t.Fatalf("quic-go's warning is not explained after the table:\n%s", out)
	}
}
