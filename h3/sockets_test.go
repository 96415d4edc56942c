package h3_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"testing"

	"golang.org/x/net/nettest"

	"github.com/udppool/udppool"
	"github.com/udppool/udppool/h3"
	"github.com/udppool/udppool/udppooltest"
)

// TestServeSockets serves HTTP/3 on a Transport of two sockets per address
// (udppool.WithSockets) across a reload: requests of fresh clients reach
// both sockets, and every one is answered.
func TestServeSockets(t *testing.T) {
	pc, err := net.ListenPacket("udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	pc.Close()
	p := udppooltest.Pool(t)
	tr, err := p.Transport(context.Background(), "udp", fmt.Sprintf(":%d", port), udppool.WithSockets(2))
	if errors.Is(err, udppool.ErrNoSteering) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	s := &h3.Server{Transport: tr, Handler: http.HandlerFunc(hello)}
	t.Cleanup(func() { s.Close() })
	auth := newCA(t, "test CA")
	if err := s.Reload(serverTLS(auth.issue(t, false)), nil); err != nil {
		t.Fatal(err)
	}
	hosts := []string{}
	if nettest.SupportsIPv4() {
		hosts = append(hosts, "127.0.0.1")
	}
	if nettest.SupportsIPv6() {
		hosts = append(hosts, "[::1]")
	}
	requests := 0
	for round := range 2 {
		for i := range 8 {
			host := hosts[i%len(hosts)]
			client := newClient(auth.pool(), nil)
			url := fmt.Sprintf("https://%s:%d/r%d", host, port, i)
			o := get(context.Background(), client, url)
			client.Close()
			if o.err != nil || o.body != fmt.Sprintf("hello /r%d", i) {
				t.Errorf("round %d, request %d to %s: %q, %v", round, i, host, o.body, o.err)
			}
			requests++
		}
		if round == 0 {
			if err := s.Reload(serverTLS(auth.issue(t, false)), nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	var per []uint64
	for _, st := range p.Stats() {
		per = append(per, st.ConnsDelivered)
	}
	t.Logf("%d requests on fresh connections; connections per socket %v", requests, per)
	if len(per) != 2 || per[0] == 0 || per[1] == 0 {
		t.Errorf("connections per socket %v: want both sockets serving", per)
	}
}
