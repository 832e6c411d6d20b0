package admintest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/dlq"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

// binary is the postbox binary built for this test run; browser the
// chromium found on the PATH.
var binary, browser string

func TestMain(m *testing.M) {
	os.Exit(setupAndRun(m))
}

func setupAndRun(m *testing.M) int {
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			browser = p
			break
		}
	}
	dir, err := os.MkdirTemp("", "postbox-admintest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "postbox")
	build := exec.Command("go", "build", "-o", binary, "github.com/postbox-dev/postbox/cmd/postbox")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "building the postbox binary: %v\n", err)
		return 1
	}
	return m.Run()
}

// newBrowser starts headless chromium with a profile of its own and
// nothing that reaches out to the network.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	if browser == "" {
		t.Fatal("no chromium on the PATH: install Debian's (apt-get update && apt-get install -y chromium); .ci/run does")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(browser),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 860),
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancelCtx(); cancelAlloc() })
	// The first call starts the browser, which lives as long as its context:
	// no timeout on this one (each step below has its own).
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting %s: %v", browser, err)
	}
	return ctx
}

// startAdmin runs `postbox admin` on a free loopback port and returns its
// base URL.
func startAdmin(t *testing.T, url string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, binary, "admin", "--http", "127.0.0.1:0", "--log-format", "json")
	cmd.Env = append(os.Environ(), "POSTBOX_DATABASE_URL="+url)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	addr := make(chan string, 1)
	var logged strings.Builder
	var mu sync.Mutex
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			mu.Lock()
			logged.WriteString(sc.Text() + "\n")
			mu.Unlock()
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == "http listening" {
				addr <- fmt.Sprint(rec["addr"])
			}
		}
	}()
	select {
	case a := <-addr:
		return "http://" + a
	case <-time.After(20 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("postbox admin did not start:\n%s", logged.String())
		return ""
	}
}

// shop is a queue "billing" whose consumer rejects orders marked
// "fail" as invalid until the fix is deployed (fixed), with two dead
// letters of two types, and a topic subscriber with a backlog.
type shop struct {
	pool          *pgxpool.Pool
	fixed         atomic.Bool
	created, paid postbox.Message
}

func setupShop(t *testing.T, ctx context.Context) (*shop, string) {
	t.Helper()
	url := pgtest.URL(t)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s := &shop{pool: pool}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(dispatcher.DeclareQueue(ctx, pool, "billing", dispatcher.Options{MaxAttempts: 5,
		Backoff: dispatcher.Backoff{Initial: 10 * time.Minute, Max: time.Hour}}))
	must(dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: "analytics", Topic: "orders.#"}))
	must(dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: "fraud-check", Topic: "orders.created",
		Filter: `$.total >= 1000`}))
	s.created = postbox.Message{ID: postbox.NewID(), Topic: "billing", Type: "order.created.v1", Key: "order-1042",
		Headers: map[string]string{postbox.HeaderCorrelationID: "req-7f3a", postbox.HeaderContentType: "application/json"},
		Payload: []byte(`{"order":"order-1042","customer":"c-88","total":1299,"currency":"EUR","fail":true,` +
			`"lines":[{"sku":"KB-01","qty":1},{"sku":"MS-07","qty":2}],"note":"<script>alert('x')</script>"}`)}
	s.paid = postbox.Message{ID: postbox.NewID(), Topic: "billing", Type: "order.paid.v1", Key: "order-1043",
		Payload: []byte(`{"order":"order-1043","fail":true}`)}
	for _, m := range []*postbox.Message{&s.created, &s.paid} {
		must(outbox.Send(ctx, pool, m))
	}
	for range 3 { // the head fails and waits for its retry; the others wait behind it
		must(outbox.Send(ctx, pool, &postbox.Message{Topic: "billing", Type: "order.created.v1", Key: "order-1099",
			Payload: []byte(`{"order":"order-1099","stuck":true}`)}))
	}
	for i := range 6 {
		must(outbox.Send(ctx, pool, &postbox.Message{Topic: "billing", Type: "order.created.v1",
			Key: fmt.Sprintf("order-%d", 1000+i), Payload: fmt.Appendf(nil, `{"order":"order-%d","total":%d}`, 1000+i, 20*i)}))
	}
	for i := range 40 {
		must(outbox.Publish(ctx, pool, &postbox.Message{Topic: "orders.created", Key: fmt.Sprintf("order-%d", 2000+i),
			Payload: fmt.Appendf(nil, `{"order":"order-%d","total":%d}`, 2000+i, 50*i)}))
	}
	r, err := relay.New(pool, relay.Config{})
	must(err)
	_, err = r.Drain(ctx)
	must(err)

	c, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: "billing", PollInterval: 20 * time.Millisecond,
		MaxPollInterval: 100 * time.Millisecond,
		Handler: inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
			if strings.Contains(string(d.Payload), `"fail":true`) && !s.fixed.Load() {
				return postbox.Permanent(errors.New("validate order: currency EUR is not enabled for customer c-88"))
			}
			if strings.Contains(string(d.Payload), `"stuck":true`) {
				return errors.New("reserve stock: warehouse API: dial tcp 10.0.3.7:443: connect: connection refused")
			}
			return nil
		})})
	must(err)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { c.Run(runCtx); close(done) }()
	t.Cleanup(func() { stop(); <-done })
	pgtest.WaitFor(t, ctx, 20*time.Second, "two dead letters and a blocked key", func() bool {
		d := pgtest.Depths(t, ctx, pool, "billing")
		return d.Dead == 2 && d.Waiting == 3 && d.Ready == 0
	})
	return s, url
}

// shoot saves a screenshot of the page as name.png in
// $POSTBOX_ADMIN_SCREENSHOTS, when it is set.
func shoot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := os.Getenv("POSTBOX_ADMIN_SCREENSHOTS")
	if dir == "" {
		return
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Open the overview, filter the dead letters, replay one and see it
// handled; a page of another origin that auto-submits a replay form gets
// 403 and replays nothing.
func TestAdminInABrowser(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, url := setupShop(t, ctx)
	base := startAdmin(t, url)
	b := newBrowser(t)

	// Each step has a deadline of its own; the browser's context has none.
	step := func() (context.Context, context.CancelFunc) { return context.WithTimeout(b, 20*time.Second) }
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		ctx, cancel := step()
		defer cancel()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	text := func(sel string) string {
		t.Helper()
		ctx, cancel := step()
		defer cancel()
		v, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return v
	}
	count := func(sel string) int {
		t.Helper()
		ctx, cancel := step()
		defer cancel()
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](fmt.Sprintf("document.querySelectorAll(%q).length", sel)))
		if err != nil {
			t.Fatalf("count %s: %v", sel, err)
		}
		return n
	}
	disabled := func() bool {
		t.Helper()
		ctx, cancel := step()
		defer cancel()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("document.getElementById('submit').disabled"))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }

	// The overview.
	do("open the overview", chromedp.Navigate(base+"/"), chromedp.WaitVisible(css(`#overview table`)))
	overview := text(`#overview`)
	for _, want := range []string{"billing", "analytics", "fraud-check", "queue", "topic"} {
		if !strings.Contains(overview, want) {
			t.Errorf("the overview lacks %q:\n%s", want, overview)
		}
	}
	shoot(t, b, "admin-overview")

	// The subscriber's page.
	do("open billing", chromedp.Click(css(`a[href="/subscribers/billing"]`)), chromedp.WaitVisible(css(`table.kv`)))
	if page := text(`main`); !strings.Contains(page, "Max attempts") || !strings.Contains(page, "order-1099") ||
		!strings.Contains(page, "connection refused") {
		t.Errorf("billing's page lacks its settings or its blocked key:\n%s", page)
	}
	shoot(t, b, "admin-subscriber")

	// The dead letters, filtered by type.
	do("list the dead letters", chromedp.Click(css(`nav a[href="/dead-letters"]`)), chromedp.WaitVisible(css(`form.filters`)))
	if n := count(`a[href^="/dead-letters/billing/"]`); n != 2 {
		t.Errorf("%d letters listed unfiltered, want 2", n)
	}
	do("filter the dead letters",
		chromedp.SetValue(css(`input[name="subscriber"]`), "billing"),
		chromedp.SetValue(css(`input[name="type"]`), "order.created.v1"),
		chromedp.Submit(css(`form.filters`)),
		chromedp.WaitVisible(css(`input[name="type"][value="order.created.v1"]`)))
	if list := text(`table.grid tbody`); !strings.Contains(list, "order.created.v1") || strings.Contains(list, "order.paid.v1") {
		t.Errorf("filtered by type order.created.v1, the list shows:\n%s", list)
	}
	if n := count(`a[href^="/dead-letters/billing/"]`); n != 1 {
		t.Errorf("%d letters listed, want 1", n)
	}
	shoot(t, b, "admin-dead-letters")

	// The letter, its payload pretty-printed and escaped.
	do("open the letter", chromedp.Click(css(`a[href="/dead-letters/billing/`+s.created.ID.String()+`"]`)),
		chromedp.WaitVisible(css(`pre.payload`)))
	if payload := text(`pre.payload`); !strings.Contains(payload, "\n  \"customer\": \"c-88\"") || !strings.Contains(payload, "<script>alert('x')</script>") {
		t.Errorf("the payload, as shown:\n%s", payload)
	}
	if scripts := count(`script`); scripts != 1 {
		t.Errorf("%d script elements on the letter's page, want only the page's own", scripts)
	}
	shoot(t, b, "admin-letter")

	// Replay it, once the fix is out: a confirmation that counts, then a POST.
	s.fixed.Store(true)
	do("ask to replay", chromedp.Click(css(`a.button[href^="/replay?"]`)), chromedp.WaitVisible(css(`#count`)))
	if n := text(`#count`); n != "1" {
		t.Errorf("the confirmation counts %q letters, want 1", n)
	}
	shoot(t, b, "admin-replay-confirm")
	do("replay", chromedp.Click(css(`#submit`)), chromedp.WaitVisible(css(`p.flash`)))
	if flash := text(`p.flash`); !strings.Contains(flash, "Replayed 1 dead letter.") {
		t.Errorf("after the replay: %q", flash)
	}
	pgtest.WaitFor(t, ctx, 20*time.Second, "the replayed letter to be handled", func() bool {
		return pgtest.Count(t, ctx, s.pool, "SELECT count(*) FROM postbox.processed WHERE subscriber = 'billing' AND message_id = $1",
			s.created.ID) == 1
	})
	// The overview refreshes its figures in place: a new name with a dead
	// letter shows up without a reload.
	do("open the overview again", chromedp.Navigate(base+"/?every=1"), chromedp.WaitVisible(css(`#overview table`)))
	if _, err := chromedp.Run(b, chromedp.Evaluate[int]("window.postboxMarker = 7")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, `INSERT INTO postbox.dead_letters (subscriber, message_id, part, seq, key_hash, topic, payload,
		created_at, last_error) VALUES ('refunds', gen_random_uuid(), 0, 1, 0, 'refunds', '{}', now(), 'no-route')`); err != nil {
		t.Fatal(err)
	}
	pgtest.WaitFor(t, ctx, 10*time.Second, "the overview to show refunds", func() bool {
		return strings.Contains(text(`#overview`), "refunds")
	})
	if marker, err := chromedp.Run(b, chromedp.Evaluate[int]("window.postboxMarker || 0")); err != nil || marker != 7 {
		t.Errorf("the page was reloaded to refresh (marker %d, %v)", marker, err)
	}
	if _, err := dlq.Get(ctx, s.pool, "billing", s.created.ID); !errors.Is(err, dlq.ErrNotFound) {
		t.Errorf("the replayed letter is still dead: %v", err)
	}

	// The purge confirmation asks for the subscriber's name.
	do("ask to purge", chromedp.Navigate(base+"/purge?subscriber=billing"), chromedp.WaitVisible(css(`#submit`)))
	if !disabled() {
		t.Error("the purge button is enabled before the name is typed")
	}
	do("type the name", chromedp.SendKeys(css(`input[name="confirm"]`), "billing"))
	if disabled() {
		t.Error("the purge button stays disabled once the name is typed")
	}
	shoot(t, b, "admin-purge-confirm")

	// Another origin's page that submits a replay form by itself.
	var status atomic.Int64
	if _, err := chromedp.Call(b, network.Enable, network.EnableParams{}); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Listen(b, func(ev any) {
		if r, ok := ev.(*network.EventResponseReceived); ok && strings.HasPrefix(r.Response.URL, base+"/replay") {
			status.Store(r.Response.Status)
		}
	}); err != nil {
		t.Fatal(err)
	}
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `<!doctype html><title>win a prize</title>
<form method="post" action="%s/replay"><input name="subscriber" value="billing"><input name="id" value="%s"></form>
<script>document.forms[0].submit()</script>`, base, s.paid.ID)
	}))
	defer evil.Close()
	do("visit the other origin", chromedp.Navigate(evil.URL), chromedp.WaitVisible(css(`p.flash.bad`)))
	if refusal := text(`p.flash.bad`); !strings.Contains(refusal, "Cross-origin request refused") {
		t.Errorf("the forged replay's page says %q", refusal)
	}
	pgtest.WaitFor(t, ctx, 5*time.Second, "the response status", func() bool { return status.Load() != 0 })
	if got := status.Load(); got != http.StatusForbidden {
		t.Errorf("the forged replay got %d, want 403", got)
	}
	if _, err := dlq.Get(ctx, s.pool, "billing", s.paid.ID); err != nil {
		t.Errorf("the forged replay replayed the letter: %v", err)
	}
	if n := pgtest.Count(t, ctx, s.pool, "SELECT count(*) FROM postbox.replays WHERE message_id = $1", s.paid.ID); n != 0 {
		t.Errorf("%d replays recorded for the forged one", n)
	}
}
