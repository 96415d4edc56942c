package main

import (
	"fmt"
	"io"
	"strings"
	"sync"
)

// quicLog collects what quic-go prints through the standard logger during
// the benchmarks, so that the table is not interrupted by a bare warning
// and each line can be explained at the end.
var quicLog logLines

type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// explain prints the collected lines with what they mean here.
func (l *logLines) explain(w io.Writer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) == 0 {
		return
	}
	fmt.Fprintln(w, "\nlogged by quic-go during the run:")
	for _, line := range l.lines {
		fmt.Fprintf(w, "  %s\n", line)
		switch {
		case strings.Contains(line, "Not a *net.UDPConn?"):
			fmt.Fprint(w, `  This comes from quic-go's wrapConn (sys_conn.go), which logs the first failure of
  setReceiveBuffer or setSendBuffer (sys_conn_buffers.go) once per process: the net.PacketConn
  handed to quic.Transport has no SetReadBuffer/SetWriteBuffer. The "quic bulk/wrapper" case
  does that on purpose: it hides every method of *net.UDPConn but net.PacketConn's, as many
  servers' wrappers do, to show what quic-go then loses (socket buffer sizes, batched reads,
  GSO, ECN). A pooled *udppool.Conn keeps those methods and never causes it. Since quic-go
  warns once, a buffer-size warning of the raw and pooled cases would hide behind this one:
  -run 'raw|pooled' shows it if there is one.
`)
		case strings.Contains(line, "buffer size"):
			fmt.Fprint(w, `  The kernel capped the socket buffers that quic-go asks for (net.core.rmem_max and
  net.core.wmem_max on Linux); it affects the raw and pooled cases alike, so their ratio
  stands, but both transfer rates are lower than on a tuned host.
`)
		}
	}
}
