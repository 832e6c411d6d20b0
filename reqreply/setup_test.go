package reqreply_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/relay"
	"github.com/postbox-dev/postbox/reqreply"
)

// The test binary is also the child processes of the multi-process tests:
// with roleEnv set it plays that role instead of running tests.
const (
	roleEnv = "REQREPLY_TEST_ROLE"
	urlEnv  = "REQREPLY_TEST_DATABASE_URL"
	tagEnv  = "REQREPLY_TEST_TAG"
)

func TestMain(m *testing.M) {
	if role := os.Getenv(roleEnv); role != "" {
		os.Exit(child(role))
	}
	os.Exit(m.Run())
}

// echoQueue is the replier's queue in every test.
const echoQueue = "echo"

type echoRequest struct {
	From  string `json:"from"`
	N     int    `json:"n"`
	Crash bool   `json:"crash,omitempty"`
}

type echoReply struct {
	Echo echoRequest `json:"echo"`
}

const tablesSQL = `
CREATE TABLE echo_effects (request_id uuid NOT NULL, n integer NOT NULL);
CREATE TABLE replies_seen (reply_id uuid NOT NULL, correlation_id text NOT NULL, causation_id text NOT NULL,
                           handled_by text NOT NULL, payload text NOT NULL);`

// echo is the replier: it writes an effect and replies with the request,
// in one transaction. In a replier child process, a request marked crash
// is answered, then the handler announces itself on stdout and hangs
// until the process is killed.
func echo(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
	req, err := postbox.Decode[echoRequest](d.Payload)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO echo_effects (request_id, n) VALUES ($1, $2)`, d.ID, req.N); err != nil {
		return err
	}
	payload, err := postbox.JSON(echoReply{Echo: req})
	if err != nil {
		return err
	}
	if err := reqreply.Reply(ctx, tx, d, &postbox.Message{Type: "echo.reply.v1", Payload: payload}); err != nil {
		return err
	}
	if req.Crash && os.Getenv(roleEnv) == "replier" {
		fmt.Printf("in-handler %s\n", d.ID)
		select {} // killed here, with the transaction open
	}
	return nil
}

// recordReplies is a Requester's Handler: it records each reply it gets in
// replies_seen, in the reply's transaction.
func recordReplies(by string) inbox.Handler {
	return inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		_, err := tx.Exec(ctx, `INSERT INTO replies_seen (reply_id, correlation_id, causation_id, handled_by, payload)
			VALUES ($1, $2, $3, $4, $5)`, d.ID, d.Headers[postbox.HeaderCorrelationID],
			d.Headers[postbox.HeaderCausationID], by, string(d.Payload))
		return err
	})
}

// bundle is what a test works with: a database with the echo queue and
// tables, and a relay running on it.
type bundle struct {
	url  string
	pool *pgxpool.Pool
	ctx  context.Context
}

func setup(t *testing.T) *bundle {
	t.Helper()
	url := pgtest.URL(t)
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 12
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	if _, err := pool.Exec(ctx, tablesSQL); err != nil {
		t.Fatal(err)
	}
	if err := dispatcher.DeclareQueue(ctx, pool, echoQueue, dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	b := &bundle{url: url, pool: pool, ctx: ctx}
	r, err := relay.New(pool, relay.Config{PollInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	b.goRun(t, r.Run)
	return b
}

// goRun runs run until the test ends, and waits for it to return.
func (b *bundle) goRun(t *testing.T, run func(context.Context) error) context.CancelFunc {
	t.Helper()
	ctx, cancel := context.WithCancel(b.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := run(ctx); err != nil && ctx.Err() == nil {
			t.Errorf("run: %v", err)
		}
	}()
	stop := sync.OnceFunc(func() { cancel(); <-done })
	t.Cleanup(stop)
	return stop
}

// startReplier runs a consumer of the echo queue.
func (b *bundle) startReplier(t *testing.T) {
	t.Helper()
	c, err := inbox.NewConsumer(b.pool, inbox.Config{Subscriber: echoQueue, Handler: inbox.HandlerFunc(echo),
		PollInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	b.goRun(t, c.Run)
}

// startRequester runs a Requester until the test ends (or stop).
func (b *bundle) startRequester(t *testing.T, pool *pgxpool.Pool, cfg reqreply.Config) (*reqreply.Requester, context.CancelFunc) {
	t.Helper()
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 5 * time.Millisecond
	}
	if cfg.SweepInterval == 0 {
		cfg.SweepInterval = -1 // the tests sweep by hand
	}
	r, err := reqreply.NewRequester(pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r, b.goRun(t, r.Run)
}

func (b *bundle) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	return pgtest.Count(t, b.ctx, b.pool, sql, args...)
}

func decodeReply(t *testing.T, d *inbox.Delivery) echoRequest {
	t.Helper()
	r, err := postbox.Decode[echoReply](d.Payload)
	if err != nil {
		t.Fatalf("reply %s: %v", d.ID, err)
	}
	return r.Echo
}

// process is a child process of the test binary in some role.
type process struct {
	cmd    *exec.Cmd
	lines  chan string // stdout, line by line
	stderr lockedBuffer
	done   chan struct{} // closed once the process has exited
	err    error         // Wait's result, once done
}

func spawn(t *testing.T, role, url, tag string) *process {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"="+role, urlEnv+"="+url, tagEnv+"="+tag)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, lines: make(chan string, 64), done: make(chan struct{})}
	cmd.Stderr = &p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		io.Copy(io.Discard, stdout)
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
	})
	return p
}

// lockedBuffer is a strings.Builder that exec's copying goroutine and the
// test may use at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// line waits for the process's next stdout line.
func (p *process) line(t *testing.T, limit time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			t.Fatalf("child exited without the line awaited; stderr:\n%s", p.stderr.String())
		}
		return l
	case <-time.After(limit):
		t.Fatalf("no line from the child after %s; stderr:\n%s", limit, p.stderr.String())
	}
	return ""
}

// childRequests is how many concurrent requests a requester child sends.
const childRequests = 60

// child plays a role in a child process and returns its exit status.
func child(role string) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := pgxpool.New(ctx, os.Getenv(urlEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer pool.Close()
	switch role {
	case "requester":
		err = requesterChild(ctx, pool, os.Getenv(tagEnv))
	case "replier":
		var c *inbox.Consumer
		c, err = inbox.NewConsumer(pool, inbox.Config{Subscriber: echoQueue, Handler: inbox.HandlerFunc(echo),
			PollInterval: 5 * time.Millisecond, Concurrency: 1})
		if err == nil {
			fmt.Println("ready")
			err = c.Run(ctx)
		}
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// requesterChild sends childRequests requests at once and checks that each
// reply is its own.
func requesterChild(ctx context.Context, pool *pgxpool.Pool, tag string) error {
	r, err := reqreply.NewRequester(pool, reqreply.Config{Name: "pair", Timeout: 30 * time.Second,
		PollInterval: 5 * time.Millisecond, SweepInterval: -1})
	if err != nil {
		return err
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	var wg sync.WaitGroup
	errs := make(chan error, childRequests)
	for i := range childRequests {
		wg.Go(func() {
			payload, _ := postbox.JSON(echoRequest{From: tag, N: i})
			msg := &postbox.Message{Topic: echoQueue, Key: fmt.Sprintf("%s-%d", tag, i%7), Payload: payload}
			d, err := r.Request(ctx, msg)
			if err != nil {
				errs <- err
				return
			}
			got, err := postbox.Decode[echoReply](d.Payload)
			if err != nil {
				errs <- err
				return
			}
			switch {
			case got.Echo.From != tag || got.Echo.N != i:
				errs <- fmt.Errorf("request %s/%d got the reply %+v", tag, i, got.Echo)
			case d.Headers[postbox.HeaderCorrelationID] != msg.ID.String() || d.ID != reqreply.ReplyID(msg.ID, echoQueue):
				errs <- fmt.Errorf("request %s got reply %s with correlation-id %s", msg.ID, d.ID, d.Headers[postbox.HeaderCorrelationID])
			}
		})
	}
	wg.Wait()
	stop()
	close(errs)
	for err := range errs {
		return err
	}
	if err := <-done; err != nil {
		return err
	}
	fmt.Printf("ok %d %s\n", childRequests, r.ReplyQueue())
	return nil
}
