package sockdiag

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// diagMsg builds a struct inet_diag_msg as the kernel sends it, with
// attributes attrs.
func diagMsg(family uint8, local netip.AddrPort, uid, inode uint32, attrs ...byte) []byte {
	b := make([]byte, sizeofInetDiagMsg, sizeofInetDiagMsg+len(attrs))
	b[0], b[1] = family, 7 // TCP_CLOSE: unconnected
	binary.BigEndian.PutUint16(b[offDiagSockID:], local.Port())
	ip := local.Addr().AsSlice()
	copy(b[offDiagSockID+4:], ip)
	binary.NativeEndian.PutUint32(b[offDiagUID:], uid)
	binary.NativeEndian.PutUint32(b[offDiagInode:], inode)
	return append(b, attrs...)
}

// nlattr builds one attribute, padded.
func nlattr(typ uint16, payload ...byte) []byte {
	b := binary.NativeEndian.AppendUint16(nil, uint16(4+len(payload)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// frame builds one netlink message of request seq, unpadded.
func frame(typ uint16, seq uint32, data []byte) []byte {
	b := binary.NativeEndian.AppendUint32(nil, uint32(unix.NLMSG_HDRLEN+len(data)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, unix.NLM_F_MULTI)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0)
	return append(b, data...)
}

// errno is the payload of an NLMSG_DONE or NLMSG_ERROR that answers err
// (0 for success).
func errno(err unix.Errno) []byte {
	return binary.NativeEndian.AppendUint32(nil, uint32(-int32(err)))
}

func TestParseDiagMsg(t *testing.T) {
	v6only := nlattr(inetDiagSKV6Only, 1)
	other := nlattr(5, 0) // INET_DIAG_TOS
	connected := diagMsg(unix.AF_INET, ap("127.0.0.1:443"), 5, 81)
	binary.BigEndian.PutUint16(connected[offDiagSockID+2:], 50000)
	copy(connected[offDiagSockID+20:], []byte{127, 0, 0, 2})
	for _, tt := range []struct {
		msg  []byte
		want Socket
	}{
		{diagMsg(unix.AF_INET, ap("127.0.0.1:443"), 1000, 77),
			Socket{Local: ap("127.0.0.1:443"), Remote: ap("0.0.0.0:0"), UID: 1000, Inode: 77}},
		{diagMsg(unix.AF_INET6, ap("[::]:443"), 0, 78, slices.Concat(other, v6only)...),
			Socket{Local: ap("[::]:443"), Remote: ap("[::]:0"), V6Only: true, Inode: 78}},
		{diagMsg(unix.AF_INET6, ap("[::]:443"), 0, 79, nlattr(inetDiagSKV6Only, 0)...),
			Socket{Local: ap("[::]:443"), Remote: ap("[::]:0"), Inode: 79}},
		// A nested or byte-order flag on the type does not hide it.
		{diagMsg(unix.AF_INET6, ap("[::]:443"), 0, 80, nlattr(inetDiagSKV6Only|0x8000, 1)...),
			Socket{Local: ap("[::]:443"), Remote: ap("[::]:0"), V6Only: true, Inode: 80}},
		{connected, Socket{Local: ap("127.0.0.1:443"), Remote: ap("127.0.0.2:50000"), UID: 5, Inode: 81}},
		// An IPv4-mapped address stays mapped; the last attribute may
		// come unpadded.
		{diagMsg(unix.AF_INET6, ap("[::ffff:127.0.0.1]:443"), 33, 82, nlattr(inetDiagSKV6Only, 0)[:5]...),
			Socket{Local: ap("[::ffff:127.0.0.1]:443"), Remote: ap("[::]:0"), UID: 33, Inode: 82}},
	} {
		got, err := parseDiagMsg(tt.msg)
		if err != nil || got != tt.want {
			t.Errorf("parseDiagMsg = %+v, %v; want %+v", got, err, tt.want)
		}
		if got.Connected() != (got.Inode == 81) {
			t.Errorf("%+v: Connected() = %v", got, got.Connected())
		}
	}

	good := diagMsg(unix.AF_INET6, ap("[::]:443"), 0, 78, v6only...)
	for name, msg := range map[string][]byte{
		"empty":              nil,
		"short":              good[:sizeofInetDiagMsg-1],
		"unknown family":     diagMsg(unix.AF_UNIX, ap("[::]:443"), 0, 1),
		"short attribute":    good[:sizeofInetDiagMsg+2],
		"attribute too long": diagMsg(unix.AF_INET6, ap("[::]:443"), 0, 1, 40, 0, 11, 0, 1),
		"attribute length 2": diagMsg(unix.AF_INET6, ap("[::]:443"), 0, 1, 2, 0, 11, 0),
		"attribute length 0": diagMsg(unix.AF_INET6, ap("[::]:443"), 0, 1, 0, 0, 11, 0),
		"attribute 0xffff":   diagMsg(unix.AF_INET6, ap("[::]:443"), 0, 1, 0xff, 0xff, 11, 0, 1, 0, 0, 0),
		"v6only of 4 bytes":  diagMsg(unix.AF_INET6, ap("[::]:443"), 0, 1, nlattr(inetDiagSKV6Only, 1, 0, 0, 0)...),
		"v6only empty":       diagMsg(unix.AF_INET6, ap("[::]:443"), 0, 1, nlattr(inetDiagSKV6Only)...),
		"bad second attr":    diagMsg(unix.AF_INET6, ap("[::]:443"), 0, 1, slices.Concat(other, []byte{9, 0, 1})...),
	} {
		if got, err := parseDiagMsg(msg); err == nil {
			t.Errorf("%s: parsed %+v, want an error", name, got)
		}
	}
}

func TestSplitNetlink(t *testing.T) {
	// Two messages, the first padded, the last not.
	two := slices.Concat(frame(unix.SOCK_DIAG_BY_FAMILY, 9, []byte{1, 2, 3}), []byte{0}, frame(unix.NLMSG_DONE, 9, []byte{0, 0}))
	msgs, err := splitNetlink(two)
	if err != nil || len(msgs) != 2 || !slices.Equal(msgs[0].Data, []byte{1, 2, 3}) ||
		msgs[1].Header.Type != unix.NLMSG_DONE || msgs[1].Header.Seq != 9 || len(msgs[1].Data) != 2 {
		t.Errorf("splitNetlink = %+v, %v", msgs, err)
	}
	if msgs, err := splitNetlink(nil); err != nil || len(msgs) != 0 {
		t.Errorf("splitNetlink(nil) = %+v, %v", msgs, err)
	}
	withLen := func(b []byte, n uint32) []byte {
		b = slices.Clone(b)
		binary.NativeEndian.PutUint32(b, n)
		return b
	}
	for name, b := range map[string][]byte{
		"short header":            two[:unix.NLMSG_HDRLEN-1],
		"claims more than it has": two[:unix.NLMSG_HDRLEN+2],
		"length too short":        withLen(two, 3),
		"length zero":             withLen(two, 0),
		"length 2 GiB":            withLen(two, 1<<31),
		"length 4 GiB-1":          withLen(two, ^uint32(0)),
		"short second header":     slices.Concat(frame(unix.NLMSG_DONE, 9, nil), []byte{1, 2, 3}),
		"second claims too much":  slices.Concat(frame(unix.NLMSG_DONE, 9, nil), withLen(frame(unix.NLMSG_DONE, 9, nil), 64)),
	} {
		if msgs, err := splitNetlink(b); err == nil {
			t.Errorf("%s: split into %+v, want an error", name, msgs)
		}
	}
}

// TestCollect feeds crafted batches of a dump's answer to collect: the
// messages the kernel sends, the errors it reports and the ways a batch
// can be malformed.
func TestCollect(t *testing.T) {
	const seq = 2
	sock := diagMsg(unix.AF_INET, ap("127.0.0.1:443"), 1000, 77)
	want := Socket{Local: ap("127.0.0.1:443"), Remote: ap("0.0.0.0:0"), UID: 1000, Inode: 77}
	msg := frame(unix.SOCK_DIAG_BY_FAMILY, seq, sock)
	done := frame(unix.NLMSG_DONE, seq, errno(0))

	// One batch, or the sockets in one and the end in the next.
	found, end, err := collect(nil, slices.Concat(msg, msg, done), seq, "IPv4")
	if err != nil || !end || !slices.Equal(found, []Socket{want, want}) {
		t.Errorf("one batch: %+v, done %v, %v", found, end, err)
	}
	found, end, err = collect(nil, msg, seq, "IPv4")
	if err != nil || end || !slices.Equal(found, []Socket{want}) {
		t.Errorf("first batch: %+v, done %v, %v", found, end, err)
	}
	found, end, err = collect(found, done, seq, "IPv4")
	if err != nil || !end || !slices.Equal(found, []Socket{want}) {
		t.Errorf("second batch: %+v, done %v, %v", found, end, err)
	}
	// An acknowledgement (error 0) is not an error, and a DONE without
	// a count ends the dump too.
	found, end, err = collect(nil, slices.Concat(frame(unix.NLMSG_ERROR, seq, errno(0)), msg, frame(unix.NLMSG_DONE, seq, nil)), seq, "IPv4")
	if err != nil || !end || !slices.Equal(found, []Socket{want}) {
		t.Errorf("acknowledged: %+v, done %v, %v", found, end, err)
	}

	// Errors the kernel reports: some mean no sock_diag for UDP, others
	// a failure.
	for _, tt := range []struct {
		typ         uint16
		errno       unix.Errno
		unavailable bool
	}{
		{unix.NLMSG_ERROR, unix.ENOENT, true},
		{unix.NLMSG_ERROR, unix.EOPNOTSUPP, true},
		{unix.NLMSG_ERROR, unix.EINVAL, true},
		{unix.NLMSG_DONE, unix.ENOENT, true},
		{unix.NLMSG_ERROR, unix.EPERM, false},
		{unix.NLMSG_DONE, unix.ENOBUFS, false},
	} {
		found, _, err := collect(nil, slices.Concat(msg, frame(tt.typ, seq, errno(tt.errno))), seq, "IPv6")
		if !errors.Is(err, tt.errno) || errors.Is(err, errNoSockDiag) != tt.unavailable || found != nil {
			t.Errorf("message type %d with %v: %+v, %v; want the error, unavailable %v", tt.typ, tt.errno, found, err, tt.unavailable)
		}
	}

	for name, b := range map[string][]byte{
		"other request":       slices.Concat(msg, frame(unix.NLMSG_DONE, seq+1, errno(0))),
		"unexpected type":     frame(unix.RTM_NEWLINK, seq, sock),
		"short error":         frame(unix.NLMSG_ERROR, seq, []byte{1, 2}),
		"short socket":        frame(unix.SOCK_DIAG_BY_FAMILY, seq, sock[:20]),
		"truncated":           slices.Concat(msg, done)[:len(msg)+3],
		"claims more":         frame(unix.SOCK_DIAG_BY_FAMILY, seq, sock)[:len(msg)-1],
		"socket of family 1":  frame(unix.SOCK_DIAG_BY_FAMILY, seq, diagMsg(unix.AF_UNIX, ap("[::]:1"), 0, 1)),
		"bad attribute after": frame(unix.SOCK_DIAG_BY_FAMILY, seq, append(slices.Clone(sock), 200, 0, 1, 0)),
	} {
		if found, end, err := collect([]Socket{want}, b, seq, "IPv4"); err == nil || found != nil || end {
			t.Errorf("%s: %+v, done %v, %v; want an error", name, found, end, err)
		}
	}
}

// FuzzCollect checks that no batch, however malformed, makes collect or
// what it calls panic, and that a socket it returns came from a socket
// message.
func FuzzCollect(f *testing.F) {
	sock := diagMsg(unix.AF_INET6, ap("[::1]:443"), 1, 2, nlattr(inetDiagSKV6Only, 1)...)
	f.Add(slices.Concat(frame(unix.SOCK_DIAG_BY_FAMILY, 1, sock), frame(unix.NLMSG_DONE, 1, errno(0))))
	f.Add(frame(unix.NLMSG_ERROR, 1, errno(unix.ENOENT)))
	f.Add(frame(unix.SOCK_DIAG_BY_FAMILY, 1, sock)[:30])
	f.Add(sock)
	f.Fuzz(func(t *testing.T, b []byte) {
		found, _, err := collect(nil, b, 1, "IPv6")
		if err != nil && found != nil {
			t.Errorf("error %v with sockets %+v", err, found)
		}
		for _, s := range found {
			if !s.Local.IsValid() || !s.Remote.IsValid() {
				t.Errorf("socket with an invalid address: %+v", s)
			}
		}
		parseDiagMsg(b)
	})
}

func TestDiagRequest(t *testing.T) {
	req := diagRequest(7, unix.AF_INET6, 443)
	ne := binary.NativeEndian
	msgs, err := splitNetlink(req)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("request splits into %+v, %v", msgs, err)
	}
	h, r := msgs[0].Header, msgs[0].Data
	if h.Type != unix.SOCK_DIAG_BY_FAMILY || h.Flags != unix.NLM_F_REQUEST|unix.NLM_F_DUMP || h.Seq != 7 || len(r) != sizeofInetDiagReqV2 {
		t.Errorf("header %+v, %d bytes of request", h, len(r))
	}
	if r[0] != unix.AF_INET6 || r[1] != unix.IPPROTO_UDP || ne.Uint32(r[4:]) != ^uint32(0) || binary.BigEndian.Uint16(r[8:]) != 443 {
		t.Errorf("request % x", r)
	}
}
