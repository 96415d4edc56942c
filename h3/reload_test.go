package h3_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/nettest"

	"github.com/udppool/udppool"
	"github.com/udppool/udppool/h3"
)

// reloadCounter counts reloads and lets handlers wait for them.
type reloadCounter struct {
	mu      sync.Mutex
	n       int
	changed chan struct{}
}

func (c *reloadCounter) add() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *reloadCounter) get() (int, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n, c.changed
}

// family is the load of one address family and what became of it.
type family struct {
	name, url string

	mu       sync.Mutex
	requests int // completed or failed
	long     int // of which long requests
	spanned  int // long requests that spanned longReloads reloads
	rejected int // rejected unprocessed by the server, then retried
	unsent   int // retried before being sent: the connection had gone away
	failed   int
	errs     []string
}

func (f *family) record(o outcome, long bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests++
	if long {
		f.long++
		if o.err == nil && o.body == "long: spanned enough reloads" {
			f.spanned++
		}
	}
	switch {
	case o.rejected():
		f.rejected++
	case o.retriedUnsent():
		f.unsent++
	}
	if o.err != nil {
		f.failed++
		if len(f.errs) < 5 {
			f.errs = append(f.errs, o.err.Error())
		}
	}
}

// TestHundredReloads reloads the server 100 times, each time with a new
// certificate, while keep-alive clients of each address family make
// requests back to back on a dual-stack socket, and others make long
// requests that each span several reloads. No request may fail: a request
// the server rejected unprocessed is retried by quic-go's client, and such
// retries are counted apart. Every retired epoch must drain by its
// clients leaving on the GOAWAY, none cut at the grace period, and no
// request that starts after an epoch drained may be answered with that
// epoch's certificate.
func TestHundredReloads(t *testing.T) { reloadUnderLoad(t, 100) }

// TestReloadsSplitStack runs the same load on a "udp" wildcard served by
// an IPv4 and an IPv6 socket, one listener epoch spanning both.
func TestReloadsSplitStack(t *testing.T) {
	if !nettest.SupportsIPv4() || !nettest.SupportsIPv6() {
		t.Skip("needs IPv4 and IPv6 loopback")
	}
	reloadUnderLoad(t, 20, udppool.WithSplitStack(true))
}

func reloadUnderLoad(t *testing.T, reloads int, opts ...udppool.Option) {
	const (
		shortClients = 2 // per family
		longClients  = 1 // per family
		longReloads  = 3 // reloads a long request waits for
	)
	var fams []*family
	if nettest.SupportsIPv4() {
		fams = append(fams, &family{name: "IPv4", url: "https://127.0.0.1:%d/"})
	}
	if nettest.SupportsIPv6() {
		fams = append(fams, &family{name: "IPv6", url: "https://[::1]:%d/"})
	}
	if len(fams) == 0 {
		t.Skip("no loopback address")
	}

	auth := newCA(t, "test CA")
	certs := make([]tls.Certificate, reloads+1)
	genOf := make(map[string]uint64) // leaf certificate to listener epoch
	for i := range certs {
		certs[i] = auth.issue(t, false)
		genOf[string(certs[i].Certificate[0])] = uint64(i + 1)
	}

	var counter = &reloadCounter{changed: make(chan struct{})}
	stop := make(chan struct{})
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/long" {
			hello(w, r)
			return
		}
		start, _ := counter.get()
		for {
			n, changed := counter.get()
			if n >= start+longReloads {
				fmt.Fprint(w, "long: spanned enough reloads")
				return
			}
			select {
			case <-changed:
			case <-stop: // no more reloads to wait for
				fmt.Fprint(w, "long: the test is ending")
				return
			case <-r.Context().Done():
				return
			}
		}
	})

	// Drains, recorded by epoch. events orders drains and request
	// starts without looking at a clock.
	var (
		events     atomic.Int64
		drainMu    sync.Mutex
		retiredAt  = make(map[uint64]time.Time)
		drainedAt  = make(map[uint64]int64) // event number
		drainTimes = make(map[uint64]time.Duration)
		drains     = make(map[uint64]udppool.DrainStats)
		allDrained = make(chan struct{})
	)
	drained := func(ds udppool.DrainStats) {
		drainMu.Lock()
		defer drainMu.Unlock()
		drainedAt[ds.Epoch] = events.Add(1)
		drainTimes[ds.Epoch] = time.Since(retiredAt[ds.Epoch])
		drains[ds.Epoch] = ds
		if len(drains) == reloads {
			close(allDrained)
		}
	}
	staleCert := func(gen uint64, start int64) bool {
		drainMu.Lock()
		defer drainMu.Unlock()
		at, ok := drainedAt[gen]
		return ok && at <= start
	}

	const grace = testTimeout / 2 // no client here stays that long
	s, p := serve(t, &h3.Server{Handler: handler, Grace: grace, Drained: drained}, opts...)
	if err := s.Reload(serverTLS(certs[0]), nil); err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		f.url = fmt.Sprintf(f.url, port(s))
	}

	var stale atomic.Int64 // requests answered with a drained epoch's certificate
	var clients sync.WaitGroup
	var progress []*atomic.Int64 // requests done, per short client
	client := func(f *family, path string, done *atomic.Int64) {
		c := newClient(auth.pool(), nil)
		c.TLSClientConfig.ClientSessionCache = tls.NewLRUClientSessionCache(4) // resumes when it can
		defer c.Close()
		for range 100000 { // bounded; stopped by the test
			select {
			case <-stop:
				return
			default:
			}
			start := events.Load()
			o := get(context.Background(), c, f.url+path)
			if o.err == nil && staleCert(genOf[string(o.leaf)], start) {
				stale.Add(1)
			}
			f.record(o, path == "long")
			if done != nil {
				done.Add(1)
			}
		}
	}
	for _, f := range fams {
		for range shortClients {
			done := new(atomic.Int64)
			progress = append(progress, done)
			clients.Go(func() { client(f, "", done) })
		}
		for range longClients {
			clients.Go(func() { client(f, "long", nil) })
		}
	}
	stopClients := sync.OnceFunc(func() {
		close(stop)
		clients.Wait()
	})
	defer stopClients()

	// Each reload waits until every short client has made a request since
	// the previous one, so that every epoch serves both families.
	marks := make([]int64, len(progress))
	for i := 1; i <= reloads; i++ {
		end := time.Now().Add(testTimeout)
		for j, done := range progress {
			for done.Load() <= marks[j] {
				if time.Now().After(end) {
					t.Fatalf("reload %d: a client made no request", i)
				}
				time.Sleep(100 * time.Microsecond)
			}
			marks[j] = done.Load()
		}
		drainMu.Lock()
		retiredAt[uint64(i)] = time.Now()
		drainMu.Unlock()
		if err := s.Reload(serverTLS(certs[i]), nil); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
		counter.add()
	}
	stopClients()
	select {
	case <-allDrained:
	case <-time.After(testTimeout):
		t.Fatalf("not every retired epoch drained: %d of %d", len(drains), reloads)
	}

	// The table.
	var b strings.Builder
	fmt.Fprintf(&b, "%d reloads, grace period %v\n", reloads, grace)
	fmt.Fprintf(&b, "%-6s %9s %6s %14s %20s %15s %7s\n", "family", "requests", "long", "long spanning", "rejected+retried", "unsent+retried", "failed")
	for _, f := range fams {
		fmt.Fprintf(&b, "%-6s %9d %6d %14d %20d %15d %7d\n", f.name, f.requests, f.long, f.spanned, f.rejected, f.unsent, f.failed)
	}
	var times []time.Duration
	var byThemselves, byGoAway, byDeadline, conns int
	for gen := uint64(1); gen <= uint64(reloads); gen++ {
		times = append(times, drainTimes[gen])
		ds := drains[gen]
		conns += ds.Conns
		byThemselves += ds.EndedByThemselves
		byGoAway += ds.EndedByGoAway
		byDeadline += ds.EndedByDeadline
	}
	fmt.Fprintf(&b, "retired epochs' connections: %d, ended by themselves %d, by GOAWAY %d, by the deadline %d\n", conns, byThemselves, byGoAway, byDeadline)
	fmt.Fprintf(&b, "drain time per epoch, 1 to %d (ms):", reloads)
	for i, d := range times {
		if i%20 == 0 {
			b.WriteString("\n ")
		}
		fmt.Fprintf(&b, " %.1f", float64(d.Microseconds())/1000)
	}
	sorted := slices.Clone(times)
	slices.Sort(sorted)
	fmt.Fprintf(&b, "\ndrain time: min %v, median %v, 90th percentile %v, max %v\n",
		sorted[0].Round(time.Microsecond), sorted[len(sorted)/2].Round(time.Microsecond),
		sorted[len(sorted)*9/10].Round(time.Microsecond), sorted[len(sorted)-1].Round(time.Microsecond))
	t.Logf("\n%s", b.String())

	for _, f := range fams {
		if f.failed > 0 {
			t.Errorf("%s: %d of %d requests failed: %s", f.name, f.failed, f.requests, strings.Join(f.errs, "; "))
		}
		if f.spanned == 0 {
			t.Errorf("%s: no long request spanned %d reloads", f.name, longReloads)
		}
	}
	if byDeadline > 0 {
		t.Errorf("%d connections were still open when their epoch's grace period ended", byDeadline)
	}
	for gen := uint64(1); gen <= uint64(reloads); gen++ {
		if ds := drains[gen]; ds.Conns != ds.EndedByThemselves+ds.EndedByGoAway+ds.EndedByDeadline {
			t.Errorf("epoch %d: drain %+v does not account for every connection", gen, ds)
		}
	}
	if n := stale.Load(); n > 0 {
		t.Errorf("%d requests started after an epoch had drained were answered with its certificate", n)
	}
	// Only the current epoch is left.
	for _, st := range p.Stats() {
		for _, l := range st.Listeners {
			if l.Epoch != uint64(reloads)+1 {
				t.Errorf("epoch %d still listed after its drain: %+v", l.Epoch, l)
			}
		}
	}
}
