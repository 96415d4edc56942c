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

// steeringRatio runs steeringBench in the udppool module this program was
// built from and returns its steered/direct metric and the direct path's
// nanoseconds per datagram.
func steeringRatio(ctx context.Context) (ratio, directNs float64, err error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		return 0, 0, fmt.Errorf("no go command to run %s with: %w", steeringBench, err)
	}
	dir, err := exec.CommandContext(ctx, gobin, "list", "-m", "-f", "{{.Dir}}", "github.com/udppool/udppool").Output()
	if err != nil {
		return 0, 0, fmt.Errorf("the udppool module's source is not here (go list: %w)", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, gobin, "test", "-run", "^$", "-bench", "^"+steeringBench+"$", "-benchtime", "5x", "-count", "1", ".")
	cmd.Dir = strings.TrimSpace(string(dir))
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, 0, fmt.Errorf("go test -bench %s: %w\n%s", steeringBench, err, out)
	}
	return parseSteering(string(out))
}

// parseSteering reads the steered/direct and direct-ns/pkt metrics from
// go test's benchmark output.
func parseSteering(out string) (ratio, directNs float64, err error) {
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], steeringBench) {
			continue
		}
		for i := 1; i < len(f); i++ {
			v, perr := strconv.ParseFloat(f[i-1], 64)
			if perr != nil {
				continue
			}
			switch f[i] {
			case "steered/direct":
				ratio = v
			case "direct-ns/pkt":
				directNs = v
			}
		}
		if ratio > 0 {
			return ratio, directNs, nil
		}
	}
	return 0, 0, errors.New(steeringBench + " reported no steered/direct ratio (not on Linux?)")
}
