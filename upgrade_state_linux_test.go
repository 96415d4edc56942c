package udppool

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/bpf"
)

func stateOf(u *Upgrader) upgradeState {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.at
}

func wantState(t *testing.T, u *Upgrader, want upgradeState, after string) {
	t.Helper()
	if got := stateOf(u); got != want {
		t.Errorf("after %s: state %v, want %v", after, got, want)
	}
}

// errNoCommand stands for a successor that cannot be started: the tests of
// this file start none.
var errNoCommand = errors.New("no successor in this test")

func noSuccessor(context.Context) (*exec.Cmd, error) { return nil, errNoCommand }

// TestUpgradeStatesFirstGeneration drives a first generation's Upgrader
// through the table's cells that need no other process: Fresh, Alone,
// Starting (a successor that cannot start) and Stopped, with every
// refusal of Stopped.
func TestUpgradeStatesFirstGeneration(t *testing.T) {
	u := newTestUpgrader(t, WithUpgradeCommand(noSuccessor))
	wantState(t, u, stateFresh, "NewUpgrader")
	if !u.state.Load().accepting {
		t.Error("a fresh first generation does not accept")
	}
	// Upgrade in Fresh: Ready first, then Starting, and the successor
	// that cannot start takes it back to Alone.
	if err := u.Upgrade(context.Background()); !errors.Is(err, errNoCommand) {
		t.Errorf("Upgrade without a successor: %v, want %v", err, errNoCommand)
	}
	wantState(t, u, stateAlone, "a failed Upgrade")
	if st := u.Stats(); st != (UpgradeStats{Started: 1, Failed: 1}) {
		t.Errorf("Stats: %+v", st)
	}
	if err := u.Ready(); err != nil {
		t.Errorf("Ready in Alone: %v", err)
	}
	wantState(t, u, stateAlone, "Ready in Alone")
	if err := u.Stop(); err != nil {
		t.Fatal(err)
	}
	wantState(t, u, stateStopped, "Stop")
	for name, call := range map[string]func() error{
		"Ready":   u.Ready,
		"Upgrade": func() error { return u.Upgrade(context.Background()) },
		"Stop":    u.Stop,
		"Listen": func() error {
			_, err := u.Listen(context.Background(), "tcp", "127.0.0.1:0")
			return err
		},
	} {
		if err := call(); !errors.Is(err, ErrUpgraderStopped) {
			t.Errorf("%s after Stop: %v, want ErrUpgraderStopped", name, err)
		}
	}
	wantState(t, u, stateStopped, "the refusals")
	select {
	case <-u.Exit():
		t.Error("Exit closed without a hand-over")
	default:
	}
}

// TestUpgradeStatesSuccessor drives a successor's Upgrader (real sockets
// joined into stand-in groups of a predecessor, see steeredSuccessor)
// through Joining, Sharing, Orphaned and Alone, with an Upgrade that
// waits for the predecessor and one refused meanwhile.
func TestUpgradeStatesSuccessor(t *testing.T) {
	never := func(Key, []bpf.Instruction) bool { return false }
	t.Run("Joining Sharing Alone", func(t *testing.T) {
		u, _, _ := steeredSuccessor(t, never, WithUpgradeCommand(noSuccessor))
		wantState(t, u, stateJoining, "connecting")
		if u.state.Load().accepting {
			t.Error("accepting before Ready")
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := u.Upgrade(ctx); err == nil || !strings.Contains(err.Error(), "waiting for the predecessor") {
			t.Errorf("Upgrade with an ended context in Joining: %v", err)
		}
		wantState(t, u, stateJoining, "an Upgrade that gave up waiting")

		waiting := make(chan error, 1)
		go func() { waiting <- u.Upgrade(context.Background()) }()
		// The second call is refused at once, whatever the first does.
		for deadline := time.Now().Add(testTimeout); !u.upgradeCall.Load(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("Upgrade never began")
			}
		}
		if err := u.Upgrade(context.Background()); !errors.Is(err, ErrUpgradeInProgress) {
			t.Errorf("a second Upgrade while one waits: %v, want ErrUpgradeInProgress", err)
		}
		if err := u.Ready(); err != nil {
			t.Fatal(err)
		}
		wantState(t, u, stateSharing, "Ready in Joining")
		if !u.state.Load().accepting || u.state.Load().peer == nil {
			t.Error("Sharing: not accepting, or no predecessor to forward to")
		}
		select {
		case err := <-waiting:
			t.Fatalf("Upgrade ended while the predecessor drains: %v", err)
		default:
		}
		u.mu.Lock()
		u.predecessorGone()
		u.mu.Unlock()
		// The waiting Upgrade goes on: Alone, Starting, and back.
		if err := waitErr(t, waiting, "the waiting Upgrade"); !errors.Is(err, errNoCommand) {
			t.Errorf("the waiting Upgrade: %v, want %v", err, errNoCommand)
		}
		wantState(t, u, stateAlone, "the predecessor left and an Upgrade failed")
		if u.HasPredecessor() || u.state.Load().peer != nil {
			t.Error("a predecessor after it left")
		}
	})
	t.Run("Joining Orphaned Alone", func(t *testing.T) {
		u, _, _ := steeredSuccessor(t, never, WithUpgradeCommand(noSuccessor))
		u.mu.Lock()
		u.predecessorGone()
		u.mu.Unlock()
		wantState(t, u, stateOrphaned, "the predecessor left before Ready")
		// Upgrade in Orphaned makes this process ready first.
		if err := u.Upgrade(context.Background()); !errors.Is(err, errNoCommand) {
			t.Errorf("Upgrade in Orphaned: %v, want %v", err, errNoCommand)
		}
		wantState(t, u, stateAlone, "Upgrade in Orphaned")
	})
	t.Run("Stop in Joining", func(t *testing.T) {
		u, _, _ := steeredSuccessor(t, never)
		if err := u.Stop(); err != nil {
			t.Fatal(err)
		}
		wantState(t, u, stateStopped, "Stop")
		if u.HasPredecessor() {
			t.Error("Stop kept the predecessor")
		}
		if err := u.Ready(); !errors.Is(err, ErrUpgraderStopped) {
			t.Errorf("Ready after Stop: %v", err)
		}
	})
}
