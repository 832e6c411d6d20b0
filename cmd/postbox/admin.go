package main

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/relay"
)

// The admin pages' templates, stylesheet and script, in the binary.
//
//go:embed adminui
var adminFS embed.FS

// Environment variables that turn on the admin pages' authentication. Never
// flags: a flag's value shows in ps and in shell history.
const (
	envAdminToken    = "POSTBOX_ADMIN_TOKEN"    // a bearer token, or the password of basic auth with any user name
	envAdminUser     = "POSTBOX_ADMIN_USER"     // basic auth user name (default "admin")
	envAdminPassword = "POSTBOX_ADMIN_PASSWORD" // basic auth password
)

const adminHelp = `
Serve the admin web pages until SIGTERM or SIGINT: an overview of every
subscriber (ready, in backoff, delayed, blocked and dead deliveries, lag,
handled per minute) and of the outbox, refreshed in place; a page per
subscriber with its settings, subscriptions and the keys whose head is
failing; the dead letters, filtered and paged, each with its headers and its
payload (pretty-printed when it is JSON); and replay and purge of a selection,
each after a confirmation page that says how many letters it will touch
(purge asks to type the subscriber's name).

Security: --http defaults to 127.0.0.1:8080 and a bare ":PORT" listens on
loopback only. Any other address requires authentication from the
environment (never a flag): ` + envAdminToken + ` (a bearer token, also
accepted as the basic auth password) or ` + envAdminPassword + ` (basic auth,
user ` + envAdminUser + `, default "admin"); when set they are required on
loopback too. Without them, only requests naming a loopback host are
answered (no DNS rebinding). Changes are POST only and refused from other
origins (Go's http.CrossOriginProtection); --read-only refuses them all.
Every page is served with a Content-Security-Policy (frame-ancestors 'none')
and everything from messages is HTML-escaped.

The same pages are served by 'postbox relay --http ADDR --admin' under
/admin/.`

// adminFlags are the flags that turn on and restrict the admin pages.
type adminFlags struct {
	on, readOnly bool
}

// register adds the flags: onName (empty: none, the pages are the
// command) and readOnlyName.
func (a *adminFlags) register(f *flags, onName, onHelp string) {
	readOnly := "read-only"
	if onName != "" {
		f.BoolVar(&a.on, onName, false, onHelp)
		readOnly = onName + "-read-only"
	}
	f.BoolVar(&a.readOnly, readOnly, false, "admin pages show everything and change nothing: no replay, no purge")
}

// adminAuth is the authentication the environment asks for; zero: none.
type adminAuth struct {
	token, user, password string
}

func (a adminAuth) enabled() bool { return a.token != "" || a.password != "" }

// adminAuth reads the authentication from the environment and checks that
// addr may be served with it: an address that is not loopback needs some.
// The secrets are registered with the stderr redactor.
func (c *cli) adminAuth(addr string) (adminAuth, error) {
	a := adminAuth{token: c.getenv(envAdminToken), user: c.getenv(envAdminUser), password: c.getenv(envAdminPassword)}
	if a.user == "" {
		a.user = "admin"
	}
	c.stderr.Add(a.token)
	c.stderr.Add(a.password)
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return a, err
	}
	if !a.enabled() && !isLoopback(host) {
		return a, fmt.Errorf("%s is not a loopback address: set %s or %s in the environment to require authentication",
			addr, envAdminToken, envAdminPassword)
	}
	return a, nil
}

// isLoopback reports whether host names the loopback interface.
func isLoopback(host string) bool {
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// allows reports whether r carries the credentials.
func (a adminAuth) allows(r *http.Request) bool {
	if !a.enabled() {
		return true
	}
	if h, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && a.token != "" {
		return same(h, a.token)
	}
	user, pass, ok := r.BasicAuth()
	switch {
	case !ok:
		return false
	case a.password != "" && same(user, a.user) && same(pass, a.password):
		return true
	case a.token != "" && same(pass, a.token):
		return true
	}
	return false
}

// same compares secrets in constant time, whatever their lengths.
func same(a, b string) bool {
	x, y := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(x[:], y[:]) == 1
}

func (c *cli) admin(ctx context.Context, args []string) error {
	f := newFlags("admin", "postbox admin [--http ADDR] [flags]", adminHelp)
	g := f.common()
	httpAddr := f.String("http", "127.0.0.1:8080", "serve the admin pages on `ADDR`")
	var adm adminFlags
	adm.register(f, "", "")
	pos, err := f.parse(c.stdout, args)
	if err != nil {
		return err
	}
	if err := f.noArgs(pos); err != nil {
		return err
	}
	log, err := c.logger(f, g)
	if err != nil {
		return err
	}
	addr, err := loopbackDefault(*httpAddr)
	if err != nil || addr == "" {
		return f.usageErr("--http %q: want HOST:PORT", *httpAddr)
	}
	auth, err := c.adminAuth(addr)
	if err != nil {
		return f.usageErr("--http: %v", err)
	}
	// Connections: page requests, a few at a time.
	pool, err := c.open(ctx, f, g, poolOptions{app: "postbox-admin", maxConns: 4})
	if err != nil {
		return err
	}
	defer closePool(pool, log)
	if err := checkSchema(ctx, pool); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("http: %w", err)
	}
	srv := newHTTPServer(newAdmin(adminConfig{pool: pool, readOnly: adm.readOnly, auth: auth, log: log}))
	log.Info("http listening", "addr", ln.Addr().String(), "read_only", adm.readOnly, "auth", auth.enabled())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("http: %w", err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		srv.Close()
	}
	log.Info("stopped")
	return nil
}

// adminConfig configures the admin pages.
type adminConfig struct {
	pool     *pgxpool.Pool
	base     string // path prefix the pages are mounted under ("" or "/admin")
	readOnly bool
	auth     adminAuth
	relay    *relay.Relay // the relay of this process, if any
	log      *slog.Logger
}

// adminUI serves the admin pages.
type adminUI struct {
	adminConfig
	pages map[string]*template.Template
}

// adminCSP allows only the pages' own stylesheet and script, no framing,
// and forms posted only to the pages themselves.
const adminCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

// newAdmin returns the admin pages' handler with every protection in
// front: security headers, the loopback Host check (without
// authentication), authentication, cross-origin protection and the
// read-only mode.
func newAdmin(cfg adminConfig) http.Handler {
	a := &adminUI{adminConfig: cfg, pages: map[string]*template.Template{}}
	for _, name := range []string{"overview", "subscriber", "letters", "letter", "confirm", "error"} {
		a.pages[name] = template.Must(template.New(name).Funcs(adminFuncs).ParseFS(adminFS,
			"adminui/layout.html", "adminui/"+name+".html"))
	}
	static, err := fs.Sub(adminFS, "adminui")
	if err != nil {
		panic(err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /static/", http.StripPrefix("/static/", staticFiles(static)))
	mux.HandleFunc("GET /{$}", a.overview)
	mux.HandleFunc("GET /overview.fragment", a.overviewFragment)
	mux.HandleFunc("GET /subscribers/{name}", a.subscriber)
	mux.HandleFunc("GET /dead-letters", a.letters)
	mux.HandleFunc("GET /dead-letters/{subscriber}/{id}", a.letter)
	mux.HandleFunc("GET /replay", a.confirm("replay"))
	mux.HandleFunc("GET /purge", a.confirm("purge"))
	mux.HandleFunc("POST /replay", a.change("replay"))
	mux.HandleFunc("POST /purge", a.change("purge"))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		a.fail(w, r, http.StatusNotFound, "No such page.")
	})

	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.log.Warn("admin: cross-origin request refused", "method", r.Method, "path", r.URL.Path,
			"origin", r.Header.Get("Origin"), "sec_fetch_site", r.Header.Get("Sec-Fetch-Site"))
		a.fail(w, r, http.StatusForbidden, "Cross-origin request refused: changes are accepted only from these pages.")
	}))
	var h http.Handler = cop.Handler(a.readOnlyGuard(mux))
	h = a.authenticate(h)
	return a.secure(h)
}

// staticFiles serves the embedded stylesheet and script, nothing else.
func staticFiles(files fs.FS) http.Handler {
	fileServer := http.FileServerFS(files)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "admin.css" && r.URL.Path != "admin.js" {
			http.NotFound(w, r)
			return
		}
		fileServer.ServeHTTP(w, r)
	})
}

// secure sets the security headers of every response and, without
// authentication, answers only requests that name a loopback host: a page
// elsewhere cannot reach the admin through a DNS name rebound to 127.0.0.1.
func (a *adminUI) secure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", adminCSP)
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		h.Set("Cache-Control", "no-store")
		if !a.auth.enabled() {
			host, _, err := net.SplitHostPort(r.Host)
			if err != nil {
				host = r.Host
			}
			if !isLoopback(host) {
				a.fail(w, r, http.StatusMisdirectedRequest, "These pages answer only to a loopback host name (127.0.0.1, localhost).")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func (a *adminUI) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.auth.allows(r) {
			w.Header().Set("WWW-Authenticate", `Basic realm="postbox admin", charset="UTF-8"`)
			a.fail(w, r, http.StatusUnauthorized, "Authentication required.")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// readOnlyGuard refuses every request that is not GET or HEAD in read-only
// mode.
func (a *adminUI) readOnlyGuard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.readOnly && r.Method != http.MethodGet && r.Method != http.MethodHead {
			a.fail(w, r, http.StatusForbidden, "These pages are read-only (--read-only): nothing can be changed here.")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// page is what every template gets.
type page struct {
	Base     string
	Title    string
	Nav      string
	ReadOnly bool
	Flash    string
	Data     any
}

func (a *adminUI) render(w http.ResponseWriter, status int, name string, p page) {
	p.Base, p.ReadOnly = a.base, a.readOnly
	var buf strings.Builder
	if err := a.pages[name].ExecuteTemplate(&buf, "layout", p); err != nil {
		a.log.Error("admin: render", "page", name, "err", err)
		http.Error(w, "rendering the page failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	fmt.Fprint(w, buf.String())
}

// fail renders an error page.
func (a *adminUI) fail(w http.ResponseWriter, r *http.Request, status int, msg string) {
	a.render(w, status, "error", page{Title: http.StatusText(status), Data: struct {
		Status              int
		StatusText, Message string
	}{status, http.StatusText(status), msg}})
}

// failErr renders an error page for err: a timeout or the database.
func (a *adminUI) failErr(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, context.DeadlineExceeded) {
		a.fail(w, r, http.StatusGatewayTimeout, "The database did not answer in time.")
		return
	}
	a.log.Error("admin: request failed", "path", r.URL.Path, "err", err)
	a.fail(w, r, http.StatusInternalServerError, err.Error())
}
