package watermill_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	wm "github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/contrib/watermill"
	"github.com/postbox-dev/postbox/relay"
	"github.com/postbox-dev/postbox/schema"
)

// TestReconnect is the suite's TestReconnect, ported: 100 publishers send
// 10,000 messages while the broker is restarted twice (after a third and
// after half of them), and every message must come back. The suite's own
// version races on its list of published messages (appended by one
// goroutine, read by the test with no synchronization: test_pubsub.go
// lines 1086 and 1120 of v1.5.1), so under -race it fails whatever the
// Pub/Sub does; this one keeps that list under a mutex and is otherwise the
// same. It gets a PostgreSQL server of its own (initdb in a temporary
// directory, on a free port), so restarting it disturbs no other test; the
// suite's other tests share the usual server, where a restart is not ours
// to make, so TestPubSub leaves RestartServiceCommand empty.
//
// A publish whose commit reached the server but whose answer was lost is
// retried with the same UUID, and postbox drops the second copy; a batch
// cut by the restart is simply delivered again.
func TestReconnect(t *testing.T) {
	srv := startServer(t)
	ctx := context.Background()
	pool := func(conns int) *pgxpool.Pool { return newPool(t, srv.url, conns) }
	if err := schema.Migrate(ctx, pool(2)); err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(pool(2), relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(rctx) }()
	t.Cleanup(func() { cancel(); <-done })

	const topic, total, publishers = "reconnect", 10_000, 100
	pub := newPublisher(t, pool(20), watermill.PublisherConfig{})
	sub := newSubscriber(t, pool(8), watermill.SubscriberConfig{ConsumerGroup: "reconnect", Options: suiteOptions, Concurrency: 4})
	ch := subscribe(t, sub, topic)
	start := time.Now()

	var (
		mu        sync.Mutex
		published = make(map[string]bool, total)
		restarts  sync.WaitGroup
		pubs      sync.WaitGroup
		work      = make(chan struct{})
		failures  atomic.Int64
	)
	go func() {
		defer close(work)
		for i := range total {
			work <- struct{}{}
			if i == total/3 || i == total/2 {
				restarts.Go(func() { srv.restartNow(t) })
			}
		}
	}()
	for range publishers {
		pubs.Go(func() {
			for range work {
				m := message.NewMessage(wm.NewUUID(), []byte("x"))
				for {
					err := pub.Publish(topic, m)
					if err == nil {
						break
					}
					failures.Add(1)
					time.Sleep(50 * time.Millisecond) // the server is restarting: back off, then retry the same message
				}
				mu.Lock()
				published[m.UUID] = true
				mu.Unlock()
			}
		})
	}
	received := make(map[string]bool, total)
	for len(received) < total {
		select {
		case m := <-ch:
			received[m.UUID] = true
			m.Ack()
		case <-time.After(time.Minute):
			t.Fatalf("%d of %d messages received; none for a minute", len(received), total)
		}
	}
	pubs.Wait()
	restarts.Wait()
	for id := range published {
		if !received[id] {
			t.Errorf("message %s published but not received", id)
		}
	}
	for id := range received {
		if !published[id] {
			t.Errorf("message %s received but never published", id)
		}
	}
	t.Logf("%d messages through 2 restarts in %s (%d failed publish calls retried); relay: %+v",
		total, time.Since(start), failures.Load(), r.Stats())
}

// server is a PostgreSQL server private to one test.
type server struct {
	url     string
	restart []string
}

// startServer initializes a cluster in a temporary directory and starts it
// on a free port of 127.0.0.1, stopped when t ends. The server binaries
// come from PG_BINDIR, else the newest /usr/lib/postgresql/*/bin. The
// server runs as user postgres when the test runs as root (PostgreSQL
// refuses root).
func startServer(t *testing.T) server {
	t.Helper()
	bin := os.Getenv("PG_BINDIR")
	if bin == "" {
		dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
		if len(dirs) > 0 {
			bin = dirs[len(dirs)-1]
		}
	}
	if _, err := os.Stat(filepath.Join(bin, "initdb")); err != nil {
		t.Fatalf("no PostgreSQL server binaries for a private server (set PG_BINDIR to the directory of initdb and pg_ctl): %v", err)
	}
	dir, err := os.MkdirTemp("", "postbox-wm-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var as []string // the command prefix that runs as the server's owner
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root, and there is no user postgres to run a private server as: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		as = []string{"runuser", "-u", "postgres", "--"}
	}
	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command(append(as, args...)[0], append(as, args...)[1:]...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	data := filepath.Join(dir, "data")
	run(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60", port, dir)
	pgctl := filepath.Join(bin, "pg_ctl")
	run(pgctl, "-D", data, "-l", filepath.Join(dir, "log"), "-o", opts, "-w", "start")
	t.Cleanup(func() {
		cmd := exec.Command(append(as, pgctl, "-D", data, "-m", "immediate", "-w", "stop")[0],
			append(as, pgctl, "-D", data, "-m", "immediate", "-w", "stop")[1:]...)
		_ = cmd.Run()
	})
	return server{
		url:     fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port),
		restart: append(as, pgctl, "-D", data, "-l", filepath.Join(dir, "log"), "-o", opts, "-m", "fast", "-w", "restart"),
	}
}

// restartNow restarts the server (fast shutdown: sessions are cut) and
// returns once it accepts connections again.
func (s server) restartNow(t *testing.T) {
	out, err := exec.Command(s.restart[0], s.restart[1:]...).CombinedOutput()
	if err != nil {
		t.Errorf("restart: %v\n%s", err, out)
	}
}
