package udppool

import "sync"

// spelling is a network and address exactly as a caller wrote them.
type spelling struct{ network, address string }

// An index remembers which entry each literal spelling resolved to, so that
// acquiring a socket the pool already holds neither parses the address nor
// takes the pool's lock.
//
// Reading it writes no memory, and adding a spelling costs little however
// many there are: sync.Map (a hash trie) gives both. An earlier index took
// a sync.RWMutex for reading and held its entries through weak pointers;
// on two cores the RWMutex's reader count, written by every lookup, and
// weak.Pointer.Value, which touches the runtime's global sweep state, made
// acquires on both cores slower in all than on one. Another copied a
// shard's map on every new spelling, which made the first acquire of each
// of 10,000 keys cost 15 µs. Writers hold Pool.mu: an entry is indexed only
// while it is in the pool, and forget drops its spellings, so the index
// holds no entry that left the pool and needs no weak pointers. Entries
// found here may still be released or closing: the fast path only takes a
// reference on an entry that still has one, and falls back to the slow
// path otherwise.
type index struct {
	m sync.Map // spelling -> *entry
}

// maxSpellings bounds the spellings indexed per entry: a caller that
// spells one address endlessly anew ("[::ffff:127.0.0.1]:443",
// "[0::ffff:127.0.0.1]:443", ...) must not grow the index without limit.
// Further spellings take the slow path, which parses them.
const maxSpellings = 8

func newIndex() *index { return new(index) }

func (x *index) get(sp spelling) *entry {
	e, _ := x.m.Load(sp)
	e2, _ := e.(*entry)
	return e2
}

// put indexes e under sp, unless e has as many spellings as it may have.
// Pool.mu must be held, and e must be in the pool.
func (x *index) put(sp spelling, e *entry) {
	prev := x.get(sp)
	if prev == e || len(e.spellings) >= maxSpellings {
		return
	}
	if prev != nil {
		// An entry that left the pool drops its spellings, so a spelling
		// of another entry means the spelling resolves differently now
		// (a replacement of a dead socket).
		prev.dropSpelling(sp)
	}
	x.m.Store(sp, e)
	e.spellings = append(e.spellings, sp)
}

// forget drops every spelling of e. Pool.mu must be held.
func (x *index) forget(e *entry) {
	for _, sp := range e.spellings {
		x.m.CompareAndDelete(sp, e)
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
