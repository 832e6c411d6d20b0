package murmur2

import "testing"

// Expected values come from Kafka's own test suite
// (UtilsTest.testMurmur2) and from its default partitioner.
func TestSum32MatchesKafka(t *testing.T) {
	cases := map[string]int32{
		"21":                         -973932308,
		"foobar":                     -790332482,
		"a-little-bit-long-string":   -985981536,
		"a-little-bit-longer-string": -1486304829,
		"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
		"abc": 479470107,
	}
	for in, want := range cases {
		t.Run(in, func(t *testing.T) {
			if got := int32(Sum32([]byte(in))); got != want {
				t.Errorf("Sum32(%q) = %d, want %d", in, got, want)
			}
		})
	}
}

func TestPartitionIsStableAndInRange(t *testing.T) {
	for _, key := range []string{"", "a", "order-1", "order-2", "ß"} {
		p := Partition([]byte(key), 12)
		if p < 0 || p >= 12 {
			t.Fatalf("Partition(%q, 12) = %d, out of range", key, p)
		}
		if again := Partition([]byte(key), 12); again != p {
			t.Fatalf("Partition(%q) not stable: %d then %d", key, p, again)
		}
	}
}
