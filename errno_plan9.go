package udppool

import "errors"

// errAddrInUse is the error of a bind to a port in use. Plan 9 has no
// errno values.
var errAddrInUse = errors.New("address already in use")
