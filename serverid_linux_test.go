package udppool

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/udppool/udppool/internal/quiclb"
)

// TestServerIDOnTheWire runs real handshakes through a relay on loopback
// that reads the server's connection IDs off the wire (the source IDs of
// its long headers, the destination IDs of the client's short headers)
// and decodes each as a QUIC-LB load balancer configured with the server
// ID length and config rotation does. Without WithServerID the server ID
// is the generation.
func TestServerIDOnTheWire(t *testing.T) {
	sid, err := NewServerID(2, []byte{0xc4, 0x60, 0x5e})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		sid  ServerID
		rot  byte
		want []byte
	}{
		{"WithServerID", sid, 2, []byte{0xc4, 0x60, 0x5e}},
		{"default", ServerID{}, 0, []byte{0, 5}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ids := wireIDs(t, c.sid, 5, len(c.want))
			if len(ids) < 3 {
				t.Fatalf("%d server IDs seen on the wire", len(ids))
			}
			for _, id := range ids {
				// As the draft's load balancer reads it: rotation in
				// the top 3 bits, the length minus one in the low 5,
				// the server ID after the first octet.
				rot, n, got := id[0]>>5, int(id[0]&0x1f)+1, id[1:1+len(c.want)]
				if rot != c.rot || n != len(id) || !bytes.Equal(got, c.want) {
					t.Errorf("%x: rotation %d, length %d, server ID %x; want %d, %d, %x", id, rot, n, got, c.rot, len(id), c.want)
				}
			}
			t.Logf("%d IDs, e.g. %x", len(ids), ids[0])
		})
	}
}

// testUpgrader returns an upgrader of generation gen that is not wired to
// any process.
func testUpgrader(gen uint16, opts ...UpgradeOption) *Upgrader {
	u, err := newUpgrader("", false, append(opts, WithSupervisor(false))...)
	if err != nil {
		panic(err)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.gen, u.key = gen, cidKey{7}
	u.codec = newCIDCodec(u.key)
	u.publish()
	return u
}

// wireIDs serves QUIC with the upgrader of generation gen and sid, makes
// three connections with a stream each through a relay, and returns the
// server's IDs that the relay saw.
func wireIDs(t *testing.T, sid ServerID, gen uint16, sidLen int) [][]byte {
	u := testUpgrader(gen, WithServerID(sid))
	p := New(WithUpgrader(u))
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr, err := p.Transport(ctx, "udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	cert, err := selfSigned()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tr.Listen(&tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{testALPN}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		for {
			conn, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			wg.Go(func() {
				s, err := conn.AcceptStream(ctx)
				if err == nil {
					io.Copy(s, s)
					s.Close()
				}
			})
		}
	})

	// The relay: the client talks to it, it to the server.
	server := tr.LocalAddr().(*net.UDPAddr)
	front, err := net.ListenUDP("udp4", &net.UDPAddr{IP: server.IP})
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	back, err := net.ListenUDP("udp4", &net.UDPAddr{IP: server.IP})
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	idLen := 1 + sidLen + quiclb.NonceLen
	var mu sync.Mutex
	var client *net.UDPAddr
	seen := make(map[string]bool)
	note := func(id []byte) {
		mu.Lock()
		seen[string(id)] = true
		mu.Unlock()
	}
	wg.Go(func() { // client to server
		buf := make([]byte, 2048)
		for {
			n, from, err := front.ReadFromUDP(buf)
			if err != nil {
				return
			}
			mu.Lock()
			client = from
			mu.Unlock()
			if b := buf[:n]; b[0]&0xc0 == quiclb.FixedBit && n > idLen {
				note(bytes.Clone(b[1 : 1+idLen]))
			}
			back.WriteToUDP(buf[:n], server)
		}
	})
	wg.Go(func() { // server to client
		buf := make([]byte, 2048)
		for {
			n, err := back.Read(buf)
			if err != nil {
				return
			}
			// A long header's source ID follows its destination ID.
			if b := buf[:n]; b[0]&0xc0 == 0xc0 && n > 6 && binary.BigEndian.Uint32(b[1:5]) == quiclb.V1 {
				if d := 6 + int(b[5]); n > d+1 && int(b[d]) == idLen && n >= d+1+idLen {
					note(bytes.Clone(b[d+1 : d+1+idLen]))
				}
			}
			mu.Lock()
			to := client
			mu.Unlock()
			if to != nil {
				front.WriteToUDP(buf[:n], to)
			}
		}
	})

	for i := range 3 {
		uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: server.IP})
		if err != nil {
			t.Fatal(err)
		}
		qt := &quic.Transport{Conn: uc}
		conn, err := qt.Dial(ctx, front.LocalAddr(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{testALPN}}, nil)
		if err != nil {
			qt.Close()
			uc.Close()
			t.Fatal(err)
		}
		err = func() error {
			s, err := conn.OpenStreamSync(ctx)
			if err != nil {
				return err
			}
			msg := []byte{byte(i), 'h', 'i'}
			if _, err := s.Write(msg); err != nil {
				return err
			}
			s.Close()
			got, err := io.ReadAll(s)
			if err == nil && !bytes.Equal(got, msg) {
				err = errors.New("echo differs")
			}
			return err
		}()
		conn.CloseWithError(0, "")
		qt.Close()
		uc.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	var ids [][]byte
	mu.Lock()
	for id := range seen {
		if _, ok := u.codec.generation([]byte(id)); !ok {
			t.Errorf("%x: an ID the codec does not verify", id)
		}
		ids = append(ids, []byte(id))
	}
	mu.Unlock()
	ln.Close()
	tr.Close()
	front.Close()
	back.Close()
	return ids
}
