// Package scattergather is the Scatter-Gather pattern on postbox: one
// request goes to several recipients (a list of queues, or a topic's
// subscribers), and their replies are gathered, by package aggregate, into
// one result that is published when all replies are in or, at the
// timeout, with those that came.
//
//	sg, err := scattergather.New(scattergather.Config{
//		Name:    "quotes",
//		Timeout: 2 * time.Second,
//		Build: func(a *aggregate.Aggregate) (*postbox.Message, error) {
//			return combineQuotes(a.Key, a.Parts, a.TimedOut) // one part per replier
//		},
//	})
//	sg.Declare(ctx, pool, dispatcher.Options{})                  // the reply queue
//	c, _ := inbox.NewConsumer(pool, inbox.Config{Subscriber: sg.ReplyQueue(), Handler: sg})
//	go c.Run(ctx)
//	go sg.Run(ctx, pool)                                         // fires the timeouts
//
//	// in the business transaction:
//	key, err := sg.Scatter(ctx, tx, &postbox.Message{Type: "quote.request.v1", Payload: order},
//		scattergather.Recipients{Queues: []string{"inventory", "payment", "shipping"}})
//
// Recipients are ordinary inbox handlers that answer with reqreply.Reply.
//
// Guarantees: the requests and the gather's opening commit with the
// caller's transaction; each recipient's reply is written with its
// handler's effects, exactly once (reqreply); each reply counts once per
// replier, whatever the order or the duplicates; and the result is
// published exactly once, in the transaction that gathers the last reply
// or in the sweep that times the gather out (aggregate). Replies after
// completion are late: counted and dropped, or handed to Config.Late.
// The gathering state is in PostgreSQL, so any number of processes may
// consume the reply queue and sweep.
package scattergather
