package inbox

import (
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/postbox-dev/postbox/dispatcher"
)

// maxSteps bounds the work of computing one wait.
const maxSteps = 100

// retryPolicy is a subscriber's retry settings.
type retryPolicy struct {
	maxAttempts int
	backoff     dispatcher.Backoff
}

// delay is the wait before the attempt after the given failed one:
// exponential with jitter (randomization 0.5), capped at backoff.Max.
func (p retryPolicy) delay(failedAttempt int) time.Duration {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(p.backoff.Initial),
		backoff.WithMultiplier(p.backoff.Multiplier),
		backoff.WithMaxInterval(p.backoff.Max),
		backoff.WithMaxElapsedTime(0),
	)
	// The schedule grows by steps, so the n-th wait takes n steps; past
	// maxSteps it has long reached Max for any multiplier worth using.
	var d time.Duration
	for range min(max(failedAttempt, 1), maxSteps) {
		d = b.NextBackOff()
	}
	return d
}
