package steer

import (
	"math"
	"strconv"

	"golang.org/x/net/bpf"
)

// asm assembles a program whose jumps name their targets by label.
type asm struct {
	prog   []bpf.Instruction
	jumps  []pending
	labels map[string]int
	later  []later
	n      int
}

// later is a label whose instruction index is known before it is emitted.
type later struct {
	name string
	at   int
}

// pending is a jump to fix up: at is its index in prog; t and f are the
// labels of its targets, "" for the next instruction.
type pending struct {
	at   int
	t, f string
}

func (a *asm) add(ins bpf.Instruction) { a.prog = append(a.prog, ins) }

func (a *asm) label(name string) {
	if a.labels == nil {
		a.labels = make(map[string]int)
	}
	a.labels[name] = len(a.prog)
}

// skipOne returns a label for the instruction after the next one.
func (a *asm) skipOne() string {
	name := a.fresh()
	a.later = append(a.later, later{name: name, at: len(a.prog) + 2})
	return name
}

// fresh returns a label name not used before.
func (a *asm) fresh() string {
	a.n++
	return "l" + itoa(a.n)
}

func (a *asm) jumpIf(cond bpf.JumpTest, val uint32, t, f string) {
	a.jumps = append(a.jumps, pending{at: len(a.prog), t: t, f: f})
	a.add(bpf.JumpIf{Cond: cond, Val: val})
}

func (a *asm) jumpIfX(cond bpf.JumpTest, t, f string) {
	a.jumps = append(a.jumps, pending{at: len(a.prog), t: t, f: f})
	a.add(bpf.JumpIfX{Cond: cond})
}

func (a *asm) jump(to string) {
	a.jumps = append(a.jumps, pending{at: len(a.prog), t: to})
	a.add(bpf.Jump{})
}

// assemble resolves the jumps. Targets lie ahead (classic BPF jumps only
// forward); Program keeps each conditional jump within the 255
// instructions it can skip, and far ones go through an unconditional jump.
func (a *asm) assemble() []bpf.Instruction {
	for _, l := range a.later {
		a.label(l.name)
		a.labels[l.name] = l.at
	}
	skip := func(from int, to string, limit int) uint32 {
		if to == "" {
			return 0
		}
		at, ok := a.labels[to]
		if !ok || at <= from || at-from-1 > limit {
			panic("steer: bad jump to " + to) // a bug of this package, not of input
		}
		return uint32(at - from - 1)
	}
	for _, j := range a.jumps {
		switch ins := a.prog[j.at].(type) {
		case bpf.JumpIf:
			ins.SkipTrue, ins.SkipFalse = uint8(skip(j.at, j.t, 255)), uint8(skip(j.at, j.f, 255))
			a.prog[j.at] = ins
		case bpf.JumpIfX:
			ins.SkipTrue, ins.SkipFalse = uint8(skip(j.at, j.t, 255)), uint8(skip(j.at, j.f, 255))
			a.prog[j.at] = ins
		case bpf.Jump:
			ins.Skip = skip(j.at, j.t, math.MaxInt32)
			a.prog[j.at] = ins
		}
	}
	return a.prog
}

func itoa(n int) string { return strconv.Itoa(n) }
