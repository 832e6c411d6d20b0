// Package bench runs the named postbox workloads used to measure the library
// against plain SQL and against other job queues. It is the implementation of
// `postbox bench`.
package bench

import (
	"context"
	"errors"
	"io"
)

// Run executes one benchmark workload. args are the command-line arguments
// after `postbox bench`: the workload name followed by its flags. The single
// RESULT line is written to stdout, progress to stderr.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("bench: not implemented yet")
}
