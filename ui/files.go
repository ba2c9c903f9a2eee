//go:build !sidecar_noui

package ui

import "embed"

// static holds the UI's files. `make ui-size` builds without them (tag
// sidecar_noui) to measure what they add to the binary.
//
//go:embed static
var static embed.FS
