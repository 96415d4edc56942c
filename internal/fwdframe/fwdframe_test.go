package fwdframe

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	for _, c := range []struct {
		name    string
		key     string
		from    string
		oob     []byte
		payload []byte
	}{
		{"IPv4 with OOB", "udp4 0.0.0.0:4433", "127.0.0.1:50000", []byte{1, 2, 3, 4}, []byte("payload")},
		{"IPv4 without OOB", "udp4 0.0.0.0:4433", "192.0.2.7:1", nil, []byte("payload")},
		{"IPv6 with OOB", "udp [::]:4433", "[::1]:4433", bytes.Repeat([]byte{0xee}, 300), []byte("payload")},
		{"IPv6 without OOB", "udp6 [::1]:443", "[2001:db8::1]:65535", nil, []byte{0xc0}},
		{"IPv4-mapped", "udp [::]:4433", "[::ffff:127.0.0.1]:443", []byte{9}, []byte("x")},
		{"empty key and payload", "", "10.0.0.1:0", nil, nil},
		{"longest key and OOB", strings.Repeat("k", 255), "[::1]:1", make([]byte, 65535), make([]byte, 1500)},
	} {
		t.Run(c.name, func(t *testing.T) {
			from := netip.MustParseAddrPort(c.from)
			prefix := []byte("kept")
			b := Append(bytes.Clone(prefix), c.key, from, c.oob, c.payload)
			if !bytes.HasPrefix(b, prefix) {
				t.Fatalf("Append lost the buffer's contents: %q", b)
			}
			f, err := Parse(b[len(prefix):])
			if err != nil {
				t.Fatal(err)
			}
			if f.Key != c.key || f.From != from || !bytes.Equal(f.OOB, c.oob) || !bytes.Equal(f.Payload, c.payload) {
				t.Errorf("parsed %q %v oob %d payload %d octets, want %q %v %d %d",
					f.Key, f.From, len(f.OOB), len(f.Payload), c.key, from, len(c.oob), len(c.payload))
			}
			// Appending to OOB must not overwrite the payload behind it.
			if len(f.OOB) > 0 {
				_ = append(f.OOB, 0xff)
				if !bytes.Equal(f.Payload, c.payload) {
					t.Error("OOB's capacity reaches into the payload")
				}
			}
		})
	}
}

// TestAppendRefuses checks that what the format cannot carry makes no frame
// rather than a frame that parses as something else.
func TestAppendRefuses(t *testing.T) {
	from := netip.MustParseAddrPort("127.0.0.1:1")
	for _, c := range []struct {
		name string
		key  string
		from netip.AddrPort
		oob  []byte
	}{
		{"key over 255 octets", strings.Repeat("k", 256), from, nil},
		{"control data over 65535 octets", "k", from, make([]byte, 65536)},
		{"invalid address", "k", netip.AddrPort{}, nil},
	} {
		if b := Append([]byte("kept"), c.key, c.from, c.oob, []byte("p")); b != nil {
			t.Errorf("%s: framed as %d octets", c.name, len(b))
		}
	}
}

func TestParseRefuses(t *testing.T) {
	good := Append(nil, "udp [::]:4433", netip.MustParseAddrPort("[::1]:4433"), []byte{1, 2, 3}, []byte("payload"))
	// Every cut before the payload loses a field.
	for n := range len(good) - len("payload") {
		if f, err := Parse(good[:n]); !errors.Is(err, ErrMalformed) {
			t.Errorf("frame cut at %d of %d: %+v, %v", n, len(good), f, err)
		}
	}
	for _, c := range []struct {
		name  string
		frame []byte
	}{
		{"key length past the end", []byte{5, 'a', 'b'}},
		{"address length 0", []byte{1, 'k', 0, 0, 1, 0, 0}},
		{"address length 5", []byte{1, 'k', 5, 1, 2, 3, 4, 5, 0, 1, 0, 0}},
		{"address length 255", append([]byte{1, 'k', 255}, make([]byte, 300)...)},
		{"address past the end", []byte{1, 'k', 16, 0, 0, 0, 0}},
		{"no port", []byte{0, 4, 127, 0, 0, 1}},
		{"no control length", []byte{0, 4, 127, 0, 0, 1, 0, 1, 0}},
		{"control length past the end", []byte{0, 4, 127, 0, 0, 1, 0, 1, 0xff, 0xff, 1, 2, 3}},
	} {
		if f, err := Parse(c.frame); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %+v, %v", c.name, f, err)
		}
	}
}

// FuzzParse checks that no input panics, and that whatever parses is the
// frame Append makes of what it parsed to: the format has one spelling.
func FuzzParse(f *testing.F) {
	f.Add(Append(nil, "udp [::]:4433", netip.MustParseAddrPort("[::1]:4433"), []byte{1, 2, 3}, []byte("payload")))
	f.Add(Append(nil, "udp4 0.0.0.0:1", netip.MustParseAddrPort("127.0.0.1:2"), nil, nil))
	f.Add([]byte{})
	f.Add([]byte{0, 16})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := Parse(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if again := Append(nil, fr.Key, fr.From, fr.OOB, fr.Payload); !bytes.Equal(again, b) {
			t.Fatalf("parsed %+v, which frames as %x, not %x", fr, again, b)
		}
	})
}
