package udppool_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestExamplesLinkNoTestCode: the example programs are what users copy,
// so they must not link the testing package or goleak (once they did,
// through udppooltest, and printed test flags in -help). The benchmark
// program runs testing.Benchmark, so it alone may link testing, but not
// goleak.
func TestExamplesLinkNoTestCode(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to list the examples' dependencies")
	}
	out, err := exec.Command(gobin, "list", "-f", `{{.ImportPath}}{{range .Deps}} {{.}}{{end}}`, "./examples/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for line := range strings.Lines(string(out)) {
		deps := strings.Fields(line)
		prog := deps[0]
		for _, d := range deps[1:] {
			bad := strings.HasPrefix(d, "go.uber.org/goleak") ||
				d == "testing" && !strings.HasSuffix(prog, "/examples/bench") && !strings.HasSuffix(prog, "/benchcases")
			if bad {
				t.Errorf("%s links %s", prog, d)
			}
		}
	}
}
