// Command postbox-bench runs the postbox benchmark workloads, the same as
// `postbox bench`, for measuring without the full binary:
//
//	go run ./internal/bench/cmd/postbox-bench drain --n 100000
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/postbox-dev/postbox/internal/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := bench.Run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
