package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/dlq"
	"github.com/postbox-dev/postbox/internal/pgtest"
)

// adminBundle is the admin pages over a database of their own, served by
// an httptest server on loopback.
type adminBundle struct {
	pool *pgxpool.Pool
	srv  *httptest.Server
}

func setupAdmin(t *testing.T, cfg adminConfig) adminBundle {
	t.Helper()
	pool := pgtest.Pool(t, 4)
	cfg.pool = pool
	cfg.log = slog.New(slog.NewTextHandler(t.Output(), nil))
	srv := httptest.NewServer(newAdmin(cfg))
	t.Cleanup(srv.Close)
	return adminBundle{pool: pool, srv: srv}
}

// letter writes a dead letter of subscriber straight into the table.
func (b adminBundle) letter(t *testing.T, subscriber, typ, key, payload, lastError string) uuid.UUID {
	t.Helper()
	id := uuid.Must(uuid.NewV7())
	_, err := b.pool.Exec(context.Background(), `INSERT INTO postbox.dead_letters
		(subscriber, message_id, part, seq, key_hash, attempts, topic, type, key, payload, headers, created_at, last_error, last_error_at)
		VALUES ($1, $2, 0, nextval('postbox.inbox_seq'), 0, 3, 'orders.created', $3, nullif($4, ''), $5,
		        '{"x-original-error": "<b>boom</b>", "correlation-id": "c-1"}', now(), $6, now())`,
		subscriber, id, typ, key, []byte(payload), lastError)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

type response struct {
	code   int
	body   string
	header http.Header
}

func (b adminBundle) do(t *testing.T, req *http.Request) response {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return response{resp.StatusCode, string(body), resp.Header}
}

func (b adminBundle) get(t *testing.T, path string) response {
	t.Helper()
	req, _ := http.NewRequest("GET", b.srv.URL+path, nil)
	return b.do(t, req)
}

// post sends a form as a browser on the page's own origin would.
func (b adminBundle) post(t *testing.T, path string, form url.Values, headers map[string]string) response {
	t.Helper()
	req, _ := http.NewRequest("POST", b.srv.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	req.Header.Set("Origin", b.srv.URL)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	return b.do(t, req)
}

func TestAdminPagesShowEverythingEscaped(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupAdmin(t, adminConfig{})
	if err := dispatcher.DeclareQueue(ctx, b.pool, "billing", dispatcher.Options{MaxAttempts: 4}); err != nil {
		t.Fatal(err)
	}
	if err := dispatcher.Subscribe(ctx, b.pool, dispatcher.Subscription{Subscriber: "audit", Topic: "orders.#", Filter: `$.total > 10`}); err != nil {
		t.Fatal(err)
	}
	id := b.letter(t, "billing", "order.created.v1", "<i>k</i>", `{"note":"<script>alert(1)</script>","n":[1,2]}`, "boom <img src=x onerror=alert(2)>")
	text := b.letter(t, "billing", "text", "", "plain <b>text</b>", "bad")
	bin := b.letter(t, "billing", "binary", "", "\x00\x01\xff<", "bad")

	for _, path := range []string{"/", "/overview.fragment", "/subscribers/billing", "/subscribers/audit", "/dead-letters",
		"/dead-letters?subscriber=billing&type=order.created.v1", "/dead-letters/billing/" + id.String(),
		"/replay?subscriber=billing", "/purge?subscriber=billing", "/static/admin.css", "/static/admin.js", "/nothing-here"} {
		res := b.get(t, path)
		want := 200
		if path == "/nothing-here" {
			want = 404
		}
		if res.code != want {
			t.Errorf("GET %s: %d, want %d\n%s", path, res.code, want, res.body)
		}
		csp := res.header.Get("Content-Security-Policy")
		if !strings.Contains(csp, "frame-ancestors 'none'") || !strings.Contains(csp, "script-src 'self'") ||
			res.header.Get("X-Frame-Options") != "DENY" || res.header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: security headers %v", path, res.header)
		}
		for _, raw := range []string{"<script>alert", "<img src=x", "<i>k</i>", "<b>boom</b>", "<b>text</b>"} {
			if strings.Contains(res.body, raw) {
				t.Errorf("GET %s: %q unescaped in the page", path, raw)
			}
		}
	}

	res := b.get(t, "/dead-letters/billing/"+id.String())
	for _, want := range []string{
		"&#34;note&#34;: &#34;&lt;script&gt;alert(1)&lt;/script&gt;&#34;", // indented JSON, escaped
		"JSON, ", "&lt;b&gt;boom&lt;/b&gt;", "correlation-id", "boom &lt;img src=x onerror=alert(2)&gt;", "&lt;i&gt;k&lt;/i&gt;",
	} {
		if !strings.Contains(res.body, want) {
			t.Errorf("letter page lacks %q", want)
		}
	}
	if !regexp.MustCompile(`(?s)<pre class="payload">\{\n  &#34;note&#34;`).MatchString(res.body) {
		t.Errorf("the JSON payload is not pretty-printed:\n%s", res.body)
	}
	if res := b.get(t, "/dead-letters/billing/"+text.String()); !strings.Contains(res.body, "plain &lt;b&gt;text&lt;/b&gt;") || !strings.Contains(res.body, "text, ") {
		t.Errorf("text payload:\n%s", res.body)
	}
	if res := b.get(t, "/dead-letters/billing/"+bin.String()); !strings.Contains(res.body, "00 01 ff 3c") || !strings.Contains(res.body, "binary, ") {
		t.Errorf("binary payload:\n%s", res.body)
	}
	if res := b.get(t, "/subscribers/audit"); !strings.Contains(res.body, "orders.#") || !strings.Contains(res.body, "&#34;total&#34; &gt; 10") {
		t.Errorf("subscriber page lacks the subscription and its filter:\n%s", res.body)
	}
	if res := b.get(t, "/subscribers/billing"); !strings.Contains(res.body, "Max attempts") || !strings.Contains(res.body, ">4<") {
		t.Errorf("subscriber page lacks the settings:\n%s", res.body)
	}
	if res := b.get(t, "/replay?subscriber=billing&type=text"); !strings.Contains(res.body, `<strong id="count">1</strong>`) {
		t.Errorf("the confirmation does not count one letter:\n%s", res.body)
	}
	if res := b.get(t, "/dead-letters/billing/"+uuid.NewString()); res.code != 404 {
		t.Errorf("a missing letter: %d", res.code)
	}
}

func TestAdminDeadLettersPage(t *testing.T) {
	t.Parallel()
	b := setupAdmin(t, adminConfig{})
	// 120 letters dying in one statement (one dead_at), and one later.
	if _, err := b.pool.Exec(context.Background(), `INSERT INTO postbox.dead_letters
		(subscriber, message_id, part, seq, key_hash, topic, type, payload, created_at, last_error)
		SELECT 'billing', gen_random_uuid(), 0, g, 0, 'orders.created', 't' || (g % 2), '{}', now(), 'err ' || g
		FROM generate_series(1, 120) g`); err != nil {
		t.Fatal(err)
	}
	last := b.letter(t, "shipping", "late", "", "{}", "late one")
	seen := map[string]bool{}
	links := regexp.MustCompile(`/dead-letters/(billing|shipping)/([0-9a-f-]{36})`)
	next := regexp.MustCompile(`href="(/dead-letters\?[^"]*after=[^"]*)"`)
	path, pages := "/dead-letters", 0
	for path != "" {
		res := b.get(t, path)
		if res.code != 200 {
			t.Fatalf("GET %s: %d\n%s", path, res.code, res.body)
		}
		pages++
		for _, m := range links.FindAllStringSubmatch(res.body, -1) {
			if seen[m[2]] {
				t.Errorf("letter %s on two pages", m[2])
			}
			seen[m[2]] = true
		}
		path = ""
		if m := next.FindStringSubmatch(res.body); m != nil {
			path = strings.ReplaceAll(m[1], "&amp;", "&")
		}
	}
	if pages != 3 || len(seen) != 121 || !seen[last.String()] {
		t.Errorf("%d pages showed %d letters, want 3 pages and all 121", pages, len(seen))
	}
	// Filters: subscriber, type, error text, time.
	for query, want := range map[string]int{
		"subscriber=shipping":         1,
		"subscriber=billing&type=t1":  50, // a page of the 60
		"error=late+one":              1,
		"error=err+7&subscriber=bill": 0,
		"since=1h&type=late":          1,
		"until=2000-01-01":            0,
	} {
		t.Run(query, func(t *testing.T) {
			res := b.get(t, "/dead-letters?"+query)
			if n := len(links.FindAllString(res.body, -1)); res.code != 200 || n != want {
				t.Errorf("?%s: %d, %d letters, want %d", query, res.code, n, want)
			}
		})
	}
	if res := b.get(t, "/dead-letters?since=yesterday"); res.code != 400 || !strings.Contains(res.body, "since") {
		t.Errorf("a bad time: %d\n%s", res.code, res.body)
	}
}

func TestAdminReplayAndPurge(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupAdmin(t, adminConfig{})
	if err := dispatcher.DeclareQueue(ctx, b.pool, "billing", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	one := b.letter(t, "billing", "t", "", "{}", "bad")
	two := b.letter(t, "billing", "t", "", "{}", "bad")
	gone := func(id uuid.UUID) bool {
		_, err := dlq.Get(ctx, b.pool, "billing", id)
		return err != nil
	}

	// GET only asks.
	if res := b.get(t, "/replay?subscriber=billing&id="+one.String()); res.code != 200 || gone(one) {
		t.Fatalf("GET /replay changed something or failed: %d", res.code)
	}
	// Another origin's POST is refused, and replays nothing.
	for name, h := range map[string]map[string]string{
		"cross-site":           {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"},
		"same-site other port": {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:1"},
		"no fetch metadata":    {"Sec-Fetch-Site": "", "Origin": "http://evil.example"},
	} {
		t.Run(name, func(t *testing.T) {
			res := b.post(t, "/replay", url.Values{"subscriber": {"billing"}, "id": {one.String()}}, h)
			if res.code != 403 || gone(one) {
				t.Errorf("%s POST: %d, replayed %v; want 403 and nothing replayed", name, res.code, gone(one))
			}
		})
	}
	// The page's own form replays, and says how many.
	res := b.post(t, "/replay", url.Values{"subscriber": {"billing"}, "id": {one.String()}}, nil)
	if res.code != http.StatusSeeOther || !gone(one) || gone(two) {
		t.Fatalf("replay: %d, one gone %v, two gone %v", res.code, gone(one), gone(two))
	}
	if loc := res.header.Get("Location"); !strings.Contains(loc, "replayed=1") {
		t.Errorf("redirect to %q", loc)
	}
	if res := b.get(t, "/subscribers/billing?replayed=1"); !strings.Contains(res.body, "Replayed 1 dead letter.") {
		t.Errorf("no word of the replay")
	}
	if n := pgtest.Count(t, ctx, b.pool, "SELECT count(*) FROM postbox.parked WHERE subscriber = 'billing' AND reason = 'replayed'"); n != 1 {
		t.Errorf("%d parked replayed deliveries, want 1", n)
	}

	// Purge asks for the subscriber's name.
	if res := b.get(t, "/purge?subscriber=billing"); !strings.Contains(res.body, `data-must-equal="billing"`) || !strings.Contains(res.body, `<strong id="count">1</strong>`) {
		t.Errorf("purge confirmation:\n%s", res.body)
	}
	for _, typed := range []string{"", "bill", "Billing"} {
		res := b.post(t, "/purge", url.Values{"subscriber": {"billing"}, "confirm": {typed}}, nil)
		if res.code != 400 || gone(two) || !strings.Contains(res.body, "exactly") {
			t.Errorf("purge with %q typed: %d, purged %v", typed, res.code, gone(two))
		}
	}
	res = b.post(t, "/purge", url.Values{"subscriber": {"billing"}, "confirm": {"billing"}}, nil)
	if res.code != http.StatusSeeOther || !gone(two) || !strings.Contains(res.header.Get("Location"), "purged=1") {
		t.Errorf("purge: %d, purged %v, to %q", res.code, gone(two), res.header.Get("Location"))
	}
	// Only POST changes anything.
	for _, m := range []string{"PUT", "DELETE", "PATCH"} {
		req, _ := http.NewRequest(m, b.srv.URL+"/replay?subscriber=billing", nil)
		if res := b.do(t, req); res.code != http.StatusMethodNotAllowed && res.code != 403 && res.code != 404 {
			t.Errorf("%s /replay: %d", m, res.code)
		}
	}
	if res := b.post(t, "/replay", url.Values{}, nil); res.code != 400 {
		t.Errorf("a replay without a subscriber: %d", res.code)
	}
}

func TestAdminReadOnly(t *testing.T) {
	t.Parallel()
	b := setupAdmin(t, adminConfig{readOnly: true})
	id := b.letter(t, "billing", "t", "", "{}", "bad")
	for _, path := range []string{"/", "/dead-letters?subscriber=billing", "/dead-letters/billing/" + id.String(), "/subscribers/billing"} {
		res := b.get(t, path)
		if res.code != 200 || strings.Contains(res.body, "<form method=\"post\"") || strings.Contains(res.body, "/replay?") ||
			strings.Contains(res.body, "/purge?") || !strings.Contains(res.body, "read-only") {
			t.Errorf("GET %s in read-only mode: %d, or it offers a change:\n%s", path, res.code, res.body)
		}
	}
	if res := b.get(t, "/replay?subscriber=billing"); res.code != 403 {
		t.Errorf("GET /replay: %d, want 403", res.code)
	}
	res := b.post(t, "/replay", url.Values{"subscriber": {"billing"}}, nil)
	if _, err := dlq.Get(context.Background(), b.pool, "billing", id); res.code != 403 || err != nil {
		t.Errorf("POST /replay in read-only mode: %d, letter: %v", res.code, err)
	}
}

func TestAdminAuthAndHosts(t *testing.T) {
	t.Parallel()
	b := setupAdmin(t, adminConfig{auth: adminAuth{token: "t0ken", user: "ops", password: "pa55"}})
	req := func(mod func(*http.Request)) int {
		r, _ := http.NewRequest("GET", b.srv.URL+"/", nil)
		mod(r)
		return b.do(t, r).code
	}
	for name, tc := range map[string]struct {
		mod  func(*http.Request)
		want int
	}{
		"nothing":              {func(*http.Request) {}, 401},
		"bearer token":         {func(r *http.Request) { r.Header.Set("Authorization", "Bearer t0ken") }, 200},
		"wrong bearer token":   {func(r *http.Request) { r.Header.Set("Authorization", "Bearer t0ke") }, 401},
		"basic":                {func(r *http.Request) { r.SetBasicAuth("ops", "pa55") }, 200},
		"basic, wrong user":    {func(r *http.Request) { r.SetBasicAuth("admin", "pa55") }, 401},
		"basic with the token": {func(r *http.Request) { r.SetBasicAuth("anyone", "t0ken") }, 200},
		"basic, wrong":         {func(r *http.Request) { r.SetBasicAuth("ops", "nope") }, 401},
		// With authentication, any host name may be used (a proxy's).
		"other host, authenticated": {func(r *http.Request) { r.Host = "admin.example"; r.SetBasicAuth("ops", "pa55") }, 200},
	} {
		t.Run(name, func(t *testing.T) {
			if got := req(tc.mod); got != tc.want {
				t.Errorf("%s: %d, want %d", name, got, tc.want)
			}
		})
	}
	if res := b.get(t, "/"); res.header.Get("WWW-Authenticate") == "" {
		t.Error("401 without a WWW-Authenticate challenge")
	}

	// Without authentication, only loopback host names are answered: a page
	// whose DNS name was rebound to 127.0.0.1 gets nothing.
	open := setupAdmin(t, adminConfig{})
	for host, want := range map[string]int{"evil.example": 421, "localhost": 200, "127.0.0.1": 200, "[::1]": 200} {
		t.Run(host, func(t *testing.T) {
			r, _ := http.NewRequest("GET", open.srv.URL+"/", nil)
			r.Host = host + ":" + strings.Split(open.srv.Listener.Addr().String(), ":")[1]
			if got := open.do(t, r).code; got != want {
				t.Errorf("Host %s: %d, want %d", host, got, want)
			}
		})
	}
}

func TestAdminAddressNeedsAuthentication(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr string
		env  map[string]string
		ok   bool
	}{
		{"127.0.0.1:8080", nil, true},
		{"[::1]:8080", nil, true},
		{"localhost:8080", nil, true},
		{"0.0.0.0:8080", nil, false},
		{"10.1.2.3:8080", nil, false},
		{"0.0.0.0:8080", map[string]string{envAdminToken: "t"}, true},
		{"0.0.0.0:8080", map[string]string{envAdminPassword: "p"}, true},
		{"0.0.0.0:8080", map[string]string{envAdminUser: "u"}, false}, // a user alone is no password
	} {
		t.Run(fmt.Sprint(tc.addr, " ", tc.env), func(t *testing.T) {
			c := newCLI(io.Discard, io.Discard, func(k string) string { return tc.env[k] })
			_, err := c.adminAuth(tc.addr)
			if (err == nil) != tc.ok {
				t.Errorf("%s with %v: %v", tc.addr, tc.env, err)
			}
		})
	}
	db := []string{"POSTBOX_DATABASE_URL=postgres://postgres@127.0.0.1:1/none"}
	for _, args := range [][]string{
		{"admin", "--http", "0.0.0.0:0"},
		{"admin", "--http", ":nope:"},
		{"relay", "--http", "0.0.0.0:0", "--admin"},
		{"relay", "--admin"},
	} {
		res := run(t, db, args...)
		if res.code != 2 {
			t.Errorf("%v: exit %d, want 2\n%s", args, res.code, res.stderr)
		}
	}
	if res := run(t, db, "admin", "--http", "0.0.0.0:0"); !strings.Contains(res.stderr, envAdminToken) {
		t.Errorf("the refusal does not say how to authenticate:\n%s", res.stderr)
	}
}

// The binary serves the pages, on its own and under a relay's /admin/.
func TestAdminServedByTheBinary(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.URL(t)
	pool := openPool(t, url)
	subscribe(t, pool, "order.created", "billing")
	publish(t, pool, "order.created", 3)

	admin := start(t, url, "admin", "--http", "127.0.0.1:0", "--log-format", "json")
	base := "http://" + admin.waitLog(t, "http listening", "addr")
	if code, body := get(t, base+"/"); code != 200 || !strings.Contains(body, "billing") || !strings.Contains(body, "runs without a relay") {
		t.Errorf("postbox admin: GET /: %d\n%s", code, body)
	}

	relay := start(t, url, "relay", "--http", "127.0.0.1:0", "--admin", "--log-format", "json")
	base = "http://" + relay.waitLog(t, "http listening", "addr")
	pgtest.WaitFor(t, ctx, 10*time.Second, "the relay to move the messages", func() bool {
		return pgtest.Count(t, ctx, pool, "SELECT count(*) FROM postbox.outbox") == 0
	})
	code, body := get(t, base+"/admin/")
	if code != 200 || !strings.Contains(body, "since its last successful batch") || !strings.Contains(body, `href="/admin/subscribers/billing"`) {
		t.Errorf("relay --admin: GET /admin/: %d\n%s", code, body)
	}
	if code, _ := get(t, base+"/admin/static/admin.css"); code != 200 {
		t.Errorf("relay --admin: stylesheet %d", code)
	}
	if code, _ := get(t, base+"/metrics"); code != 200 {
		t.Errorf("relay --admin: /metrics %d", code)
	}
	fmt.Fprint(io.Discard, body)
}
