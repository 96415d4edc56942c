//go:build unix

package fdpass

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// MaxSize is the largest message that Receive accepts, and Send sends.
const MaxSize = 64<<10 - 4

// Errors of Receive, wrapped with what was received.
var (
	// ErrTruncated reports descriptors that the kernel dropped: more
	// than the receiver's bound, or more than its descriptor limit
	// leaves room for.
	ErrTruncated = errors.New("descriptors truncated")
	// ErrTooLarge reports a message longer than MaxSize.
	ErrTooLarge = errors.New("message too large")
	// ErrTrailing reports octets after the message in the same read:
	// the sender must wait for an answer before it writes again, or
	// they would be lost.
	ErrTrailing = errors.New("data after the message")
)

// Send writes msg with the descriptors fds, which stay open and the
// caller's: the receiver gets duplicates.
func Send(c *net.UnixConn, msg []byte, fds []int) error {
	if len(msg) > MaxSize {
		return fmt.Errorf("%w: %d bytes, more than %d", ErrTooLarge, len(msg), MaxSize)
	}
	frame := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(msg)), uint32(len(msg)))
	frame = append(frame, msg...)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, _, err := c.WriteMsgUnix(frame, oob, nil)
	if err == nil && n < len(frame) {
		// The descriptors went with the first octets.
		_, err = c.Write(frame[n:])
	}
	return err
}

// Receive reads one message sent by Send, with room for maxFDs
// descriptors, and returns it with the descriptors that came with it, in
// the order Send was given them, as close-on-exec files. The caller sets
// c's deadline. On error every descriptor received has been closed again.
func Receive(c *net.UnixConn, maxFDs int) (msg []byte, files []*os.File, err error) {
	buf := make([]byte, 4+MaxSize)
	oob := make([]byte, unix.CmsgSpace(4*max(maxFDs, 0)))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, nil, err
	}
	files, perr := parseRights(oob[:oobn])
	fail := func(err error) ([]byte, []*os.File, error) {
		for _, f := range files {
			f.Close()
		}
		return nil, nil, err
	}
	switch {
	case perr != nil:
		return fail(fmt.Errorf("control message: %w", perr))
	case flags&unix.MSG_CTRUNC != 0:
		return fail(fmt.Errorf("%w (%d received): more than %d, or this process's descriptor limit reached", ErrTruncated, len(files), maxFDs))
	}
	if n < 4 {
		if _, err := io.ReadFull(c, buf[n:4]); err != nil {
			return fail(fmt.Errorf("reading the length: %w", noEOF(err)))
		}
		n = 4
	}
	size := int(binary.BigEndian.Uint32(buf))
	switch {
	case size > MaxSize:
		return fail(fmt.Errorf("%w: %d bytes, more than %d", ErrTooLarge, size, MaxSize))
	case n > 4+size:
		return fail(fmt.Errorf("%w: %d octets", ErrTrailing, n-4-size))
	case n < 4+size:
		if _, err := io.ReadFull(c, buf[n:4+size]); err != nil {
			return fail(fmt.Errorf("reading a message of %d bytes: %w", size, noEOF(err)))
		}
	}
	return buf[4 : 4+size : 4+size], files, nil
}

// noEOF turns the end of the stream within a message into
// io.ErrUnexpectedEOF: a message was announced.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// parseRights returns the descriptors of the SCM_RIGHTS messages in oob.
// It parses one message at a time, so that one that fails to parse leaves
// the descriptors of those before it to close.
func parseRights(oob []byte) ([]*os.File, error) {
	var files []*os.File
	for rest := oob; len(rest) > 0; {
		hdr, data, next, err := unix.ParseOneSocketControlMessage(rest)
		if err != nil {
			return files, err
		}
		rest = next
		if hdr.Level != unix.SOL_SOCKET || hdr.Type != unix.SCM_RIGHTS {
			continue
		}
		for len(data) >= 4 {
			fd := int(int32(binary.NativeEndian.Uint32(data)))
			data = data[4:]
			unix.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), "fdpass"))
		}
	}
	return files, nil
}
