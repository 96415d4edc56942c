package udppool

import (
	"bytes"
	"errors"
	"testing"
)

func TestNewServerID(t *testing.T) {
	for _, c := range []struct {
		rot  uint8
		id   []byte
		want error
	}{
		{0, nil, ErrServerIDLength},
		{0, []byte{}, ErrServerIDLength},
		{0, make([]byte, MaxServerIDLen+1), ErrServerIDLength},
		{7, []byte{1}, ErrConfigRotation},
		{255, []byte{1}, ErrConfigRotation},
	} {
		s, err := NewServerID(c.rot, c.id)
		var se *ServerIDError
		if !errors.Is(err, c.want) || !errors.As(err, &se) || se.ConfigRotation != c.rot || len(se.ServerID) != len(c.id) {
			t.Errorf("NewServerID(%d, %x) = %v, %v; want a *ServerIDError wrapping %v", c.rot, c.id, s, err, c.want)
		} else {
			t.Logf("%v", err)
		}
	}
	id := []byte{0xc4, 0x60, 0x5e}
	s, err := NewServerID(6, id)
	if err != nil {
		t.Fatal(err)
	}
	id[0] = 0 // the ServerID keeps its own copy
	if got := s.Bytes(); !bytes.Equal(got, []byte{0xc4, 0x60, 0x5e}) || s.ConfigRotation() != 6 {
		t.Errorf("ServerID %x rotation %d", got, s.ConfigRotation())
	}
	s.Bytes()[0] = 0
	if got, want := s.String(), "c4605e (config rotation 6)"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if got := (ServerID{}).String(); got != "generation" {
		t.Errorf("zero ServerID: %q", got)
	}
	if _, err := NewServerID(0, make([]byte, MaxServerIDLen)); err != nil {
		t.Errorf("longest server ID: %v", err)
	}
}
