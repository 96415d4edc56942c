// Package metrics exports the counters of a udppool.Pool to Prometheus: a
// prometheus.Collector that reads Pool.Stats at each scrape.
//
// It is a Go module of its own (github.com/udppool/udppool/metrics), so that
// a program that uses udppool without Prometheus never downloads
// client_golang.
//
//	reg := prometheus.NewRegistry()
//	reg.MustRegister(metrics.NewCollector(pool))
//	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//
// The metric names are stable; every one starts with "udppool_". Series
// of a socket carry the label key (its network and address, as
// udppool.Key.String gives it), series of a QUIC listener also epoch (its
// reload count on the socket, ListenerStats.Epoch). With WithUpgrader
// every series also carries generation, the process's generation
// (Upgrader.Generation), so that the series of an old and a new process
// stay apart during an upgrade, when both may answer on one metrics port.
//
//	udppool_sockets                              gauge    sockets held (live, and dead ones still referenced)
//	udppool_socket_refs{key}                     gauge    references: open handles, Transports, Listeners
//	udppool_socket_dead{key}                     gauge    1 if the socket died underneath the pool (see udppool.ErrSocketDead)
//	udppool_socket_opened_seconds{key}           gauge    when the socket was bound, as a Unix time
//	udppool_send_errors_total{key,kind}          counter  failed sends, by the error's text
//	udppool_conns_refused_total{key}             counter  completed handshakes closed because no listener could take them
//	udppool_listener_epoch{key}                  gauge    the newest listener epoch of the socket
//	udppool_listener_accepting{key,epoch}        gauge    1 while the epoch accepts, 0 while it drains
//	udppool_listener_conns{key,epoch}            gauge    connections the epoch accepted that are open
//	udppool_listener_accepted_total{key,epoch}   counter  handshakes the epoch accepted
//	udppool_listener_ended_total{key,epoch,how}  counter  its connections that ended: how="themselves", "goaway" or "deadline"
//	udppool_process_generation                   gauge    the process's generation (with WithUpgrader)
//	udppool_upgrades_total{outcome}              counter  upgrades, outcome="started", "succeeded" or "failed" (with WithUpgrader)
//
// Counters of a socket or an epoch start at zero when it appears and go
// when it does, as Prometheus expects of series with an identifying label.
package metrics

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/udppool/udppool"
)

// An Option configures a Collector.
type Option func(*Collector)

// WithUpgrader adds the process's generation, u.Generation(), as the gauge
// udppool_process_generation and as the label generation of every series,
// and u's upgrade counts (Upgrader.Stats) as udppool_upgrades_total.
func WithUpgrader(u *udppool.Upgrader) Option {
	return func(c *Collector) { c.upgrader = u }
}

// WithLabels adds constant labels to every series, for a process with
// several pools (each needs a collector of its own, told apart by them).
func WithLabels(l prometheus.Labels) Option {
	return func(c *Collector) { c.labels = l }
}

// A Collector is a prometheus.Collector for one Pool. It is safe for
// concurrent use, as prometheus.Registry requires.
type Collector struct {
	pool     *udppool.Pool
	upgrader *udppool.Upgrader
	labels   prometheus.Labels

	sockets, refs, dead, opened, sendErrors, refused, epoch *prometheus.Desc
	accepting, conns, accepted, ended                       *prometheus.Desc
	generation, upgradeCount                                *prometheus.Desc
}

// NewCollector returns a collector of p's Stats.
func NewCollector(p *udppool.Pool, opts ...Option) *Collector {
	c := &Collector{pool: p}
	for _, o := range opts {
		o(c)
	}
	labels := prometheus.Labels{}
	for k, v := range c.labels {
		labels[k] = v
	}
	if c.upgrader != nil {
		labels["generation"] = strconv.Itoa(int(c.upgrader.Generation()))
	}
	desc := func(name, help string, variable ...string) *prometheus.Desc {
		return prometheus.NewDesc("udppool_"+name, help, variable, labels)
	}
	socket, listener := []string{"key"}, []string{"key", "epoch"}
	c.sockets = desc("sockets", "Sockets the pool holds: live ones, and dead ones that handles still reference.")
	c.refs = desc("socket_refs", "References to the socket: open handles, Transports and Listeners.", socket...)
	c.dead = desc("socket_dead", "1 if the socket died underneath the pool; it is listed until its holders release it.", socket...)
	c.opened = desc("socket_opened_seconds", "When the socket was bound, in seconds since the Unix epoch.", socket...)
	c.sendErrors = desc("send_errors_total", "Sends that failed, by the kind of error; they never close the socket.", "key", "kind")
	c.refused = desc("conns_refused_total", "QUIC connections that completed a handshake but that no listener could take.", socket...)
	c.epoch = desc("listener_epoch", "The newest listener epoch of the socket (its reloads, numbered from 1).", socket...)
	c.accepting = desc("listener_accepting", "1 while the listener epoch accepts, 0 while it drains.", listener...)
	c.conns = desc("listener_conns", "Connections the listener epoch accepted that are still open.", listener...)
	c.accepted = desc("listener_accepted_total", "Connections (completed handshakes) the listener epoch accepted.", listener...)
	c.ended = desc("listener_ended_total", "Connections of the listener epoch that ended: by themselves, after a GOAWAY, or at a drain's deadline.", "key", "epoch", "how")
	c.generation = desc("process_generation", "The process's generation: 1 for the first process, one more for each upgrade.")
	c.upgradeCount = desc("upgrades_total", "Upgrades this process made as the predecessor, by outcome: started, succeeded, failed.", "outcome")
	return c
}

// Describe sends the descriptions of every metric the collector may send.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.sockets, c.refs, c.dead, c.opened, c.sendErrors, c.refused, c.epoch,
		c.accepting, c.conns, c.accepted, c.ended,
	} {
		ch <- d
	}
	if c.upgrader != nil {
		ch <- c.generation
		ch <- c.upgradeCount
	}
}

// Collect sends the metrics of one Pool.Stats snapshot.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	stats := c.pool.Stats()
	gauge(c.sockets, float64(len(stats)))
	for _, s := range stats {
		key := s.Key.String()
		gauge(c.refs, float64(s.Refs), key)
		dead := 0.0
		if s.Dead != nil {
			dead = 1
		}
		gauge(c.dead, dead, key)
		gauge(c.opened, float64(s.Opened.UnixNano())/1e9, key)
		for kind, n := range s.SendErrors {
			counter(c.sendErrors, n, key, kind)
		}
		if s.Dead != nil {
			continue // a dead socket serves no transport
		}
		if s.Epoch > 0 || len(s.Listeners) > 0 || s.ConnsRefused > 0 {
			counter(c.refused, s.ConnsRefused, key)
			gauge(c.epoch, float64(s.Epoch), key)
		}
		for _, l := range s.Listeners {
			epoch := strconv.FormatUint(l.Epoch, 10)
			accepting := 0.0
			if l.Accepting {
				accepting = 1
			}
			gauge(c.accepting, accepting, key, epoch)
			gauge(c.conns, float64(l.Conns), key, epoch)
			counter(c.accepted, l.Accepted, key, epoch)
			counter(c.ended, l.EndedByThemselves, key, epoch, "themselves")
			counter(c.ended, l.EndedByGoAway, key, epoch, "goaway")
			counter(c.ended, l.EndedByDeadline, key, epoch, "deadline")
		}
	}
	if c.upgrader != nil {
		gauge(c.generation, float64(c.upgrader.Generation()))
		u := c.upgrader.Stats()
		counter(c.upgradeCount, u.Started, "started")
		counter(c.upgradeCount, u.Succeeded, "succeeded")
		counter(c.upgradeCount, u.Failed, "failed")
	}
}
