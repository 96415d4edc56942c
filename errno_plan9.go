package udppool

import "errors"

// Plan 9 has no errno values: these errors are never returned there.
var (
	errAddrInUse     = errors.New("address already in use")
	errBadDescriptor = errors.New("bad file descriptor")
)

func bindBlocked(error) bool { return false }
