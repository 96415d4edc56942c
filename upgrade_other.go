//go:build !unix

package udppool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
)

// start is unsupported: passing sockets to a new process needs Unix.
func (u *Upgrader) start(context.Context) (*peer, error) {
	return nil, fmt.Errorf("process upgrades on this system: %w", errors.ErrUnsupported)
}

func (u *Upgrader) connectPredecessor(string) error {
	return fmt.Errorf("process upgrades on this system: %w", errors.ErrUnsupported)
}

func sendForward(*peer, []byte) {}

func listenerFile(l *net.TCPListener) (*os.File, error) { return l.File() }

func (s *peer) kill()    {}
func (s *peer) release() {}
