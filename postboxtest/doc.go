// Package postboxtest helps test code that uses postbox, in the spirit of
// River's rivertest: assertions on what a transaction published, a handler
// run exactly as a consumer runs it, a drain of relay and consumers until
// nothing is left to do, and a throwaway database per test.
//
//	func TestPlaceOrder(t *testing.T) {
//		ctx := context.Background()
//		pool := postboxtest.Pool(t) // a fresh, migrated database
//		tx, _ := pool.Begin(ctx)
//		defer tx.Rollback(ctx)
//
//		placeOrder(ctx, tx, "ord-1") // the code under test publishes through tx
//
//		postboxtest.RequirePublishedTx(ctx, t, tx, postboxtest.Want{
//			Topic: "order.created", Key: "ord-1", Payload: map[string]any{"orderId": "ord-1"}})
//		res := postboxtest.Handle(ctx, t, tx, inventoryHandler, &postbox.Message{
//			Topic: "order.created", Key: "ord-1", Payload: []byte(`{"orderId":"ord-1"}`)}, nil)
//		if res.Err != nil {
//			t.Fatal(res.Err)
//		}
//	}
//
// The Require functions read the outbox through the transaction they are
// given, so they see what it wrote before it commits; the outbox holds a
// message only until a relay moves it. Failures are reported through
// testing.TB, as with the standard library's t.Fatal.
//
// The database helpers use DATABASE_URL, else a server on 127.0.0.1:5432
// as user postgres, and fail the test with a message saying how to provide
// one when neither answers; they never skip. Each database is cloned from
// a template migrated once per schema version and dropped when the test
// ends.
package postboxtest
