package udppool_test

import (
	"testing"

	"github.com/udppool/udppool/examples/bench/benchcases"
)

func BenchmarkAcquireRelease(b *testing.B) {
	for _, live := range []int{10, 1000, 10000} {
		b.Run(benchcases.Name("keys", live), benchcases.AcquireRelease(live))
	}
	b.Run("cycle-all/keys/10000", benchcases.AcquireReleaseCycle(10000))
}

func BenchmarkAcquireReleaseParallel(b *testing.B) { benchcases.AcquireReleaseParallel(b) }

func BenchmarkFirstAcquire(b *testing.B) {
	b.Run("pool", benchcases.FirstAcquire)
	b.Run("net.ListenPacket", benchcases.ListenPacketBaseline)
}

func BenchmarkDatagrams(b *testing.B) {
	for _, msg := range []bool{false, true} {
		api := "ReadFrom-WriteTo"
		if msg {
			api = "ReadMsgUDP-WriteMsgUDP"
		}
		b.Run(api+"/raw", benchcases.Datagrams(false, msg))
		b.Run(api+"/pooled", benchcases.Datagrams(true, msg))
	}
}

func BenchmarkQUICBulk(b *testing.B) {
	for _, v := range []benchcases.Variant{benchcases.Raw, benchcases.Pooled, benchcases.Wrapper} {
		b.Run(string(v), benchcases.QUICBulk(v))
	}
}
