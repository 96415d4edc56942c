package udppool

import "sync"

// spelling is a network and address exactly as a caller wrote them.
type spelling struct{ network, address string }

// An index remembers which entry each literal spelling resolved to, so that
// acquiring a socket the pool already holds neither parses the address nor
// takes the pool's lock. It is sharded so that acquires of different keys on
// different cores do not contend. Entries found here may be stale (released
// or closing): the fast path only takes a reference on an entry that still
// has one, and falls back to the slow path otherwise.
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
	m  map[spelling]*entry
	_  [64]byte // keep shards on separate cache lines
}

func newIndex() *index {
	x := new(index)
	for i := range x.shards {
		x.shards[i].m = make(map[spelling]*entry)
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
	e := s.m[sp]
	s.mu.RUnlock()
	return e
}

func (x *index) put(sp spelling, e *entry) {
	s := x.shard(sp)
	s.mu.Lock()
	if _, ok := s.m[sp]; !ok && len(s.m) >= shardCap {
		clear(s.m)
	}
	s.m[sp] = e
	s.mu.Unlock()
}
