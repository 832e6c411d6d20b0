package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/dlq"
	"github.com/postbox-dev/postbox/stats"
)

// adminTimeout bounds the database work of one page.
const adminTimeout = 10 * time.Second

// lettersPerPage is the dead letters list's page size.
const lettersPerPage = 50

var adminFuncs = template.FuncMap{
	"age": func(d time.Duration) string { return age(d.Seconds()) },
	"ago": func(now, t time.Time) string { return age(now.Sub(t).Seconds()) },
	"ts":  timestamp,
	"dur": duration,
	"clip": func(s string, n int) string {
		if utf8.RuneCountInString(s) <= n {
			return s
		}
		return string([]rune(s)[:n-1]) + "…"
	},
}

// relayStatus is what the overview shows of the relay in this process.
type relayStatus struct {
	LastSuccess, LastMoved time.Time
}

type overviewData struct {
	stats.Overview
	Base  string
	Cap   int
	Relay *relayStatus
	// Every is how often the page refreshes its figures, in seconds:
	// ?every=N (1 to 60), default 5.
	Every int
}

func (a *adminUI) readOverview(r *http.Request) (overviewData, error) {
	ctx, cancel := context.WithTimeout(r.Context(), adminTimeout)
	defer cancel()
	ov, err := stats.Read(ctx, a.pool)
	if err != nil {
		return overviewData{}, err
	}
	d := overviewData{Overview: ov, Base: a.base, Cap: stats.DefaultCap}
	if a.relay != nil {
		d.Relay = &relayStatus{LastSuccess: a.relay.LastSuccess(), LastMoved: a.relay.LastMoved()}
	}
	return d, nil
}

func (a *adminUI) overview(w http.ResponseWriter, r *http.Request) {
	d, err := a.readOverview(r)
	if err != nil {
		a.failErr(w, r, err)
		return
	}
	d.Every = 5
	if n, err := strconv.Atoi(r.URL.Query().Get("every")); err == nil && n >= 1 && n <= 60 {
		d.Every = n
	}
	a.render(w, http.StatusOK, "overview", page{Title: "Overview", Nav: "overview", Data: d})
}

// overviewFragment is the overview's figures alone, for the script that
// refreshes them in place.
func (a *adminUI) overviewFragment(w http.ResponseWriter, r *http.Request) {
	d, err := a.readOverview(r)
	if err != nil {
		http.Error(w, "the database did not answer", http.StatusServiceUnavailable)
		return
	}
	var buf bytes.Buffer
	if err := a.pages["overview"].ExecuteTemplate(&buf, "overview-figures", d); err != nil {
		a.log.Error("admin: render", "page", "overview-figures", "err", err)
		http.Error(w, "rendering failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Write(buf.Bytes())
}

type subscriberData struct {
	Stats         stats.Subscriber
	Declared      bool
	Settings      dispatcher.Subscriber
	Subscriptions []dispatcher.Subscription
	Blocked       []stats.BlockedKey
}

func (a *adminUI) subscriber(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	ctx, cancel := context.WithTimeout(r.Context(), adminTimeout)
	defer cancel()
	var d subscriberData
	var err error
	if d.Stats, err = stats.Of(ctx, a.pool, name); err != nil {
		a.failErr(w, r, err)
		return
	}
	d.Settings, err = dispatcher.GetSubscriber(ctx, a.pool, name)
	switch {
	case err == nil:
		d.Declared = true
	case errors.Is(err, dispatcher.ErrNotFound), errors.Is(err, postbox.ErrInvalid):
	default:
		a.failErr(w, r, err)
		return
	}
	if d.Declared {
		subs, err := dispatcher.Subscriptions(ctx, a.pool)
		if err != nil {
			a.failErr(w, r, err)
			return
		}
		for _, s := range subs {
			if s.Subscriber == name {
				d.Subscriptions = append(d.Subscriptions, s)
			}
		}
	}
	if d.Blocked, err = stats.BlockedKeys(ctx, a.pool, name, 50); err != nil {
		a.failErr(w, r, err)
		return
	}
	flash := ""
	if n := r.URL.Query().Get("replayed"); n != "" {
		flash = "Replayed " + plural(n, "dead letter") + "."
	}
	a.render(w, http.StatusOK, "subscriber", page{Title: name, Data: d, Flash: flash})
}

func plural(n, what string) string {
	if n == "1" {
		return n + " " + what
	}
	return n + " " + what + "s"
}

// letterForm is the dead letter filter as typed.
type letterForm struct {
	Subscriber, Type, Error, Since, Until string
	IDs                                   []string
}

func readLetterForm(v url.Values) letterForm {
	return letterForm{
		Subscriber: strings.TrimSpace(v.Get("subscriber")), Type: strings.TrimSpace(v.Get("type")),
		Error: v.Get("error"), Since: strings.TrimSpace(v.Get("since")), Until: strings.TrimSpace(v.Get("until")),
		IDs: v["id"],
	}
}

// filter resolves the form against the database's clock.
func (f letterForm) filter(now time.Time) (dlq.Filter, error) {
	out := dlq.Filter{Subscriber: f.Subscriber, Type: f.Type, ErrorContains: f.Error}
	for name, v := range map[string]struct {
		in  string
		out *time.Time
	}{"since": {f.Since, &out.Since}, "until": {f.Until, &out.Until}} {
		if v.in == "" {
			continue
		}
		t, err := parseFormTime(v.in, now)
		if err != nil {
			return out, fmt.Errorf("%s %v", name, err)
		}
		*v.out = t
	}
	for _, s := range f.IDs {
		id, err := uuid.Parse(strings.TrimSpace(s))
		if err != nil {
			return out, fmt.Errorf("id %q is not a message ID", s)
		}
		out.IDs = append(out.IDs, id)
	}
	return out, nil
}

// parseFormTime is parseTime, also taking a browser's datetime-local value
// (2006-01-02T15:04, read as UTC).
func parseFormTime(v string, now time.Time) (time.Time, error) {
	if t, err := time.Parse("2006-01-02T15:04", v); err == nil {
		return t, nil
	}
	return parseTime(v, now)
}

// query is the filter as URL parameters, with absolute times.
func filterQuery(f dlq.Filter) url.Values {
	v := url.Values{}
	set := func(k, s string) {
		if s != "" {
			v.Set(k, s)
		}
	}
	set("subscriber", f.Subscriber)
	set("type", f.Type)
	set("error", f.ErrorContains)
	if !f.Since.IsZero() {
		v.Set("since", f.Since.UTC().Format(time.RFC3339Nano))
	}
	if !f.Until.IsZero() {
		v.Set("until", f.Until.UTC().Format(time.RFC3339Nano))
	}
	for _, id := range f.IDs {
		v.Add("id", id.String())
	}
	return v
}

type lettersData struct {
	Form    letterForm
	Names   []string
	Letters []dlq.DeadLetter
	Problem string
	// Query selects the same letters (absolute times), for replay and
	// purge; First and Next are the first and the next page. Encoded
	// already: the template must not escape them again.
	Query       template.URL
	First, Next template.URL
}

// letters lists dead letters, oldest dead first, a page at a time. A page
// is resumed after (dead_at, how many letters dead at that instant the
// pages so far showed): letters dying in one statement share dead_at, and
// the listing orders them by subscriber and message ID within it.
func (a *adminUI) letters(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), adminTimeout)
	defer cancel()
	q := r.URL.Query()
	d := lettersData{Form: readLetterForm(q)}
	flash := ""
	for key, what := range map[string]string{"replayed": "Replayed", "purged": "Purged"} {
		if n := q.Get(key); n != "" {
			flash = what + " " + plural(n, "dead letter") + "."
		}
	}
	if names, err := stats.Subscribers(ctx, a.pool); err == nil {
		for _, s := range names {
			if s.Dead.N > 0 {
				d.Names = append(d.Names, s.Name)
			}
		}
	}
	now, err := a.now(ctx)
	if err != nil {
		a.failErr(w, r, err)
		return
	}
	f, err := d.Form.filter(now)
	if err != nil {
		d.Problem = err.Error()
		a.render(w, http.StatusBadRequest, "letters", page{Title: "Dead letters", Nav: "letters", Data: d})
		return
	}
	var after time.Time
	skip := 0
	if c := q.Get("after"); c != "" {
		micros, n, ok := strings.Cut(c, ".")
		us, err1 := strconv.ParseInt(micros, 10, 64)
		k, err2 := strconv.Atoi(n)
		if !ok || err1 != nil || err2 != nil || k < 0 || k > dlq.MaxLimit-lettersPerPage-1 {
			a.fail(w, r, http.StatusBadRequest, "That page does not exist.")
			return
		}
		after, skip = time.UnixMicro(us), k
	}
	list := f
	if !after.IsZero() && after.After(list.Since) {
		list.Since = after
	}
	list.Limit = skip + lettersPerPage + 1
	letters, err := dlq.List(ctx, a.pool, list)
	if errors.Is(err, postbox.ErrInvalid) {
		d.Problem = err.Error()
		a.render(w, http.StatusBadRequest, "letters", page{Title: "Dead letters", Nav: "letters", Data: d})
		return
	}
	if err != nil {
		a.failErr(w, r, err)
		return
	}
	if !after.IsZero() {
		letters = letters[min(skip, len(letters)):]
	}
	more := len(letters) > lettersPerPage
	if more {
		letters = letters[:lettersPerPage]
	}
	d.Letters = letters
	base := filterQuery(f)
	d.Query = template.URL(base.Encode())
	if !after.IsZero() {
		d.First = template.URL(base.Encode())
	}
	if more {
		last := letters[len(letters)-1].DeadAt
		n := 0
		for _, l := range letters {
			if l.DeadAt.Equal(last) {
				n++
			}
		}
		if last.Equal(after) {
			n += skip
		}
		next := maps.Clone(base)
		next.Set("after", fmt.Sprintf("%d.%d", last.UnixMicro(), n))
		d.Next = template.URL(next.Encode())
	}
	a.render(w, http.StatusOK, "letters", page{Title: "Dead letters", Nav: "letters", Data: d, Flash: flash})
}

func (a *adminUI) now(ctx context.Context) (time.Time, error) {
	var now time.Time
	err := a.pool.QueryRow(ctx, "SELECT now()").Scan(&now)
	return now, err
}

type header struct{ Name, Value string }

type letterData struct {
	Letter       dlq.DeadLetter
	Headers      []header
	Payload      string
	PayloadKind  string
	PayloadBytes int
}

func (a *adminUI) letter(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), adminTimeout)
	defer cancel()
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		a.fail(w, r, http.StatusNotFound, "Not a message ID.")
		return
	}
	l, err := dlq.Get(ctx, a.pool, r.PathValue("subscriber"), id)
	if errors.Is(err, dlq.ErrNotFound) || errors.Is(err, postbox.ErrInvalid) {
		a.fail(w, r, http.StatusNotFound, "No such dead letter: it may have been replayed or purged.")
		return
	}
	if err != nil {
		a.failErr(w, r, err)
		return
	}
	d := letterData{Letter: l, PayloadBytes: len(l.Payload)}
	for _, k := range slices.Sorted(maps.Keys(l.Headers)) {
		d.Headers = append(d.Headers, header{k, l.Headers[k]})
	}
	d.Payload, d.PayloadKind = showPayload(l.Payload)
	a.render(w, http.StatusOK, "letter", page{Title: "Dead letter " + id.String(), Nav: "letters", Data: d})
}

// showPayload is a payload as it is shown: indented JSON, text, or a hex
// dump. The template escapes it.
func showPayload(p []byte) (text, kind string) {
	var buf bytes.Buffer
	if json.Valid(p) && json.Indent(&buf, p, "", "  ") == nil {
		return buf.String(), "JSON"
	}
	if utf8.Valid(p) {
		return string(p), "text"
	}
	return hex.Dump(p), "binary"
}

type confirmData struct {
	Action, Subscriber string
	Filter             dlq.Filter
	Count, Held        int
	Limit              int
	Limited            bool
	Hidden             []header
	Problem            string
}

// confirm shows what a replay or purge of the selection would touch, and
// the form that does it.
func (a *adminUI) confirm(action string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a.showConfirm(w, r, action, readLetterForm(r.URL.Query()), http.StatusOK, "")
	}
}

func (a *adminUI) showConfirm(w http.ResponseWriter, r *http.Request, action string, form letterForm, status int, problem string) {
	ctx, cancel := context.WithTimeout(r.Context(), adminTimeout)
	defer cancel()
	if a.readOnly {
		a.fail(w, r, http.StatusForbidden, "These pages are read-only (--read-only): nothing can be changed here.")
		return
	}
	f, err := a.selection(ctx, form)
	if err != nil {
		a.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	d := confirmData{Action: action, Subscriber: f.Subscriber, Filter: f, Limit: dlq.MaxLimit, Problem: problem}
	purgeable, err := dlq.CountPurge(ctx, a.pool, f)
	if err == nil && action == "replay" {
		d.Count, err = dlq.Count(ctx, a.pool, f)
		d.Held = purgeable - d.Count
	} else {
		d.Count = purgeable
	}
	if errors.Is(err, postbox.ErrInvalid) {
		a.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	if err != nil {
		a.failErr(w, r, err)
		return
	}
	d.Limited = purgeable >= dlq.MaxLimit
	for k, vs := range filterQuery(f) {
		for _, v := range vs {
			d.Hidden = append(d.Hidden, header{k, v})
		}
	}
	slices.SortFunc(d.Hidden, func(x, y header) int { return strings.Compare(x.Name+x.Value, y.Name+y.Value) })
	title := "Replay"
	if action == "purge" {
		title = "Purge"
	}
	a.render(w, status, "confirm", page{Title: title + " " + f.Subscriber, Nav: "letters", Data: d})
}

// selection is the filter a replay or purge acts on: a subscriber is
// required, and at most dlq.MaxLimit letters are touched at once.
func (a *adminUI) selection(ctx context.Context, form letterForm) (dlq.Filter, error) {
	if form.Subscriber == "" {
		return dlq.Filter{}, errors.New("choose a subscriber first: replay and purge act on one subscriber's dead letters")
	}
	now, err := a.now(ctx)
	if err != nil {
		return dlq.Filter{}, err
	}
	f, err := form.filter(now)
	if err != nil {
		return f, err
	}
	f.Limit = dlq.MaxLimit
	return f, nil
}

// change replays or purges the selection posted by the confirmation form.
func (a *adminUI) change(action string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), adminTimeout)
		defer cancel()
		r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
		if err := r.ParseForm(); err != nil {
			a.fail(w, r, http.StatusBadRequest, "Unreadable form.")
			return
		}
		form := readLetterForm(r.PostForm)
		f, err := a.selection(ctx, form)
		if err != nil {
			a.fail(w, r, http.StatusBadRequest, err.Error())
			return
		}
		var n int
		switch action {
		case "purge":
			if r.PostForm.Get("confirm") != f.Subscriber {
				a.showConfirm(w, r, action, form, http.StatusBadRequest,
					fmt.Sprintf("Type %q exactly to purge its dead letters.", f.Subscriber))
				return
			}
			n, err = dlq.Purge(ctx, a.pool, f)
		default:
			n, err = dlq.Replay(ctx, a.pool, f)
		}
		if errors.Is(err, postbox.ErrInvalid) {
			a.fail(w, r, http.StatusBadRequest, err.Error())
			return
		}
		if err != nil {
			a.failErr(w, r, err)
			return
		}
		a.log.Info("admin: "+action, "subscriber", f.Subscriber, "letters", n, "remote", r.RemoteAddr)
		// Back to the subscriber after a replay, to watch the letters go;
		// to its (remaining) dead letters after a purge.
		target := a.base + "/subscribers/" + url.PathEscape(f.Subscriber) + "?" + url.Values{"replayed": {strconv.Itoa(n)}}.Encode()
		if action == "purge" {
			target = a.base + "/dead-letters?" + url.Values{"subscriber": {f.Subscriber}, "purged": {strconv.Itoa(n)}}.Encode()
		}
		http.Redirect(w, r, target, http.StatusSeeOther)
	}
}
