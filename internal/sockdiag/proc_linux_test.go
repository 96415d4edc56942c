package sockdiag

import (
	"encoding/binary"
	"slices"
	"strings"
	"testing"
)

// Sample socket tables as a little-endian host prints them.
const (
	sampleUDP = `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  109: 00000000:01BB 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 12345 2 0000000000000000 0
  110: 0100007F:01BB 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 12346 2 0000000000000000 0
  111: 0200007F:01BB 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 12347 2 0000000000000000 0

  112: 0100007F:01BB 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 12348 2 0000000000000000 0
  113: 00000000:01BC 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 12349 2 0000000000000000 0
  114: 00000000:01BB 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 0 2 0000000000000000 0
`
	sampleUDP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  200: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 22221 2 0000000000000000 0
  201: 00000000000000000000000001000000:01BB 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 22222 2 0000000000000000 0
  202: 0000000000000000FFFF00000100007F:01BB 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000    33        0 22223 2 0000000000000000 0
  203: 000080FE000000000000000001000000:01BB 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 22224 2 0000000000000000 0
  204: B80D0120000000000000000001000000:01BB 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000 4294967295        0 22225 2 0000000000000000 0
`
)

func TestParseProc(t *testing.T) {
	any4 := ap("0.0.0.0:0")
	any6 := ap("[::]:0")
	want4 := []Socket{
		{Local: ap("0.0.0.0:443"), Remote: any4, UID: 0, Inode: 12345},
		{Local: ap("127.0.0.1:443"), Remote: any4, UID: 1000, Inode: 12346},
		{Local: ap("127.0.0.2:443"), Remote: any4, UID: 1000, Inode: 12347},
		{Local: ap("127.0.0.1:443"), Remote: ap("127.0.0.1:50000"), UID: 1000, Inode: 12348},
		{Local: ap("0.0.0.0:444"), Remote: any4, UID: 0, Inode: 12349},
		{Local: ap("0.0.0.0:443"), Remote: any4, UID: 0, Inode: 0},
	}
	got, err := parseProcUDP(strings.NewReader(sampleUDP), false, binary.LittleEndian)
	if err != nil || !slices.Equal(got, want4) {
		t.Errorf("udp table: %v\n got %+v\nwant %+v", err, got, want4)
	}
	want6 := []Socket{
		{Local: ap("[::]:443"), Remote: any6, UID: 0, Inode: 22221},
		{Local: ap("[::1]:443"), Remote: any6, UID: 0, Inode: 22222},
		{Local: ap("[::ffff:127.0.0.1]:443"), Remote: any6, UID: 33, Inode: 22223},
		{Local: ap("[fe80::1]:443"), Remote: any6, UID: 0, Inode: 22224},
		{Local: ap("[2001:db8::1]:443"), Remote: any6, UID: 4294967295, Inode: 22225},
	}
	got, err = parseProcUDP(strings.NewReader(sampleUDP6), true, binary.LittleEndian)
	if err != nil || !slices.Equal(got, want6) {
		t.Errorf("udp6 table: %v\n got %+v\nwant %+v", err, got, want6)
	}

	// A big-endian host prints the words in network order.
	be := "  1: 7F000001:01BB 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 7 2 0 0\n"
	es, err := parseProcUDP(strings.NewReader(be), false, binary.BigEndian)
	if err != nil || len(es) != 1 || es[0].Local != ap("127.0.0.1:443") {
		t.Errorf("big-endian line: %+v, %v; want 127.0.0.1:443", es, err)
	}

	// Empty tables and header-only tables have no entries.
	for _, text := range []string{"", "\n\n", strings.SplitAfter(sampleUDP, "\n")[0]} {
		if es, err := parseProcUDP(strings.NewReader(text), false, binary.LittleEndian); err != nil || len(es) != 0 {
			t.Errorf("parse(%q) = %+v, %v; want nothing", text, es, err)
		}
	}
}

func TestParseProcMalformed(t *testing.T) {
	const rest = " 07 00000000:00000000 00:00000000 00000000  1000        0 12346 2 0000000000000000 0"
	line4 := func(local, remote string) string { return "  1: " + local + " " + remote + rest }
	const z4, z6 = "00000000:0000", "00000000000000000000000000000000:0000"
	tests := []struct {
		name string
		v6   bool
		line string
	}{
		{"too few columns", false, "  1: 0100007F:01BB 00000000:0000 07"},
		{"truncated before the inode", false, "  1: 0100007F:01BB " + z4 + " 07 00000000:00000000 00:00000000 00000000 0 0"},
		{"slot without colon", false, "  1 0100007F:01BB" + " " + z4 + rest},
		{"local without port", false, line4("0100007F01BB", z4)},
		{"remote without port", false, line4("0100007F:01BB", "00000000")},
		{"bad hex", false, line4("0100007G:01BB", z4)},
		{"short address", false, line4("100007F:01BB", z4)},
		{"long address", false, line4("00100007F:01BB", z4)},
		{"signed address", false, line4("+100007F:01BB", z4)},
		{"0x address", false, line4("0x00007F:01BB", z4)},
		{"empty port", false, line4("0100007F:", z4)},
		{"long port", false, line4("0100007F:101BB", z4)},
		{"bad port", false, line4("0100007F:01BX", z4)},
		{"two colons", false, line4("0100007F:01BB:1", z4)},
		{"IPv6 address in udp", false, line4("00000000000000000000000001000000:01BB", z4)},
		{"IPv4 address in udp6", true, "  1: 0100007F:01BB " + z6 + rest},
		{"short IPv6 address", true, "  1: 000000000000000000000000100000:01BB " + z6 + rest},
		{"uid not a number", false, "  1: 0100007F:01BB " + z4 + " 07 00000000:00000000 00:00000000 00000000 x 0 5 2 0 0"},
		{"negative uid", false, "  1: 0100007F:01BB " + z4 + " 07 00000000:00000000 00:00000000 00000000 -1 0 5 2 0 0"},
		{"uid too large", false, "  1: 0100007F:01BB " + z4 + " 07 00000000:00000000 00:00000000 00000000 4294967296 0 5 2 0 0"},
		{"negative inode", false, "  1: 0100007F:01BB " + z4 + " 07 00000000:00000000 00:00000000 00000000 0 0 -5 2 0 0"},
		{"inode not decimal", false, "  1: 0100007F:01BB " + z4 + " 07 00000000:00000000 00:00000000 00000000 0 0 1e3 2 0 0"},
		{"garbage", false, "\x00\xff:: ::: :"},
		{"line too long", false, strings.Repeat("0", 1<<20)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			header, good := sampleUDP, ""
			if tt.v6 {
				header = sampleUDP6
			}
			header, good, _ = strings.Cut(header, "\n") // header line, then the first entry
			good, _, _ = strings.Cut(good, "\n")
			text := header + "\n" + good + "\n" + tt.line + "\n" + good + "\n"
			es, err := parseProcUDP(strings.NewReader(text), tt.v6, binary.LittleEndian)
			if err == nil {
				t.Fatalf("parsed %q as %+v; want an error", tt.line, es)
			}
			if tt.name != "line too long" && !strings.Contains(err.Error(), "line 3") {
				t.Errorf("error %q does not name line 3", err)
			}
			if es != nil {
				t.Errorf("sockets %+v beside the error", es)
			}
		})
	}
}

// FuzzParseProc checks that no table makes the parser panic and that
// what it parses has valid addresses of the table's family.
func FuzzParseProc(f *testing.F) {
	f.Add(sampleUDP, false)
	f.Add(sampleUDP6, true)
	f.Add("  1: 0100007F:01BB 00000000:0000 07 0 0 0 0 0 0\n", false)
	f.Fuzz(func(t *testing.T, text string, v6 bool) {
		es, err := parseProcUDP(strings.NewReader(text), v6, binary.LittleEndian)
		if err != nil {
			return
		}
		for _, e := range es {
			if !e.Local.IsValid() || !e.Remote.IsValid() || e.Local.Addr().Is6() != v6 || e.Remote.Addr().Is6() != v6 {
				t.Errorf("table (v6 %v) gives %+v", v6, e)
			}
		}
	})
}
