package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/nettest"
)

// chromium returns the path of a Chromium binary, or skips.
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	t.Skip("no Chromium on this machine (Debian package chromium): the browser interop test needs one")
	return ""
}

// TestBrowserHTTP3 loads the page with a real browser, an independent QUIC
// and HTTP/3 stack, over IPv4 and IPv6, while the server reloads its
// certificate every 100 ms. The server has no TCP listener at all, so a
// loaded page proves HTTP/3.
func TestBrowserHTTP3(t *testing.T) {
	browser := chromium(t)
	var out syncBuffer
	ready := make(chan int, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, options{listen: ":0", reload: 100 * time.Millisecond, out: &out, ready: func(port int) { ready <- port }})
	}()
	var port int
	select {
	case port = <-ready:
	case err := <-done:
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	m := regexp.MustCompile(`spki (\S+)\)`).FindStringSubmatch(out.String())
	if m == nil {
		cancel()
		<-done
		t.Fatalf("no key hash in the ready line: %q", out.String())
	}
	hosts := []string{"127.0.0.1"}
	if nettest.SupportsIPv6() {
		hosts = append(hosts, "[::1]")
	}
	for _, host := range hosts {
		origin := fmt.Sprintf("%s:%d", host, port)
		// A first start of a browser can be slow on a fresh machine.
		bctx, bcancel := context.WithTimeout(ctx, 3*testTimeout)
		cmd := exec.CommandContext(bctx, browser,
			"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
			"--disable-background-networking", "--disable-component-update", "--disable-sync",
			"--user-data-dir="+t.TempDir(),
			// "*": Chromium does not match a bracketed IPv6 origin here.
			"--enable-quic", "--origin-to-force-quic-on=*",
			"--ignore-certificate-errors-spki-list="+m[1],
			"--dump-dom", "https://"+origin+"/")
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
		page, err := cmd.Output()
		bcancel()
		if err != nil || !strings.Contains(string(page), "hello from udppool over HTTP/3") {
			t.Errorf("Chromium loading https://%s/: %v\n%.500s", origin, err, page)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	summary := parseSummary(t, out.String())
	if summary["connections IPv4"] == 0 || len(hosts) > 1 && summary["connections IPv6"] == 0 {
		t.Errorf("the browser's connections were not counted per family:\n%s", out.String())
	}
	t.Logf("%s", out.String())
}
