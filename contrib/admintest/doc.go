// Package admintest drives the admin pages of the postbox binary in a real
// headless browser (Debian's chromium, through chromedp): a module of its
// own, so that neither the core nor the binary depends on chromedp.
//
//	go test github.com/postbox-dev/postbox/contrib/admintest
//
// With POSTBOX_ADMIN_SCREENSHOTS=DIR (an absolute path) the test writes
// its screenshots of the main pages there (docs/admin.md shows them).
package admintest
