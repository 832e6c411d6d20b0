// Command postbox-bench runs the postbox benchmark workloads, the same as
// `postbox bench`, for measuring without the full binary:
//
//	go run ./internal/bench/cmd/postbox-bench drain --n 100000
//
// As postbox itself, it never prints a password (see benchkit.Main).
package main

import (
	"github.com/postbox-dev/postbox/internal/bench"
	"github.com/postbox-dev/postbox/internal/benchkit"
)

func main() { benchkit.Main(bench.Run) }
