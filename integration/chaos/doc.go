// Package chaos is postbox's reliability suite: relays, consumers and
// producers run as separate processes (the test binary, re-executed in a
// role) against one database while the suite breaks things, and then counts
// what the handlers did.
//
// What breaks:
//   - relay and consumer processes are killed with SIGKILL at random and
//     started again;
//   - pg_terminate_backend storms end every session of the role processes
//     for a while;
//   - producers make some of their commits ambiguous (the connection goes
//     away while COMMIT is under way) and retry them with the same message
//     IDs, so a message can be in the outbox twice and the inbox must drop
//     the second copy;
//   - handlers fail the first attempt of some deliveries, so retries,
//     backoff and the keys blocked behind them are part of the run;
//   - in the long form, a REPEATABLE READ transaction with a transaction ID
//     holds the xmin horizon, from another database of the same cluster,
//     during part of the run, and PostgreSQL itself is restarted (crash and
//     recovery: pg_ctl restart -m immediate).
//
// What is counted: handlers write one effect row per delivery through their
// transaction, and every message carries its key's sequence number. A
// message whose effect is missing is lost, a second effect of one message is
// a duplicate, and an effect that commits after a later message of its key
// had its effect is out of order. The suite fails on any of them, on a
// dead letter, on a role process that exits by itself, and on a run that
// stops making progress (a stall).
//
// The short form runs with every `go test ./...` on the shared test server
// (a database of its own from internal/pgtest; no restart and no pin there,
// so that tests running beside it are not disturbed). The long form,
//
//	POSTBOX_CHAOS=long go test -run TestChaos -v -timeout 30m ./integration/chaos/
//
// runs its own PostgreSQL cluster in a temporary directory (initdb and
// pg_ctl of PostgreSQL 15; as the postgres OS user when run as root), so
// that the restart touches nothing else, and stops it at the end.
//
// The package holds no code besides its tests.
package chaos
