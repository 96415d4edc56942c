package udppool

import (
	"maps"
	"sync"
	"weak"
)

// spelling is a network and address exactly as a caller wrote them.
type spelling struct{ network, address string }

// An index remembers which entry each literal spelling resolved to, so that
// acquiring a socket the pool already holds neither parses the address nor
// takes the pool's lock. It is sharded so that acquires of different keys on
// different cores do not contend. Entries found here may be stale (released
// or closing): the fast path only takes a reference on an entry that still
// has one, and falls back to the slow path otherwise. The index holds its
// entries weakly: an entry that left the pool, with its socket and any QUIC
// transport it had, is not kept alive by a spelling that named it.
type index struct {
	shards [indexShards]indexShard
}

const (
	indexShards = 64
	// shardCap bounds each shard: a caller that spells keys endlessly
	// (always new addresses) must not grow the index without limit.
	shardCap = 1024
)

type indexShard struct {
	mu sync.RWMutex
	m  map[spelling]weak.Pointer[entry]
	_  [64]byte // keep shards on separate cache lines
}

func newIndex() *index {
	x := new(index)
	for i := range x.shards {
		x.shards[i].m = make(map[spelling]weak.Pointer[entry])
	}
	return x
}

// shard picks a shard by an FNV-1a hash of the address. It only spreads
// load: the shard's map does the real (seeded) hashing, so a poor spread can
// cost contention, never correctness.
func (x *index) shard(sp spelling) *indexShard {
	h := uint32(2166136261)
	for i := range len(sp.address) {
		h = (h ^ uint32(sp.address[i])) * 16777619
	}
	return &x.shards[h%indexShards]
}

func (x *index) get(sp spelling) *entry {
	s := x.shard(sp)
	s.mu.RLock()
	w := s.m[sp]
	s.mu.RUnlock()
	return w.Value()
}

func (x *index) put(sp spelling, e *entry) {
	s := x.shard(sp)
	s.mu.Lock()
	if _, ok := s.m[sp]; !ok && len(s.m) >= shardCap {
		maps.DeleteFunc(s.m, func(_ spelling, w weak.Pointer[entry]) bool { return w.Value() == nil })
		if len(s.m) >= shardCap {
			clear(s.m)
		}
	}
	s.m[sp] = weak.Make(e)
	s.mu.Unlock()
}
