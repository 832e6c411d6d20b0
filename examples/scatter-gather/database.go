package main

import "github.com/postbox-dev/postbox/examples/internal/exampledb"

// exampleDatabase is the only database the example creates, drops and
// writes to. It is dropped and recreated on every run.
const exampleDatabase = "postbox_scatter_gather_example"

// example finds the server and prepares exampleDatabase on it.
var example = exampledb.Example{Program: "scatter-gather", Database: exampleDatabase}
