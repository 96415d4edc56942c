package metrics_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/quic-go/quic-go"

	"github.com/udppool/udppool"
	"github.com/udppool/udppool/metrics"
	"github.com/udppool/udppool/udppooltest"
)

// scrape serves reg over HTTP on loopback, as Prometheus would scrape it,
// and returns the text exposition.
func scrape(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Skipf("no IPv4 loopback: %v", err)
	}
	srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError})}
	go srv.Serve(ln)
	defer srv.Close()
	client := &http.Client{Timeout: udppooltest.Timeout}
	resp, err := client.Get("http://" + ln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %v %s\n%s", err, resp.Status, body)
	}
	return string(body)
}

func endedByThemselves(p *udppool.Pool, k udppool.Key) uint64 {
	for _, s := range p.Stats() {
		if s.Key == k && len(s.Listeners) > 0 {
			return s.Listeners[0].EndedByThemselves
		}
	}
	return 0
}

// TestCollector: a pool with a plain socket that failed sends and a QUIC
// listener that accepted a real connection, which then ended, is exported
// with stable names and key and epoch labels, on a fresh registry scraped
// over HTTP, and the registry's own consistency checks pass.
func TestCollector(t *testing.T) {
	p := udppooltest.Pool(t)
	certs := udppooltest.TLS(t)

	c := udppooltest.LoopbackIn(t, p, "udp4")
	for range 3 {
		c.WriteTo([]byte("x"), &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}) // port 0: EINVAL, counted
	}
	plainKey := c.Key().String()

	tr, err := p.Transport(context.Background(), "udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ln, err := tr.Listen(certs.ServerConfig("m"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	quicKey := tr.Keys()[0].String()

	ctx, cancel := context.WithTimeout(context.Background(), udppooltest.Timeout)
	defer cancel()
	uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	cli := &quic.Transport{Conn: uc}
	defer cli.Close()
	conn, err := cli.Dial(ctx, tr.LocalAddr(), certs.ClientConfig("m"), nil)
	if err != nil {
		t.Fatal(err)
	}
	srvConn, err := ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	conn.CloseWithError(0, "done")
	<-srvConn.Context().Done()
	// The pool counts the end on a goroutine of its own.
	for ctx.Err() == nil && endedByThemselves(p, tr.Keys()[0]) == 0 {
		time.Sleep(time.Millisecond)
	}

	reg := prometheus.NewRegistry()
	col := metrics.NewCollector(p, metrics.WithLabels(prometheus.Labels{"pool": "main"}))
	reg.MustRegister(col)
	if problems, err := testutil.CollectAndLint(col); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %+v", err, problems)
	}
	out := scrape(t, reg)
	for _, want := range []string{
		`udppool_sockets{pool="main"} 2`,
		`udppool_socket_refs{key="` + plainKey + `",pool="main"} 1`,
		`udppool_socket_dead{key="` + plainKey + `",pool="main"} 0`,
		`udppool_send_errors_total{key="` + plainKey + `",kind="invalid argument",pool="main"} 3`,
		`udppool_conns_refused_total{key="` + quicKey + `",pool="main"} 0`,
		`udppool_listener_epoch{key="` + quicKey + `",pool="main"} 1`,
		`udppool_listener_accepting{epoch="1",key="` + quicKey + `",pool="main"} 1`,
		`udppool_listener_conns{epoch="1",key="` + quicKey + `",pool="main"} 0`,
		`udppool_listener_accepted_total{epoch="1",key="` + quicKey + `",pool="main"} 1`,
		`udppool_listener_ended_total{epoch="1",how="themselves",key="` + quicKey + `",pool="main"} 1`,
		`udppool_listener_ended_total{epoch="1",how="goaway",key="` + quicKey + `",pool="main"} 0`,
		`# TYPE udppool_listener_accepted_total counter`,
		`# TYPE udppool_listener_conns gauge`,
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("scrape lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("scrape:\n%s", out)
	}
	if strings.Contains(out, "udppool_plain_socket") || strings.Contains(out, `udppool_listener_epoch{key="`+plainKey) {
		t.Error("a plain socket has listener series")
	}
	c.Close()
	ln.Close()
	tr.Close()
	if out := scrape(t, reg); !strings.Contains(out, "udppool_sockets{pool=\"main\"} 0\n") || strings.Contains(out, "udppool_socket_refs") {
		t.Errorf("after every socket closed:\n%s", out)
	}
}

// TestCollectorUpgrader: with the process's Upgrader every series carries
// its generation, the generation is a gauge of its own, and upgrades are
// counted: here one whose successor (true(1)) exits before it is ready.
func TestCollectorUpgrader(t *testing.T) {
	u, err := udppool.NewUpgrader(udppool.WithUpgradeCommand(func(context.Context) (*exec.Cmd, error) {
		return exec.Command("true"), nil
	}))
	if err != nil {
		t.Skipf("no Upgrader here: %v", err)
	}
	defer u.Stop()
	if err := u.Upgrade(context.Background()); !errors.Is(err, udppool.ErrUpgradeFailed) {
		t.Fatalf("Upgrade with a successor that exits: %v, want ErrUpgradeFailed", err)
	}
	p := udppooltest.Pool(t)
	udppooltest.LoopbackIn(t, p, "udp4")
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewCollector(p, metrics.WithUpgrader(u)))
	out := scrape(t, reg)
	for _, want := range []string{
		`udppool_process_generation{generation="1"} 1`,
		`udppool_sockets{generation="1"} 1`,
		`udppool_upgrades_total{generation="1",outcome="started"} 1`,
		`udppool_upgrades_total{generation="1",outcome="succeeded"} 0`,
		`udppool_upgrades_total{generation="1",outcome="failed"} 1`,
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("scrape lacks %s:\n%s", want, out)
		}
	}
}
