package udppool_test

// This file holds README.md's test example verbatim (TestMyServer), and
// TestREADME, which keeps every Go block of README.md and DESIGN.md
// identical to the function it names and every sample output identical to
// its example's checked output: their code compiles and runs, and their
// outputs are real.

import (
	"context"
	"fmt"
	"go/ast"
	"go/doc"
	"go/parser"
	"go/token"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/quic-go/quic-go"
	"github.com/udppool/udppool/udppooltest"
)

func TestMyServer(t *testing.T) {
	pool := udppooltest.Pool(t) // at cleanup: no socket, reference, goroutine or descriptor left
	certs := udppooltest.TLS(t) // an in-memory CA and a leaf for localhost, 127.0.0.1 and ::1

	tr, err := pool.Transport(context.Background(), "udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ln, err := tr.Listen(certs.ServerConfig("my-proto"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			udppooltest.Echo(t, conn) // copies every stream back, closes conn at cleanup
		}
	}()

	// The client is plain quic-go, trusting only the test CA.
	conn, err := quic.DialAddr(context.Background(), tr.LocalAddr().String(), certs.ClientConfig("my-proto"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	if got := udppooltest.RoundTrip(t, conn, []byte("ping")); string(got) != "ping" {
		t.Fatalf("echo: %q", got)
	}
}

// A mdBlock is a fenced block of a markdown file and the HTML comment on
// the line before its fence, if any.
type mdBlock struct {
	line   int // of the opening fence, from 1
	lang   string
	marker string
	text   string
}

var fence = regexp.MustCompile("^([ \t]*)```(\\S*)\\s*$")

// mdBlocks splits the markdown of file name into its fenced blocks, each
// without the indentation of its fence.
func mdBlocks(t *testing.T, name, md string) []mdBlock {
	t.Helper()
	lines := strings.Split(md, "\n")
	var blocks []mdBlock
	for i := 0; i < len(lines); i++ {
		m := fence.FindStringSubmatch(lines[i])
		if m == nil {
			continue
		}
		b := mdBlock{line: i + 1, lang: m[2]}
		if i > 0 {
			if prev := strings.TrimSpace(lines[i-1]); strings.HasPrefix(prev, "<!--") {
				b.marker = prev
			}
		}
		var text strings.Builder
		for i++; ; i++ {
			if i == len(lines) {
				t.Fatalf("%s:%d: block not closed", name, b.line)
			}
			if strings.TrimSpace(lines[i]) == "```" {
				break
			}
			line, ok := strings.CutPrefix(lines[i], m[1])
			if !ok && strings.TrimSpace(lines[i]) != "" {
				t.Fatalf("%s:%d: line indented less than its fence", name, i+1)
			}
			text.WriteString(line + "\n")
		}
		b.text = text.String()
		blocks = append(blocks, b)
	}
	return blocks
}

// goSource is a parsed Go file.
type goSource struct {
	fset *token.FileSet
	file *ast.File
	src  []byte
}

func parseGo(t *testing.T, path string) *goSource {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, src, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	return &goSource{fset, f, src}
}

func (g *goSource) offset(p token.Pos) int { return g.fset.Position(p).Offset }

// function returns the source of the function name: the whole declaration
// with whole, else its body without braces, one tab of indentation and
// an example's output comment. ok is false if there is no such function.
func (g *goSource) function(name string, whole bool) (text string, ok bool) {
	for _, d := range g.file.Decls {
		fn, isFunc := d.(*ast.FuncDecl)
		if !isFunc || fn.Name.Name != name || fn.Recv != nil {
			continue
		}
		if whole {
			return string(g.src[g.offset(fn.Pos()):g.offset(fn.End())]) + "\n", true
		}
		end := g.offset(fn.Body.Rbrace)
		for _, c := range g.file.Comments {
			if c.Pos() > fn.Body.Lbrace && c.End() < fn.Body.Rbrace {
				if txt := c.Text(); strings.HasPrefix(txt, "Output:") || strings.HasPrefix(txt, "Unordered output:") {
					end = g.offset(c.Pos())
				}
			}
		}
		var out []string
		for line := range strings.Lines(string(g.src[g.offset(fn.Body.Lbrace)+1 : end])) {
			out = append(out, strings.TrimPrefix(strings.TrimRight(line, " \t\n"), "\t"))
		}
		return strings.Trim(strings.Join(out, "\n"), "\n") + "\n", true
	}
	return "", false
}

// output returns the checked output of example name, as go test compares
// it.
func (g *goSource) output(name string) (string, bool) {
	for _, ex := range doc.Examples(g.file) {
		if "Example"+ex.Name == name && (ex.Output != "" || ex.EmptyOutput) {
			return ex.Output, true
		}
	}
	return "", false
}

var (
	sameAs   = regexp.MustCompile(`^<!-- same as (\w+) in ([\w/.]+\.go) -->$`)
	outputOf = regexp.MustCompile(`^<!-- output of (\w+) in ([\w/.]+\.go) -->$`)
)

// TestREADME: every Go block of README.md and DESIGN.md is marked with the
// function it shows and is identical to it, and every block marked as an
// example's output is identical to the output that go test checks for it.
func TestREADME(t *testing.T) {
	sources := make(map[string]*goSource)
	source := func(path string) *goSource {
		if sources[path] == nil {
			sources[path] = parseGo(t, path)
		}
		return sources[path]
	}
	for _, name := range []string{"README.md", "DESIGN.md"} {
		goBlocks, outputs := checkBlocks(t, name, source)
		if name == "README.md" && (goBlocks == 0 || outputs == 0) {
			t.Fatalf("%s: %d checked Go blocks and %d checked outputs; the markers are gone?", name, goBlocks, outputs)
		}
	}
}

// checkBlocks checks the marked blocks of markdown file name against the
// Go sources they name and returns how many Go blocks and outputs it
// checked.
func checkBlocks(t *testing.T, name string, source func(path string) *goSource) (goBlocks, outputs int) {
	t.Helper()
	md, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range mdBlocks(t, name, string(md)) {
		where := fmt.Sprintf("%s:%d", name, b.line)
		if m := sameAs.FindStringSubmatch(b.marker); m != nil {
			want, ok := source(m[2]).function(m[1], strings.HasPrefix(b.text, "func "))
			if !ok {
				t.Errorf("%s: no function %s in %s", where, m[1], m[2])
			} else if b.text != want {
				t.Errorf("%s: block differs from %s in %s:\n%s", where, m[1], m[2], diff(b.text, want))
			}
			goBlocks++
		} else if b.lang == "go" {
			t.Errorf("%s: Go block without a <!-- same as FUNCTION in FILE --> line: it would not be compiled", where)
		}
		if m := outputOf.FindStringSubmatch(b.marker); m != nil {
			want, ok := source(m[2]).output(m[1])
			if !ok {
				t.Errorf("%s: no example %s with an output comment in %s", where, m[1], m[2])
			} else if b.text != want {
				t.Errorf("%s: block differs from the output of %s:\n%s", where, m[1], diff(b.text, want))
			}
			outputs++
		}
	}
	return goBlocks, outputs
}

// diff shows the first line where got and want differ.
func diff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := range max(len(g), len(w)) {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl || i >= len(g) || i >= len(w) {
			return fmt.Sprintf("line %d:\n markdown: %q\n source:   %q", i+1, gl, wl)
		}
	}
	return "(no difference)"
}
