package udppool

import (
	"errors"
	"fmt"
)

// The Upgrader is one state machine. Its state is Upgrader.at, changed by
// Upgrader.on only, under Upgrader.mu; on asks transition, which is the
// table below in code (TestUpgradeStateTable holds them together). The
// state machine decides; the mechanisms act: each caller of on does what
// the move it was granted asks (publish the receive path's view, resteer,
// tell the service manager, kill, close Exit or Resumed), and nothing else
// changes the state. The peers (pred, starting, succ) are the state's
// data, set and cleared beside the moves that make them valid. The state
// is a field under the mutex rather than a goroutine's own: Ready, Upgrade
// and Stop answer their callers at once with the table's refusal, the
// watches of the other generation run on goroutines of their own already,
// and the receive path never waits for the state (it reads the view that
// publish stores).
//
// The states:
//
//	Fresh     a first generation (not started by Upgrade) before Ready: it serves
//	Joining   started by Upgrade, before Ready; the predecessor serves
//	Orphaned  started by Upgrade, before Ready; the predecessor is gone
//	Sharing   ready; the predecessor drains beside it
//	Alone     ready; no other generation runs
//	Starting  an Upgrade started (or starts) a successor and waits for its Ready
//	Settling  the successor took over; handshakes begun here settle, Exit still open
//	Handed    Exit closed: this process drains and stops
//	Stopped   after Stop
//
// The events, and what each does in each state: a state is the move, "."
// stays with nothing to decide, "-" is ignored (the event's source is not
// there: a stale peer, no Upgrade running), "!" is a refusal, the state
// stays and the caller returns the error (busy: ErrUpgradeInProgress,
// stopped: ErrUpgraderStopped, failed: ErrUpgradeFailed); "wait": Upgrade
// waits for the predecessor to go and asks again, "ready": Upgrade calls
// Ready and asks again.
//
//	event \ state     Fresh     Joining   Orphaned  Sharing   Alone     Starting  Settling  Handed    Stopped
//	Ready             Alone     Sharing   Alone     .         .         .         .         .         !stopped
//	Ready rolls back  -         -         -         Joining   Orphaned  -         -         -         -
//	Upgrade           ready     wait      ready     wait      Starting  !busy     !busy     !busy     !stopped
//	successor started -         -         -         -         -         .         -         -         !stopped
//	successor ready   -         -         -         -         -         Settling  -         -         !stopped
//	successor failed  -         -         -         -         -         Alone     -         -         !stopped
//	settled           -         -         -         -         !failed   -         Handed    -         !stopped
//	successor gone    -         -         -         -         -         -         Alone     Alone     .
//	predecessor gone  -         Orphaned  -         Alone     -         -         -         -         .
//	Stop              Stopped   Stopped   Stopped   Stopped   Stopped   Stopped   Stopped   Stopped   !stopped
//
// What the mechanisms do on each move (the functions named act):
//
//   - Ready (Ready): from Fresh, Joining and Orphaned first the PID file
//     and (Fresh) READY=1 to the service manager. Joining→Sharing and
//     Orphaned→Alone: publish (accept), resteer (the ready program); to
//     Sharing also the ready message to the predecessor, whose failure is
//     "predecessor gone". A resteer that fails is "Ready rolls back":
//     publish, resteer (the predecessor's program), Ready's error.
//   - Upgrade (Upgrade): one call at a time (Upgrader.upgradeCall; a second
//     is refused busy, also while the first waits). Alone→Starting: the
//     RELOADING=1 notice, start the successor and send the hello (handOver).
//   - successor started (handOver): remembers the successor, whose wait
//     Stop can end; refused in Stopped: the successor is killed.
//   - successor ready (handOver): MAINPID= to the service manager first
//     (while Starting), then Starting→Settling: the successor is the peer,
//     publish (stop accepting; forward its datagrams), park the plain
//     sockets it took, receive and watch it, settle. Refused in Stopped:
//     killed.
//   - successor failed (handOver: could not start, exited or gave up
//     before Ready, ready timeout, Upgrade's context): Starting→Alone: log,
//     kill, READY=1 again and the PID file back, resteer; in Stopped the
//     same without READY=1 (this process stops).
//   - settled (handOver): Settling→Handed closes Exit; in Alone the
//     successor died while handshakes settled, and Upgrade fails; in
//     Stopped Upgrade returns ErrUpgraderStopped (the successor serves on).
//   - successor gone (watch): Settling→Alone and Handed→Alone: log,
//     accept again (publish, shared sockets read again, resteer, plain
//     sockets unparked), MAINPID= of this process and the PID file back;
//     from Handed also Resumed closes and Exit is a new channel. In
//     Stopped the successor is only forgotten.
//   - predecessor gone (watchPredecessor, Ready, Stop): Joining→Orphaned,
//     Sharing→Alone, and in Stopped: forget it, close its unused sockets
//     and listeners, resteer alone (errors logged), publish, HasPredecessor
//     false.
//   - Stop (Stop): every state→Stopped. From Starting the wait for Ready
//     ends; from Settling and Handed the successor is told 'gone' (it
//     serves on), from the others STOPPING=1 (this was the last
//     generation). Then the pools and TCP copies close, the peers are
//     forgotten, publish.
//   - A signal is no event of the Upgrader: the application maps it.
//     examples/upgrade makes SIGHUP an Upgrade (refused with a line while
//     one runs or while it drains) and SIGTERM/SIGINT a drain and Stop; a
//     signal during a drain prints a line and the drain finishes. The PID 1
//     supervisor (NewUpgrader) forwards signals to the serving generation.
type upgradeState uint8

const (
	stateFresh upgradeState = iota
	stateJoining
	stateOrphaned
	stateSharing
	stateAlone
	stateStarting
	stateSettling
	stateHanded
	stateStopped
	numUpgradeStates
)

var upgradeStateNames = [numUpgradeStates]string{
	"Fresh", "Joining", "Orphaned", "Sharing", "Alone", "Starting", "Settling", "Handed", "Stopped",
}

func (s upgradeState) String() string {
	if s < numUpgradeStates {
		return upgradeStateNames[s]
	}
	return fmt.Sprintf("upgradeState(%d)", uint8(s))
}

// accepting reports whether a process in state s takes new handshakes: the
// receive path keeps them, and the group's program (with a predecessor)
// sends them here.
func (s upgradeState) accepting() bool {
	return s == stateFresh || s == stateSharing || s == stateAlone || s == stateStarting
}

// announced reports whether Ready has told the PID file and the service
// manager in state s, or would.
func (s upgradeState) announced() bool {
	return s != stateFresh && s != stateJoining && s != stateOrphaned
}

// An upgradeEvent is something that happens to the Upgrader.
type upgradeEvent uint8

const (
	evReady upgradeEvent = iota
	evReadyRolledBack
	evUpgrade
	evSuccessorStarted
	evSuccessorReady
	evSuccessorFailed
	evSettled
	evSuccessorGone
	evPredecessorGone
	evStop
	numUpgradeEvents
)

var upgradeEventNames = [numUpgradeEvents]string{
	"Ready", "Ready rolls back", "Upgrade", "successor started", "successor ready",
	"successor failed", "settled", "successor gone", "predecessor gone", "Stop",
}

func (e upgradeEvent) String() string {
	if e < numUpgradeEvents {
		return upgradeEventNames[e]
	}
	return fmt.Sprintf("upgradeEvent(%d)", uint8(e))
}

// Answers of transition that are not errors of the API.
var (
	// errIgnored: the event does not happen in this state (its source is
	// absent, or it names a peer that is not the current one).
	errIgnored = errors.New("udppool: upgrade event ignored")
	// errAwaitPredecessor: Upgrade must wait for the predecessor to go.
	errAwaitPredecessor = errors.New("udppool: upgrade waits for the predecessor")
	// errNotReady: Upgrade must make this process ready first.
	errNotReady = errors.New("udppool: upgrade needs Ready first")
)

// transition is the table: the state that event e moves state s to, or
// the refusal (with s unchanged).
func transition(s upgradeState, e upgradeEvent) (upgradeState, error) {
	if s == stateStopped {
		switch e {
		case evSuccessorGone, evPredecessorGone:
			return s, nil // forgotten
		case evReadyRolledBack:
			return s, errIgnored
		}
		return s, ErrUpgraderStopped
	}
	switch e {
	case evReady:
		switch s {
		case stateFresh, stateOrphaned:
			return stateAlone, nil
		case stateJoining:
			return stateSharing, nil
		}
		return s, nil
	case evReadyRolledBack:
		switch s {
		case stateSharing:
			return stateJoining, nil
		case stateAlone:
			return stateOrphaned, nil
		}
	case evUpgrade:
		switch s {
		case stateJoining, stateSharing:
			return s, errAwaitPredecessor
		case stateFresh, stateOrphaned:
			return s, errNotReady
		case stateAlone:
			return stateStarting, nil
		}
		return s, ErrUpgradeInProgress
	case evSuccessorStarted:
		if s == stateStarting {
			return s, nil
		}
	case evSuccessorReady:
		if s == stateStarting {
			return stateSettling, nil
		}
	case evSuccessorFailed:
		if s == stateStarting {
			return stateAlone, nil
		}
	case evSettled:
		switch s {
		case stateSettling:
			return stateHanded, nil
		case stateAlone:
			return s, ErrUpgradeFailed
		}
	case evSuccessorGone:
		if s == stateSettling || s == stateHanded {
			return stateAlone, nil
		}
	case evPredecessorGone:
		switch s {
		case stateJoining:
			return stateOrphaned, nil
		case stateSharing:
			return stateAlone, nil
		}
	case evStop:
		return stateStopped, nil
	}
	return s, errIgnored
}

// on applies event e: it moves u to the state the table names and returns
// the state u was in, or returns the refusal and leaves u as it is. u.mu
// must be held.
func (u *Upgrader) on(e upgradeEvent) (from upgradeState, err error) {
	from = u.at
	next, err := transition(from, e)
	if err != nil {
		return from, err
	}
	u.at = next
	return from, nil
}

// would returns what on(e) would do, without doing it. u.mu must be held.
func (u *Upgrader) would(e upgradeEvent) (upgradeState, error) {
	return transition(u.at, e)
}

// is reports whether u is in state s.
func (u *Upgrader) is(s upgradeState) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.at == s
}
