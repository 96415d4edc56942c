package main

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/udppool/udppool"
)

// The first octet of a stream says what the client wants.
const (
	kindBulk    = 'b' // upload until the stream ends; nothing comes back
	kindRequest = 'r' // a request: 2 octets of response size, then the request's payload
)

// alpn is the protocol of the benchmark's connections.
const alpn = "udppool-scaling"

// maxRequest bounds what the server reads of one request.
const maxRequest = 64 << 10

// A server is one pooled Transport with n sockets and one Listener on it,
// counting what its connections do.
type server struct {
	pool *udppool.Pool
	tr   *udppool.Transport
	ln   *udppool.Listener

	received atomic.Int64 // bytes of upload streams read
	requests atomic.Int64 // requests answered
	accepted atomic.Int64 // connections accepted

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func quicConfig() *quic.Config {
	return &quic.Config{
		MaxIncomingStreams: 1000,
		MaxIdleTimeout:     30 * time.Second,
	}
}

// startServer serves on a free loopback port from n sockets.
func startServer(n int, cert tls.Certificate) (*server, error) {
	pool := udppool.New()
	var tr *udppool.Transport
	// A port 0 socket joins no reuseport group, so the sockets of one
	// address need a port of their own: take a free one. Another process
	// may take it in between; then try another (any error: Plan 9 has no
	// EADDRINUSE to tell it by).
	for attempt := 0; ; attempt++ {
		free, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			pool.Close()
			return nil, err
		}
		port := free.LocalAddr().(*net.UDPAddr).Port
		free.Close()
		tr, err = pool.Transport(context.Background(), "udp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), udppool.WithSockets(n))
		if err == nil {
			break
		}
		if attempt == 4 {
			pool.Close()
			return nil, err
		}
	}
	// A pool of its own holds exactly the address's sockets: what is
	// measured at N must be N sockets.
	if got := len(pool.Stats()); got != n {
		tr.Close()
		pool.Close()
		return nil, fmt.Errorf("the pool holds %d sockets for %d requested", got, n)
	}
	ln, err := tr.Listen(&tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{alpn}, MinVersion: tls.VersionTLS13}, quicConfig())
	if err != nil {
		tr.Close()
		pool.Close()
		return nil, err
	}
	s := &server{pool: pool, tr: tr, ln: ln}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

func (s *server) addr() string { return s.tr.LocalAddr().String() }

func (s *server) accept() {
	defer s.wg.Done()
	for {
		conn, err := s.ln.Accept(s.ctx)
		if err != nil {
			return
		}
		s.accepted.Add(1)
		s.wg.Add(1)
		go s.serveConn(conn)
	}
}

func (s *server) serveConn(conn *quic.Conn) {
	defer s.wg.Done()
	for {
		st, err := conn.AcceptStream(s.ctx)
		if err != nil {
			return // the client closed the connection, or the server stops
		}
		s.wg.Add(1)
		go s.serveStream(st)
	}
}

// counter counts the bytes written to it and drops them.
type counter struct{ n *atomic.Int64 }

func (c counter) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	return len(p), nil
}

var zeros = make([]byte, 1<<16)

func (s *server) serveStream(st *quic.Stream) {
	defer s.wg.Done()
	defer st.CancelRead(0)
	var hdr [1]byte
	if _, err := io.ReadFull(st, hdr[:]); err != nil {
		st.CancelWrite(0)
		return
	}
	switch hdr[0] {
	case kindBulk:
		buf := make([]byte, 64<<10)
		io.CopyBuffer(counter{&s.received}, st, buf)
		st.Close()
	case kindRequest:
		var size [2]byte
		if _, err := io.ReadFull(st, size[:]); err != nil {
			st.CancelWrite(0)
			return
		}
		if _, err := io.Copy(io.Discard, io.LimitReader(st, maxRequest)); err != nil {
			st.CancelWrite(0)
			return
		}
		resp := int(binary.BigEndian.Uint16(size[:]))
		for resp > 0 {
			n, err := st.Write(zeros[:min(resp, len(zeros))])
			if err != nil {
				return
			}
			resp -= n
		}
		st.Close()
		s.requests.Add(1)
	default:
		st.CancelWrite(1)
	}
}

// close ends every connection and the sockets, and waits for the
// server's goroutines.
func (s *server) close() error {
	s.cancel()
	err := errors.Join(s.ln.Close(), s.tr.Close(), s.pool.Close())
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		err = errors.Join(err, fmt.Errorf("server goroutines still running 10 s after close"))
	}
	return err
}
