// Package murmur2 is Kafka's default partitioner hash, so that a partition
// computed by postbox agrees with the one a Kafka producer would pick for the
// same key.
package murmur2

// Sum32 is murmur2 with Kafka's seed, as in
// org.apache.kafka.common.utils.Utils.murmur2.
func Sum32(data []byte) uint32 {
	const (
		seed uint32 = 0x9747b28c
		m    uint32 = 0x5bd1e995
		r           = 24
	)
	n := len(data)
	h := seed ^ uint32(n)
	for i := 0; i+4 <= n; i += 4 {
		k := uint32(data[i]) | uint32(data[i+1])<<8 | uint32(data[i+2])<<16 | uint32(data[i+3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	tail := n &^ 3
	switch n & 3 {
	case 3:
		h ^= uint32(data[tail+2]) << 16
		fallthrough
	case 2:
		h ^= uint32(data[tail+1]) << 8
		fallthrough
	case 1:
		h ^= uint32(data[tail])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}

// Positive is Kafka's toPositive(murmur2(key)): the hash with its sign bit
// cleared, which Kafka takes modulo the partition count.
func Positive(data []byte) int32 {
	return int32(Sum32(data) & 0x7fffffff)
}

// Partition is Kafka's default partition for a key among n partitions.
func Partition(key []byte, n int) int {
	return int(Positive(key)) % n
}
