// Package ui is sidecar's web UI (SPEC: Web UI): static HTML, CSS and
// JavaScript embedded in the binary, with no build step and no external
// asset, so it works offline. The page reads the HTTP API only, through
// blocking queries, sending the token it is given; the files themselves
// hold no data and need no token.
//
// The page stores a token given in its URL fragment (/ui/#token=SECRET) in
// localStorage and removes it from the address bar; the token field of the
// page does the same.
package ui

import (
	"io/fs"
	"net/http"
)

// Files are the UI's files, index.html at the root.
func Files() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree always has static/
	}
	return sub
}

// Handler serves the UI's files at the root of the path it sees (mount it
// behind http.StripPrefix). Every answer forbids framing and any origin
// but the agent's own, so a token typed into the page only ever goes to
// the agent that served it.
func Handler() http.Handler {
	files := http.FileServerFS(Files())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		// Embedded files have no modification time: revalidate each load
		// (a new binary may serve new files).
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}
