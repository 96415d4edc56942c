package udppool

import (
	"context"
	"net"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/udppool/udppool/internal/quiclb"
)

// The cost of an upgrade on the receive path, per datagram: a pooled
// socket read in batches as quic-go reads it (direct), the same with a
// second socket in its reuseport group and the generation program steering
// every datagram to it (steered), and datagrams that land on the other
// generation's socket and are forwarded to this one in user space
// (forwarded). BenchmarkUpgradeRatios reports the last two over the first,
// measured in one run.

const benchBurst = 32

// benchRecv measures one datagram's way from a client socket into
// ReadBatch: send a burst, read it back.
func benchRecv(b *testing.B, n int, dst *net.UDPAddr, read func([]ipv4.Message) int, pkt []byte) time.Duration {
	client, err := net.DialUDP("udp4", nil, dst)
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	ms := make([]ipv4.Message, 8)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, 1500)}
		ms[i].OOB = make([]byte, 128)
	}
	start := time.Now()
	for i := 0; i < n; i += benchBurst {
		for range benchBurst {
			if _, err := client.Write(pkt); err != nil {
				b.Fatal(err)
			}
		}
		for got := 0; got < benchBurst; {
			got += read(ms)
		}
	}
	return time.Since(start)
}

func benchPacket(codec *cidCodec, gen uint16) []byte {
	id, _ := newCIDGenerator(codec, ServerID{}, gen, 0).GenerateConnectionID()
	pkt := make([]byte, 1200)
	pkt[0] = quiclb.FixedBit | 1
	copy(pkt[quiclb.ShortDCIDOff:], id.Bytes())
	return pkt
}

// benchUpgrader returns an upgrader of generation gen that is not wired to
// any process, and a pooled socket of a new pool that uses it.
func benchUpgrader(b *testing.B, gen uint16, key cidKey) (*Upgrader, *Pool) {
	u, err := newUpgrader("", false, WithSupervisor(false))
	if err != nil {
		b.Fatal(err)
	}
	u.mu.Lock()
	u.gen, u.key = gen, key
	u.codec = newCIDCodec(key)
	u.publish()
	u.mu.Unlock()
	return u, New(WithUpgrader(u))
}

func newBenchForwardConn(u *Upgrader, c *Conn) *forwardConn {
	f := &forwardConn{Conn: c, u: u, key: c.Key(), keyStr: c.Key().String(), notify: make(chan struct{}, 1)}
	f.batch = ipv4.NewPacketConn(c)
	u.connsMu.Lock()
	u.conns[f.keyStr] = f
	u.connsMu.Unlock()
	return f
}

func readWith(b *testing.B, f *forwardConn) func([]ipv4.Message) int {
	return func(ms []ipv4.Message) int {
		n, err := f.ReadBatch(ms, 0)
		if err != nil {
			b.Fatal(err)
		}
		return n
	}
}

func benchDirect(b *testing.B, n int) time.Duration {
	u, p := benchUpgrader(b, 1, cidKey{1})
	defer p.Close()
	c, err := p.ListenPacket(context.Background(), "udp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	return benchRecv(b, n, c.LocalAddr().(*net.UDPAddr), readWith(b, newBenchForwardConn(u, c)), benchPacket(u.codec, 1))
}

func benchSteered(b *testing.B, n int) time.Duration {
	// Two sockets in one group, the other generation's joined first (index
	// 0), so that every datagram for this generation is steered past it.
	// The sockets come from pools without an Upgrader, which would take
	// each other's socket for a foreign member of the group: the
	// benchmark sets the program itself.
	pOld := New()
	defer pOld.Close()
	// Port 0 never joins a reuseport group: take a free port.
	free, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := free.LocalAddr().String()
	free.Close()
	old, err := pOld.ListenPacket(context.Background(), "udp4", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer old.Close()
	u, up := benchUpgrader(b, 2, cidKey{1})
	defer up.Close()
	p := New()
	defer p.Close()
	c, err := p.ListenPacket(context.Background(), "udp4", old.LocalAddr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := attachSteering(c.entry.sock.raw, steerProgram([]uint16{1, 2}, 1, true)); err != nil {
		b.Fatal(err)
	}
	return benchRecv(b, n, c.LocalAddr().(*net.UDPAddr), readWith(b, newBenchForwardConn(u, c)), benchPacket(u.codec, 2))
}

func benchForwarded(b *testing.B, n int) time.Duration {
	// Generation 1 has handed over to generation 2 but reads the socket
	// that the datagrams (of generation 2's connections) arrive on, as a
	// shared socket or an unsteerable system would have it; it forwards
	// them, generation 2 reads them from its queue.
	key := cidKey{1}
	u1, p1 := benchUpgrader(b, 1, key)
	defer p1.Close()
	u2, p2 := benchUpgrader(b, 2, key)
	defer p2.Close()
	c1, err := p1.ListenPacket(context.Background(), "udp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer c1.Close()
	c2, err := p2.ListenPacket(context.Background(), "udp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer c2.Close()
	fwd1, fwd2f, err := socketPair(unix.SOCK_DGRAM)
	if err != nil {
		b.Fatal(err)
	}
	fwd2, err := fileUnixConn(fwd2f)
	if err != nil {
		b.Fatal(err)
	}
	to2 := &peer{gen: 2, ctrl: fwd1, fwd: fwd1}
	to2.raw, _ = fwd1.SyscallConn()
	from1 := &peer{gen: 1, ctrl: fwd2, fwd: fwd2}
	f1 := newBenchForwardConn(u1, c1)
	// The forwarded datagrams carry generation 1's key; generation 2
	// reads them into its transport of the same key.
	f2 := &forwardConn{Conn: c2, u: u2, key: c1.Key(), keyStr: c1.Key().String(), notify: make(chan struct{}, 1)}
	f2.batch = ipv4.NewPacketConn(c2)
	u2.conns[f2.keyStr] = f2
	u1.state.Store(&routeState{self: 1, accepting: false, peer: to2})
	u2.state.Store(&routeState{self: 2, accepting: true, peer: from1})
	done := make(chan struct{})
	go func() { u2.receive(from1); close(done) }()
	go func() {
		ms := make([]ipv4.Message, 8)
		for i := range ms {
			ms[i].Buffers = [][]byte{make([]byte, 1500)}
			ms[i].OOB = make([]byte, 128)
		}
		for {
			if _, err := f1.ReadBatch(ms, 0); err != nil {
				return
			}
		}
	}()
	d := benchRecv(b, n, c1.LocalAddr().(*net.UDPAddr), readWith(b, f2), benchPacket(u2.codec, 2))
	c1.Close()
	fwd1.Close()
	fwd2.Close()
	<-done
	return d
}

func BenchmarkUpgradeReceive(b *testing.B) {
	for _, c := range []struct {
		name string
		run  func(*testing.B, int) time.Duration
	}{{"direct", benchDirect}, {"steered", benchSteered}, {"forwarded", benchForwarded}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(1200)
			c.run(b, b.N)
		})
	}
}

// BenchmarkUpgradeRatios measures the three paths side by side, in rounds
// that alternate between them, and reports the fastest round of steered and
// forwarded over the fastest of direct (time per datagram).
func BenchmarkUpgradeRatios(b *testing.B) {
	const perRound = 20000
	best := [3]time.Duration{}
	for range max(b.N, 3) {
		for i, run := range []func(*testing.B, int) time.Duration{benchDirect, benchSteered, benchForwarded} {
			if d := run(b, perRound); best[i] == 0 || d < best[i] {
				best[i] = d
			}
		}
	}
	b.ReportMetric(float64(best[0].Nanoseconds())/perRound, "direct-ns/pkt")
	b.ReportMetric(float64(best[1])/float64(best[0]), "steered/direct")
	b.ReportMetric(float64(best[2])/float64(best[0]), "forwarded/direct")
}
