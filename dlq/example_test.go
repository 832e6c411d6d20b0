package dlq_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/dlq"
)

// Replaying the last hour's timeouts of one subscriber, with a dry run
// first. It needs a database, so it is compiled but not run.
func ExampleReplay() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://postgres@127.0.0.1:5432/app")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	// Until is fixed at the start, so a letter that dies again while the
	// loop below runs is not replayed again by it.
	start := time.Now()
	f := dlq.Filter{
		Subscriber:    "inventory",
		ErrorContains: "timeout",
		Since:         start.Add(-time.Hour),
		Until:         start,
		Limit:         1000,
	}
	letters, err := dlq.List(ctx, pool, f)
	if err != nil {
		log.Fatal(err)
	}
	for _, d := range letters {
		fmt.Println(d.MessageID, d.Type, d.Attempts, d.LastError)
	}
	n, err := dlq.Count(ctx, pool, f)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("would replay", n)
	for {
		n, err := dlq.Replay(ctx, pool, f)
		if err != nil {
			log.Fatal(err)
		}
		if n == 0 {
			break
		}
		fmt.Println("replayed", n)
	}
}
