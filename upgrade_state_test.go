package udppool

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// cell writes transition's answer as the table in upgrade_state.go does.
func cell(t *testing.T, s upgradeState, e upgradeEvent) string {
	next, err := transition(s, e)
	if err != nil && next != s {
		t.Errorf("%v in %v: refused with %v but moved to %v", e, s, err, next)
	}
	switch {
	case err == nil && next == s:
		return "."
	case err == nil:
		return next.String()
	case errors.Is(err, errIgnored):
		return "-"
	case errors.Is(err, errAwaitPredecessor):
		return "wait"
	case errors.Is(err, errNotReady):
		return "ready"
	case errors.Is(err, ErrUpgradeInProgress):
		return "!busy"
	case errors.Is(err, ErrUpgraderStopped):
		return "!stopped"
	case errors.Is(err, ErrUpgradeFailed):
		return "!failed"
	}
	t.Errorf("%v in %v: unexpected answer %v", e, s, err)
	return err.Error()
}

// TestUpgradeStateTable holds the table in upgrade_state.go's comment and
// transition together: every (event, state) pair, each cell.
func TestUpgradeStateTable(t *testing.T) {
	src, err := os.ReadFile("upgrade_state.go")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(src), "\n")
	head := -1
	for i, l := range lines {
		if strings.HasPrefix(l, "//\tevent \\ state") {
			head = i
			break
		}
	}
	if head < 0 {
		t.Fatal("no table in upgrade_state.go")
	}
	// Columns start where the header's names start.
	header := strings.TrimPrefix(lines[head], "//\t")
	var starts []int
	for i := len("event \\ state"); i < len(header); i++ {
		if header[i] != ' ' && header[i-1] == ' ' {
			starts = append(starts, i)
		}
	}
	col := func(row string, i int) string {
		if starts[i] >= len(row) {
			return ""
		}
		end := len(row)
		if i+1 < len(starts) {
			end = min(starts[i+1], len(row))
		}
		return strings.TrimSpace(row[starts[i]:end])
	}
	if len(starts) != int(numUpgradeStates) {
		t.Fatalf("table has %d states, the code %d", len(starts), numUpgradeStates)
	}
	for i := range starts {
		if got, want := col(header, i), upgradeState(i).String(); got != want {
			t.Errorf("state column %d is %q, want %q", i, got, want)
		}
	}
	seen := map[upgradeEvent]bool{}
	for _, l := range lines[head+1:] {
		row, ok := strings.CutPrefix(l, "//\t")
		if !ok {
			break
		}
		name := strings.TrimSpace(row[:starts[0]])
		e := upgradeEvent(0)
		for e < numUpgradeEvents && e.String() != name {
			e++
		}
		if e == numUpgradeEvents {
			t.Errorf("table row %q names no event", name)
			continue
		}
		if seen[e] {
			t.Errorf("table row %q twice", name)
		}
		seen[e] = true
		for i := range starts {
			s := upgradeState(i)
			if got, want := col(row, i), cell(t, s, e); got != want {
				t.Errorf("%v in %v: the table says %q, transition %q", e, s, got, want)
			}
		}
	}
	for e := range numUpgradeEvents {
		if !seen[e] {
			t.Errorf("event %v has no row in the table", e)
		}
	}
}

// TestUpgradeStateInvariants checks what the table's users rely on: Stop
// ends every state, once; nothing leaves Stopped; only Stop enters it.
func TestUpgradeStateInvariants(t *testing.T) {
	for s := range numUpgradeStates {
		for e := range numUpgradeEvents {
			next, err := transition(s, e)
			switch {
			case s == stateStopped && next != stateStopped:
				t.Errorf("%v leaves Stopped for %v", e, next)
			case e == evStop && s != stateStopped && (err != nil || next != stateStopped):
				t.Errorf("Stop in %v: %v, %v", s, next, err)
			case e != evStop && s != stateStopped && next == stateStopped:
				t.Errorf("%v in %v enters Stopped", e, s)
			}
		}
	}
}
