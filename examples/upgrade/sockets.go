package main

import (
	"fmt"

	"github.com/udppool/udppool"
)

// socketsOption returns the Transport options that serve the address from
// n sockets.
func socketsOption(n int) ([]udppool.TransportOption, error) {
	if n == 1 {
		return nil, nil
	}
	return nil, fmt.Errorf("%d sockets: this build of udppool has no WithSockets", n)
}
