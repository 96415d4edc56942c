package udppool

import (
	"maps"
	"sync/atomic"
)

// spelling is a network and address exactly as a caller wrote them.
type spelling struct{ network, address string }

// An index remembers which entry each literal spelling resolved to, so that
// acquiring a socket the pool already holds neither parses the address nor
// takes the pool's lock.
//
// Reading it writes no memory: each shard is an immutable map behind an
// atomic pointer, replaced whole by a writer. An earlier index took a
// shard's sync.RWMutex for reading and held its entries through weak
// pointers; on two cores the RWMutex's reader count, written by every
// lookup, and weak.Pointer.Value, which touches the runtime's global sweep
// state, made acquires on both cores slower in all than on one (the
// benchmark's parallel_speedup was 0.6-0.9). Writers hold Pool.mu: an entry
// is indexed only while it is in the pool, and remove drops its spellings,
// so the index holds no entry that left the pool and needs no weak
// pointers. Entries found here may still be released or closing: the fast
// path only takes a reference on an entry that still has one, and falls
// back to the slow path otherwise.
type index struct {
	shards [indexShards]indexShard
}

const (
	// indexShards spreads the index so that a writer copies a small map.
	indexShards = 64
	// maxSpellings bounds the spellings indexed per entry: a caller that
	// spells one address endlessly anew ("[::ffff:127.0.0.1]:443",
	// "[0::ffff:127.0.0.1]:443", ...) must not grow the index without
	// limit. Further spellings take the slow path, which parses them.
	maxSpellings = 8
)

type indexShard struct {
	m atomic.Pointer[map[spelling]*entry] // never modified once stored
	// Apart from the neighbours' pointers: a write to one shard must not
	// invalidate the cache line (or, with adjacent-line prefetch, the pair
	// of lines) that lookups in another shard read.
	_ [120]byte
}

func newIndex() *index { return new(index) }

// shard picks a shard by an FNV-1a hash of the address. It only spreads
// writes: the shard's map does the real (seeded) hashing, so a poor spread
// can cost copying, never correctness.
func (x *index) shard(sp spelling) *indexShard {
	h := uint32(2166136261)
	for i := range len(sp.address) {
		h = (h ^ uint32(sp.address[i])) * 16777619
	}
	return &x.shards[h%indexShards]
}

func (x *index) get(sp spelling) *entry {
	m := x.shard(sp).m.Load()
	if m == nil {
		return nil
	}
	return (*m)[sp]
}

// put indexes e under sp, unless e has as many spellings as it may have.
// Pool.mu must be held, and e must be in the pool.
func (x *index) put(sp spelling, e *entry) {
	s := x.shard(sp)
	old := s.m.Load()
	if old != nil && (*old)[sp] == e {
		return
	}
	if len(e.spellings) >= maxSpellings {
		return
	}
	m := make(map[spelling]*entry, 1)
	if old != nil {
		m = maps.Clone(*old)
		if prev := m[sp]; prev != nil {
			// An entry that left the pool drops its spellings, so a
			// spelling of another entry means the spelling resolves
			// differently now (a replacement of a dead socket).
			prev.dropSpelling(sp)
		}
	}
	m[sp] = e
	s.m.Store(&m)
	e.spellings = append(e.spellings, sp)
}

// forget drops every spelling of e. Pool.mu must be held.
func (x *index) forget(e *entry) {
	for _, sp := range e.spellings {
		s := x.shard(sp)
		old := s.m.Load()
		if old == nil || (*old)[sp] != e {
			continue
		}
		m := maps.Clone(*old)
		delete(m, sp)
		s.m.Store(&m)
	}
	e.spellings = nil
}

// dropSpelling removes sp from e's spellings. Pool.mu must be held.
func (e *entry) dropSpelling(sp spelling) {
	for i, o := range e.spellings {
		if o == sp {
			e.spellings = append(e.spellings[:i], e.spellings[i+1:]...)
			return
		}
	}
}
