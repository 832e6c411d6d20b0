// Package benchkit is what postbox's benchmark programs share, so that they
// measure the same way and print the same RESULT line: postbox bench
// (internal/bench, inside the core module) and the River peers (bench/peers,
// a module of its own so that the library never depends on River).
//
// A program is a list of named workloads (Program, Workload). Program.Run
// parses the flags every workload takes (--database-url, else
// $DATABASE_URL, read only after parsing so that -h never prints it;
// --cpuprofile, --progress, --force), refuses a database whose name contains
// neither "bench" nor "test" unless --force is given, opens the Env the
// workload runs against and prints the workload's Result as one line on
// stdout:
//
//	RESULT workload=<name> msgs=<n> seconds=<s> rate=<msgs/s> [p50_ms=<x> p99_ms=<y>] [baseline_rate=<r> ratio=<rate/baseline_rate>] [key=value ...]
//
// Progress goes to stderr. Main runs a program as a command, with every
// password it can see masked in what it prints.
//
// The loads (ClosedLoop, OpenLoop), the comparison with a hand-written SQL
// baseline run in the same process (CompareFlags), the order message every
// workload sends (NewMessage) and its raw outbox row (RawRow), and the
// programs' own tables (Tables) are here too, so that postbox and its peers
// are measured with the same code.
package benchkit
