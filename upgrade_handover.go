package udppool

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// Control messages after the hello.
const (
	msgReady  = 'R' // successor to predecessor: serving
	msgFailed = 'F' // successor to predecessor: gives up, a line says why
	msgGone   = 'G' // predecessor to successor: its sockets are closed
)

// Upgrade starts a successor and waits until it is ready, then hands over
// (see Upgrader). If the successor exits, ctx ends or the ready timeout
// passes first, the successor is killed and this process serves on; the
// error then wraps ErrUpgradeFailed. Upgrade waits for a predecessor that
// still drains to stop first.
func (u *Upgrader) Upgrade(ctx context.Context) error {
	if !u.upgradeCall.CompareAndSwap(false, true) {
		u.mu.Lock()
		_, err := u.would(evUpgrade)
		u.mu.Unlock()
		if errors.Is(err, ErrUpgraderStopped) {
			return err
		}
		return ErrUpgradeInProgress // the other call's
	}
	defer u.upgradeCall.Store(false)
	for {
		u.mu.Lock()
		_, err := u.on(evUpgrade)
		u.mu.Unlock()
		switch {
		case errors.Is(err, errAwaitPredecessor):
			select {
			case <-u.predGone:
			case <-ctx.Done():
				return fmt.Errorf("udppool: upgrade: waiting for the predecessor to stop: %w", ctx.Err())
			}
			continue
		case errors.Is(err, errNotReady):
			if err := u.Ready(); err != nil {
				return err
			}
			continue
		case err != nil:
			return err
		}
		break // Starting
	}
	u.stats.started.Add(1)
	err := u.handOver(ctx)
	if err != nil {
		u.stats.failed.Add(1)
	} else {
		u.stats.succeeded.Add(1)
	}
	return err
}

// handOver starts a successor, waits for its Ready and hands over: the
// moves of Starting.
func (u *Upgrader) handOver(ctx context.Context) error {
	u.notifyReloading()
	s, err := u.start(ctx)
	if err != nil {
		return u.fail(nil, err)
	}
	u.log.Info("udppool: successor started", peerAttrs(s)...)
	u.mu.Lock()
	_, err = u.on(evSuccessorStarted)
	if err == nil {
		u.starting = s // for Stop to end
	}
	u.mu.Unlock()
	var taken map[string]bool
	if err == nil {
		taken, err = u.awaitReady(ctx, s)
	}
	if err != nil {
		return u.fail(s, err)
	}
	if u.is(stateStarting) {
		// The service manager must know the successor before this
		// process can exit.
		u.notifyHandOver(s.pid)
	}
	u.mu.Lock()
	u.starting = nil
	if _, err := u.on(evSuccessorReady); err != nil {
		// Stop came first: this process ends without a hand-over, and so
		// does the upgrade it began.
		u.mu.Unlock()
		u.log.Info("udppool: successor ready after Stop; ending it", peerAttrs(s)...)
		s.kill()
		return err
	}
	u.log.Info("udppool: successor ready; handing over", peerAttrs(s)...)
	s.release()
	u.succ = s
	u.resumed = make(chan struct{})
	u.taken = taken
	// Only the sockets this successor took over are shared; one that an
	// earlier successor took over and this one binds anew is not.
	for _, f := range u.transports() {
		f.shared.Store(taken[f.keyStr])
	}
	u.publish()
	u.mu.Unlock()
	u.parkTaken(true)
	go u.receive(s)
	go u.watch(s)
	// New handshakes go to the successor from now on; those already begun
	// here finish here before the application closes its listeners.
	u.settle()
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, err := u.on(evSettled); err != nil {
		if errors.Is(err, ErrUpgradeFailed) {
			// It died while this process settled: watch took the
			// handshakes back, and the application has nothing to leave.
			return fmt.Errorf("udppool: upgrade: %w: successor exited right after ready", err)
		}
		return err
	}
	close(u.exit)
	return nil
}

// fail ends an upgrade whose successor s failed before its Ready, or
// (with s nil) could not be started: Starting→Alone, or in Stopped the
// same mechanisms without telling the service manager that this process
// serves on.
func (u *Upgrader) fail(s *peer, cause error) error {
	u.mu.Lock()
	u.starting = nil
	_, serr := u.on(evSuccessorFailed)
	u.mu.Unlock()
	if serr != nil && !errors.Is(cause, serr) {
		cause = errors.Join(serr, cause)
	}
	if s == nil {
		u.log.Error("udppool: starting a successor failed", slog.Any("cause", cause))
	} else {
		u.log.Error("udppool: successor failed before ready; this process serves on",
			append(peerAttrs(s), slog.Any("cause", cause))...)
		s.kill()
	}
	if serr == nil {
		u.notifyUpgradeFailed(cause)
	}
	if s == nil {
		return fmt.Errorf("udppool: upgrade: %w", cause)
	}
	u.mu.Lock()
	// The successor may have attached its program before it died: put
	// this process's back.
	rerr := u.resteer()
	u.mu.Unlock()
	return errors.Join(fmt.Errorf("udppool: upgrade: %w: %w", ErrUpgradeFailed, cause), rerr)
}

// awaitReady waits for the successor's ready message and returns the
// sockets it took over.
func (u *Upgrader) awaitReady(ctx context.Context, s *peer) (taken map[string]bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, u.opts.readyTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { s.ctrl.SetReadDeadline(pastDeadline) })
	defer stop()
	// The successor sends nothing after the ready message, so a buffered
	// reader takes nothing from later reads.
	r := bufio.NewReader(s.ctrl)
	b, err := r.ReadByte()
	switch {
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case err != nil:
		return nil, fmt.Errorf("successor exited: %w", err)
	case b == msgFailed:
		why, _ := r.ReadString('\n')
		return nil, fmt.Errorf("successor gave up: %s", strings.TrimSuffix(why, "\n"))
	case b != msgReady:
		return nil, fmt.Errorf("unexpected control message %q", b)
	}
	taken = make(map[string]bool)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return nil, fmt.Errorf("successor exited: %w", err)
		}
		if line == "\n" {
			break
		}
		taken[strings.TrimSuffix(line, "\n")] = true
	}
	if err := s.ctrl.SetReadDeadline(time.Time{}); err != nil {
		return nil, err
	}
	return taken, nil
}

// parkTaken stops (on) or resumes this process's reads of the plain
// sockets that the successor took over and reads itself: the datagrams
// of a plain socket are the newest generation's, and a shared socket
// gives each to whichever process reads first. The handles keep their
// writes, deadlines and Close. Pool.mu is taken, so u.mu must not be held.
func (u *Upgrader) parkTaken(on bool) {
	u.mu.Lock()
	pools, taken := slices.Clone(u.pools), u.taken
	u.mu.Unlock()
	for _, p := range pools {
		p.mu.Lock()
		for k, e := range p.entries {
			if taken[k.String()] && e.sock != nil && e.qt == nil && !e.quic.Load() {
				e.sock.gates[dirRead].park(on, dirRead)
			}
		}
		p.mu.Unlock()
	}
}

// watch notices the successor's exit. One that exits before this process
// has stopped leaves the port to it: this process takes new handshakes
// back, its own program steers them here again, and it reads its shared
// sockets again.
func (u *Upgrader) watch(s *peer) {
	var b [1]byte
	for {
		if _, err := s.ctrl.Read(b[:]); err != nil {
			break
		}
	}
	close(s.gone)
	if u.successorGone(s) {
		u.parkTaken(false)
		u.mu.Lock()
		u.taken = nil
		u.mu.Unlock()
		// The service manager took the successor for the main process.
		u.notifyResumed()
	}
}

// successorGone forgets successor s, which has exited, and reports
// whether this process takes the port back (Settling or Handed→Alone).
func (u *Upgrader) successorGone(s *peer) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.succ != s {
		return false // Stop forgot it
	}
	from, err := u.on(evSuccessorGone)
	if err != nil {
		return false
	}
	u.succ = nil
	s.close()
	if from == stateStopped {
		u.publish()
		return false
	}
	u.log.Error("udppool: successor exited after taking over; this process takes new handshakes back", peerAttrs(s)...)
	for _, f := range u.transports() {
		f.shared.Store(false)
	}
	u.publish()
	if err := u.resteer(); err != nil {
		u.log.Error("udppool: steering back to this process failed", slog.Any("cause", err))
	}
	if from == stateHanded {
		u.exit = make(chan struct{})
		close(u.resumed)
	}
	return true
}

// Ready announces that this process serves: from now on it takes every new
// handshake, and a predecessor stops accepting. In a process not started by
// Upgrade it only tells the PID file and the service manager.
func (u *Upgrader) Ready() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	from := u.at
	if _, err := u.would(evReady); err != nil {
		return err
	}
	if !from.announced() {
		// Before a predecessor hears of it: it exits once it has.
		if err := u.announceReady(); err != nil {
			return err
		}
	}
	u.on(evReady)
	if from != stateJoining && from != stateOrphaned {
		return nil // serving already
	}
	// Accept before the kernel sends handshakes here: until then this
	// process would forward them to the predecessor.
	u.publish()
	if err := u.resteer(); err != nil {
		// Every group back to the predecessor's program, also those that
		// took this process's before one failed.
		u.on(evReadyRolledBack)
		u.publish()
		return errors.Join(err, u.resteer())
	}
	if from == stateJoining {
		// The ready message lists the sockets this process took over from
		// the predecessor, which it must stop reading.
		msg := []byte{msgReady}
		for k := range u.shared {
			msg = append(msg, k.String()...)
			msg = append(msg, '\n')
		}
		msg = append(msg, '\n')
		if _, err := u.pred.ctrl.Write(msg); err != nil {
			// The predecessor is gone: this process serves alone.
			u.predecessorGone()
		}
	}
	return nil
}

// tellPredecessor sends a successor's reason to give up to the
// predecessor, whose Upgrade returns it; the successor exits after.
func (u *Upgrader) tellPredecessor(err error) {
	u.mu.Lock()
	s := u.pred
	u.mu.Unlock()
	if s == nil {
		return
	}
	msg := strings.ReplaceAll(err.Error(), "\n", " ")
	s.ctrl.Write(append(append([]byte{msgFailed}, msg...), '\n'))
}

// watchPredecessor waits until the predecessor has closed its sockets (or
// died), then takes this process's sockets to the front of their groups.
func (u *Upgrader) watchPredecessor(s *peer) {
	var b [1]byte
	for {
		if _, err := s.ctrl.Read(b[:]); err != nil || b[0] == msgGone {
			break
		}
	}
	u.mu.Lock()
	u.predecessorGone()
	u.mu.Unlock()
}

// predecessorGone forgets the predecessor: Joining→Orphaned,
// Sharing→Alone, and in Stopped. u.mu must be held.
func (u *Upgrader) predecessorGone() {
	s := u.pred
	if s == nil {
		return // forgotten already
	}
	u.on(evPredecessorGone) // pred is set in Joining, Sharing and Stopped only, where the table answers
	u.pred = nil
	s.close()
	u.log.Info("udppool: predecessor gone; this process serves alone", peerAttrs(s)...)
	for k, f := range u.inherited {
		f.Close()
		delete(u.inherited, k)
	}
	u.closeTCP(true)
	// Alone now: each socket of this process is the only one, at index 0,
	// and must keep later joiners off until they are ready.
	clear(u.joined)
	if err := u.resteer(); err != nil {
		// The kernel falls back to hashing where a program names the gone
		// predecessor's index; the other generation's IDs are forwarded.
		u.log.Error("udppool: steering to this process alone failed", slog.Any("cause", err))
	}
	u.publish()
	close(u.predGone)
}

// Stop ends this process's part: it closes the pools registered with u
// (and with them their sockets), tells a successor that they are closed and
// closes the upgrade channels. Call it before exiting after a hand-over.
func (u *Upgrader) Stop() error {
	u.mu.Lock()
	from, err := u.on(evStop)
	if err != nil {
		u.mu.Unlock()
		return err
	}
	if s := u.starting; s != nil {
		s.ctrl.SetReadDeadline(pastDeadline) // Upgrade ends it
	}
	pools := slices.Clone(u.pools)
	u.mu.Unlock()
	if from != stateSettling && from != stateHanded {
		u.notifyStopping() // the last generation
	}
	var errs []error
	for _, p := range pools {
		if err := p.Close(); err != nil && !errors.Is(err, ErrPoolClosed) {
			errs = append(errs, err)
		}
	}
	u.mu.Lock()
	u.closeTCP(false)
	if s := u.succ; s != nil {
		s.ctrl.Write([]byte{msgGone})
		s.close()
		u.succ = nil
	}
	u.predecessorGone()
	u.publish()
	u.mu.Unlock()
	return errors.Join(errs...)
}

func (s *peer) close() {
	s.ctrl.Close()
	s.fwd.Close()
}

// Handshakes in flight. A handshake that the old generation began before
// the hand-over must still reach the application of the old generation, so
// Exit closes (and the application closes its listeners) only once every
// handshake that began before has been accepted or has failed.
type handshakeKey struct{}

// handshake is a token; it must not be of size zero, or every token could
// have the same address.
type handshake struct{ _ byte }

// settleMax bounds the wait for handshakes in flight: quic-go gives up on
// a handshake after twice its handshake idle timeout (5 s by default).
const settleMax = 10 * time.Second

// trackHandshakes makes qt's new connections count as handshakes in flight
// until a listener's Accept returns them or they close.
func (u *Upgrader) trackHandshakes(qt *quic.Transport) {
	user := qt.ConnContext
	qt.ConnContext = func(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
		h := &handshake{}
		u.hsMu.Lock()
		u.handshakes[h] = struct{}{}
		u.hsMu.Unlock()
		// quic-go cancels the context it passes in when the connection
		// closes, also when its handshake fails.
		context.AfterFunc(ctx, func() { u.handshakeEnd(h) })
		if user != nil {
			var err error
			if ctx, err = user(ctx, info); err != nil {
				return ctx, err
			}
		}
		return context.WithValue(ctx, handshakeKey{}, h), nil
	}
}

// handshakeDone ends the handshake of conn, which Accept returns.
func (st *sharedTransport) handshakeDone(conn *quic.Conn) {
	if u := st.pool.opts.upgrader; u != nil {
		if h, ok := conn.Context().Value(handshakeKey{}).(*handshake); ok {
			u.handshakeEnd(h)
		}
	}
}

func (u *Upgrader) handshakeEnd(h *handshake) {
	u.hsMu.Lock()
	delete(u.handshakes, h)
	if len(u.handshakes) == 0 && u.hsSettled != nil {
		close(u.hsSettled)
		u.hsSettled = nil
	}
	u.hsMu.Unlock()
}

// settle waits until quic-go has seen every datagram this process kept
// before the hand-over and the handshakes they began have ended, or until
// settleMax has passed.
func (u *Upgrader) settle() { u.settleFor(settleMax) }

// settleFor is settle with one deadline, max from now, for every wait in
// it: the transports flush side by side, and one that never answers (no
// quic-go server reads it) costs the others nothing.
func (u *Upgrader) settleFor(max time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), max)
	defer cancel()
	var wg sync.WaitGroup
	for _, f := range u.transports() {
		if f.serving() {
			wg.Go(func() { f.flush(ctx.Done()) })
		}
	}
	wg.Wait()
	u.hsMu.Lock()
	if len(u.handshakes) == 0 {
		u.hsMu.Unlock()
		return
	}
	ch := make(chan struct{})
	u.hsSettled = ch
	u.hsMu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
		u.hsMu.Lock()
		if u.hsSettled == ch {
			u.hsSettled = nil
		}
		u.hsMu.Unlock()
	}
}
