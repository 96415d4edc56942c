package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/nettest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds a whole run, so that a lost handshake fails the test
// instead of hanging it. It is never asserted as a duration.
const testTimeout = 30 * time.Second

// TestReloadUnderLoad runs the demonstration briefly, dual-stack and
// split-stack, and wants every handshake of every family the host has to
// succeed while the listener is being replaced.
func TestReloadUnderLoad(t *testing.T) {
	for _, split := range []bool{false, true} {
		name := "dual-stack"
		if split {
			name = "split-stack"
		}
		t.Run(name, func(t *testing.T) {
			cfg := config{listen: ":0", duration: time.Second, clients: 2, reload: 10 * time.Millisecond, split: split}
			res, out := runBounded(t, cfg)
			if err := res.check(); err != nil {
				t.Errorf("run failed: %v\n%s", err, out)
			}
			var want []string
			if nettest.SupportsIPv4() {
				want = append(want, "IPv4")
			}
			if nettest.SupportsIPv6() {
				want = append(want, "IPv6")
			}
			if got := familyNames(res.families); got != strings.Join(want, ", ") {
				t.Errorf("families tested: %s, want %v", got, want)
			}
			for _, f := range res.families {
				if f.ok.Load() == 0 {
					t.Errorf("no %s handshake succeeded\n%s", f.name, out)
				}
			}
			if res.reloads == 0 {
				t.Errorf("no reload happened\n%s", out)
			}
			t.Logf("\n%s", out)
		})
	}
}

// TestSpecificAddress serves a single loopback address: only its family
// is tested, from one socket.
func TestSpecificAddress(t *testing.T) {
	if !nettest.SupportsIPv4() {
		t.Skip("host has no IPv4 loopback")
	}
	cfg := config{listen: "127.0.0.1:0", duration: 300 * time.Millisecond, clients: 1, reload: 10 * time.Millisecond}
	res, out := runBounded(t, cfg)
	if err := res.check(); err != nil {
		t.Errorf("run failed: %v\n%s", err, out)
	}
	if got := familyNames(res.families); got != "IPv4" {
		t.Errorf("families tested: %s, want IPv4", got)
	}
}

// runBounded calls run and fails the test if it does not return in time.
func runBounded(t *testing.T, cfg config) (*result, string) {
	t.Helper()
	type ret struct {
		res *result
		err error
	}
	var out bytes.Buffer
	done := make(chan ret, 1)
	go func() {
		res, err := run(context.Background(), cfg, &out)
		done <- ret{res, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("run: %v\n%s", r.err, out.String())
		}
		return r.res, out.String()
	case <-time.After(testTimeout):
		t.Fatalf("run did not return within %v", testTimeout)
		return nil, ""
	}
}
