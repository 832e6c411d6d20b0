package inbox

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
)

// settings are the subscriber's settings a consumer acts on, read from
// postbox.subscribers so that every consumer process, the binary and plain
// SQL agree on them.
type settings struct {
	maxAttempts int
	backoff     dispatcher.Backoff
	partitions  int  // Delivery.Partition = key hash mod this
	parkOnDead  bool // KeyOnDead is KeyParks
}

// maxSteps bounds the work of computing one wait.
const maxSteps = 100

// delay is the wait before the attempt after the given failed one:
// exponential with jitter (randomization 0.5), capped at backoff.Max.
func (s settings) delay(failedAttempt int) time.Duration {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(s.backoff.Initial),
		backoff.WithMultiplier(s.backoff.Multiplier),
		backoff.WithMaxInterval(s.backoff.Max),
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

// settingsTTL is how long settings are used before being read again.
const settingsTTL = time.Minute

// settingsCache reads a subscriber's settings at most once per settingsTTL.
type settingsCache struct {
	mu       sync.Mutex
	current  *settings
	loadedAt time.Time
}

// get returns the subscriber's settings. If a re-read fails, the settings
// already known stay in use and the error only goes to warn.
func (c *settingsCache) get(ctx context.Context, db postbox.DBTX, subscriber string, warn func(error)) (settings, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.current != nil && time.Since(c.loadedAt) < settingsTTL {
		return *c.current, nil
	}
	sub, err := dispatcher.GetSubscriber(ctx, db, subscriber)
	if err != nil {
		if c.current != nil {
			warn(err)
			return *c.current, nil
		}
		return settings{}, fmt.Errorf("inbox: load subscriber %s: %w", subscriber, err)
	}
	c.current = &settings{
		maxAttempts: sub.Options.MaxAttempts,
		backoff:     sub.Options.Backoff,
		partitions:  sub.Options.Partitions,
		parkOnDead:  sub.Options.KeyOnDead == dispatcher.KeyParks,
	}
	c.loadedAt = time.Now()
	return *c.current, nil
}
