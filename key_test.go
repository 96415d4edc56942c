package udppool

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// normalize is parseKey without its literal flag, which the tests ignore.
func normalize(ctx context.Context, r resolver, st stack, network, address string) (Key, error) {
	k, _, err := parseKey(ctx, r, st, network, address)
	return k, err
}

// FuzzParseKey checks normalization of arbitrary networks and addresses: it
// never panics, every failure wraps one of the package's sentinels, and a
// key parses back to itself from its own String form.
func FuzzParseKey(f *testing.F) {
	for _, s := range [][2]string{
		{"udp", ":443"}, {"udp", "0.0.0.0:443"}, {"udp", "[::]:443"}, {"udp4", "127.0.0.1:0"},
		{"udp6", "[fe80::1%eth0]:53"}, {"udp", "[::ffff:10.0.0.1]:1"}, {"udp", ":domain"},
		{"udp", "dual.test:80"}, {"tcp", ":80"}, {"udp", "::1:80"}, {"udp", ":65536"}, {"udp", ""},
	} {
		f.Add(s[0], s[1], true)
	}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, network, address string, dual bool) {
		st := stack{dualStack: dual}
		k, err := normalize(ctx, staticResolver{}, st, network, address)
		if err != nil {
			if !errors.Is(err, ErrUnknownNetwork) && !errors.Is(err, ErrInvalidAddress) && !errors.Is(err, ErrPortRange) {
				t.Fatalf("parseKey(%q, %q): untyped error %v", network, address, err)
			}
			return
		}
		if !k.IsValid() {
			t.Fatalf("parseKey(%q, %q) = invalid key %#v", network, address, k)
		}
		if k.Network == "udp" && (!dual || !k.Addr.Addr().IsUnspecified()) {
			t.Fatalf("parseKey(%q, %q) = %v: dual-stack key for a non-wildcard or a host without dual-stack", network, address, k)
		}
		if k.Addr.Addr().Is4In6() {
			t.Fatalf("parseKey(%q, %q) = %v: IPv4-mapped address left in the key", network, address, k)
		}
		again, err := normalize(ctx, staticResolver{}, st, k.Network, k.Addr.String())
		if err != nil || again != k {
			t.Fatalf("key %v does not parse back to itself: %v, %v", k, again, err)
		}
		if strings.Count(k.String(), " ") != 1 {
			t.Fatalf("key string %q is not \"network address\"", k.String())
		}
	})
}

func TestOverlaps(t *testing.T) {
	mk := func(s string) Key {
		network, addr, _ := strings.Cut(s, " ")
		k, err := normalize(context.Background(), staticResolver{}, stack{dualStack: true}, network, addr)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	cases := []struct {
		a, b string
		want bool
	}{
		{"udp :1", "udp4 0.0.0.0:1", true},
		{"udp :1", "udp4 127.0.0.1:1", true},
		{"udp :1", "udp6 [::]:1", true},
		{"udp :1", "udp6 [::1]:1", true},
		{"udp4 0.0.0.0:1", "udp4 127.0.0.1:1", true},
		{"udp6 [::]:1", "udp6 [::1]:1", true},
		{"udp4 0.0.0.0:1", "udp6 [::]:1", false},
		{"udp4 127.0.0.1:1", "udp4 127.0.0.2:1", false},
		{"udp4 127.0.0.1:1", "udp6 [::1]:1", false},
		{"udp :1", "udp :2", false},
		{"udp :1", "udp4 0.0.0.0:2", false},
		{"udp :1", "udp :1", false}, // the same key is shared, not an overlap
	}
	for _, tc := range cases {
		a, b := mk(tc.a), mk(tc.b)
		if got := a.overlaps(b); got != tc.want {
			t.Errorf("%v overlaps %v = %v, want %v", a, b, got, tc.want)
		}
		if got := b.overlaps(a); got != tc.want {
			t.Errorf("%v overlaps %v = %v, want %v (not symmetric)", b, a, got, tc.want)
		}
	}
}
