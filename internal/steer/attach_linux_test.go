package steer

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udppool/udppool/internal/quiclb"
)

// TestAttach steers datagrams on a real reuseport group over loopback:
// generation 1 with sockets 0 and 1 (members 0, 1), the accepting
// generation 2 with sockets 0 and 1 (members 2, 3). Datagrams with an ID go
// to the socket it names; handshakes and non-QUIC datagrams from many
// source ports go to generation 2's sockets only.
func TestAttach(t *testing.T) {
	for _, network := range []string{"udp4", "udp6"} {
		t.Run(network, func(t *testing.T) { testAttach(t, network) })
	}
}

func testAttach(t *testing.T, network string) {
	host := "127.0.0.1"
	if network == "udp6" {
		host = "::1"
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return errors.Join(err, serr)
	}}
	members := []Member{{Gen: 1, Socket: 0}, {Gen: 1, Socket: 1}, {Gen: 2, Socket: 0}, {Gen: 2, Socket: 1}}
	socks := make([]*net.UDPConn, len(members))
	addr := net.JoinHostPort(host, "0")
	for i := range members {
		pc, err := lc.ListenPacket(context.Background(), network, addr)
		if err != nil {
			if i == 0 {
				t.Skipf("no %s loopback: %v", network, err)
			}
			t.Fatal(err)
		}
		socks[i] = pc.(*net.UDPConn)
		t.Cleanup(func() { pc.Close() })
		addr = pc.LocalAddr().String() // the others join the first's group
	}
	raw, err := socks[3].SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if err := Attach(raw, Program(Group{Members: members, Accept: 2, QUIC: true})); err != nil {
		t.Fatal(err)
	}
	dst := socks[0].LocalAddr().(*net.UDPAddr)

	// recv reads the next datagram of socket i.
	buf := make([]byte, 2048)
	recv := func(i int) ([]byte, error) {
		socks[i].SetReadDeadline(time.Now().Add(10 * time.Second)) // a bound on a failing test, not a timing
		n, err := socks[i].Read(buf)
		return buf[:n], err
	}
	client, err := net.ListenUDP(network, &net.UDPAddr{IP: dst.IP})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	for round := range 50 {
		for i, m := range members {
			sid := make([]byte, 1+round%quiclb.MaxServerIDLen)
			rand.Read(sid)
			id, err := codec.Append(nil, quiclb.Config{ServerID: sid}, m.Gen, m.Socket, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			pkt := short(id)
			if round%2 == 1 {
				pkt = long(2, quiclb.V1, id)
			}
			if _, err := client.WriteToUDP(pkt, dst); err != nil {
				t.Fatal(err)
			}
			got, err := recv(i)
			if err != nil {
				t.Fatalf("round %d: datagram of gen %d socket %d did not reach member %d: %v", round, m.Gen, m.Socket, i, err)
			}
			if !bytes.Equal(got, pkt) {
				t.Fatalf("round %d: member %d got another datagram", round, i)
			}
		}
	}
	// A legacy ID (the previous layout) of generation 1: its socket 0.
	legacy := make([]byte, quiclb.LegacyLen)
	rand.Read(legacy)
	legacy[0] = quiclb.LegacyFirst
	binary.BigEndian.PutUint16(legacy[1:], 1)
	if _, err := client.WriteToUDP(short(legacy), dst); err != nil {
		t.Fatal(err)
	}
	if got, err := recv(0); err != nil || !bytes.Equal(got, short(legacy)) {
		t.Fatalf("legacy ID of gen 1: not on member 0 (%v)", err)
	}
	// Handshakes from 64 source ports: each on one of the accepting
	// generation's sockets.
	random := make([]byte, 8)
	counts := make([]int, len(members))
	for range 64 {
		c, err := net.ListenUDP(network, &net.UDPAddr{IP: dst.IP})
		if err != nil {
			t.Fatal(err)
		}
		rand.Read(random)
		_, err = c.WriteToUDP(long(0, quiclb.V1, random), dst)
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := client.WriteToUDP([]byte("not QUIC"), dst); err != nil {
		t.Fatal(err)
	}
	for i := range socks {
		for {
			socks[i].SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			if _, err := socks[i].Read(buf); err != nil {
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatal(err)
				}
				break
			}
			counts[i]++
			if counts[i] > 65 {
				t.Fatalf("member %d: more datagrams than were sent", i)
			}
		}
	}
	if counts[0] != 0 || counts[1] != 0 || counts[2]+counts[3] != 65 {
		t.Errorf("handshakes and non-QUIC per member: %v, want all 65 on members 2 and 3", counts)
	}
	if counts[2] == 0 || counts[3] == 0 { // all 64 random IDs on one: 2^-63
		t.Errorf("handshakes per member: %v, want both accepting sockets used", counts)
	}
	t.Logf("%s: 50 rounds of IDs to their sockets; handshakes by member %v", network, counts)
}
