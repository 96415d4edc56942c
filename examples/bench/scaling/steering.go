package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// steeringBench is the root package's benchmark of the receive path per
// datagram, steered by the reuseport program over direct, measured side by
// side in one run (upgrade_bench_linux_test.go); the program runs it
// rather than measuring the same thing a second way.
const steeringBench = "BenchmarkUpgradeRatios"

// steeringRuns is how often steeringBench runs (go test -count): on a busy
// machine one run's ratio moves by a tenth or more, so the target is judged
// on the median and the runs' spread, as the scaling ratios are.
const steeringRuns = 5

// steeringRatio runs steeringBench in the udppool module this program was
// built from and returns its steered/direct metric and the direct path's
// nanoseconds per datagram, one of each per run.
func steeringRatio(ctx context.Context) (ratios, directNs []float64, err error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		return nil, nil, fmt.Errorf("no go command to run %s with: %w", steeringBench, err)
	}
	dir, err := exec.CommandContext(ctx, gobin, "list", "-m", "-f", "{{.Dir}}", "github.com/udppool/udppool").Output()
	if err != nil {
		return nil, nil, fmt.Errorf("the udppool module's source is not here (go list: %w)", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, gobin, "test", "-run", "^$", "-bench", "^"+steeringBench+"$", "-benchtime", "3x", "-count", strconv.Itoa(steeringRuns), ".")
	cmd.Dir = strings.TrimSpace(string(dir))
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, nil, fmt.Errorf("go test -bench %s: %w\n%s", steeringBench, err, out)
	}
	return parseSteering(string(out))
}

// parseSteering reads the steered/direct and direct-ns/pkt metrics of
// each benchmark line of go test's output.
func parseSteering(out string) (ratios, directNs []float64, err error) {
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], steeringBench) {
			continue
		}
		var ratio, direct float64
		for i := 1; i < len(f); i++ {
			v, perr := strconv.ParseFloat(f[i-1], 64)
			if perr != nil {
				continue
			}
			switch f[i] {
			case "steered/direct":
				ratio = v
			case "direct-ns/pkt":
				direct = v
			}
		}
		if ratio > 0 {
			ratios, directNs = append(ratios, ratio), append(directNs, direct)
		}
	}
	if len(ratios) == 0 {
		return nil, nil, errors.New(steeringBench + " reported no steered/direct ratio (not on Linux?)")
	}
	return ratios, directNs, nil
}
