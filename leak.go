package udppool

import (
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync/atomic"
)

// A Leak describes a handle that was garbage-collected without Close. A
// leaked reference would keep its port open for as long as the process
// lives, so the pool releases it after reporting.
type Leak struct {
	Key  Key    // the socket (for a split-stack Transport, its IPv4 one)
	Kind string // "Conn" or "Transport"
	Site string // function, file and line of the call that acquired it
}

func (l Leak) String() string {
	return fmt.Sprintf("udppool: %s of %v acquired at %s was garbage-collected without Close", l.Kind, l.Key, l.Site)
}

// WithLeakReport makes the pool watch its handles: a *Conn or *Transport
// that is garbage-collected without Close is reported to fn, with the call
// site that acquired it, and its reference is released. It costs a stack
// walk per acquire, so it is meant for tests and debugging. fn runs on a
// runtime goroutine and must not block.
func WithLeakReport(fn func(Leak)) Option {
	return func(o *options) { o.onLeak = fn }
}

// leakWatch is the part of a watched handle that outlives it: the cleanup
// must not refer to the handle itself, or it would never be collected.
type leakWatch struct {
	closed atomic.Bool
}

// watch arranges for obj's leak to be reported and released; the returned
// watch must be marked closed by obj's Close. It returns nil when the pool
// does not watch for leaks.
func watch[T any](p *Pool, obj *T, kind string, k Key, release func()) *leakWatch {
	if p.opts.onLeak == nil {
		return nil
	}
	w := new(leakWatch)
	leak := Leak{Key: k, Kind: kind, Site: callSite()}
	report, log := p.opts.onLeak, p.opts.log
	runtime.AddCleanup(obj, func(w *leakWatch) {
		if !w.closed.Load() {
			log.Warn("udppool: handle garbage-collected without Close; released", keyAttr(leak.Key),
				slog.String("kind", leak.Kind), slog.String("site", leak.Site))
			report(leak)
			release()
		}
	}, w)
	return w
}

// callSite returns the first caller outside this package.
func callSite() string {
	var pcs [32]uintptr
	frames := runtime.CallersFrames(pcs[:runtime.Callers(3, pcs[:])])
	for {
		f, more := frames.Next()
		if !strings.HasPrefix(f.Function, "github.com/udppool/udppool.") {
			return fmt.Sprintf("%s (%s:%d)", f.Function, f.File, f.Line)
		}
		if !more {
			return "unknown"
		}
	}
}
