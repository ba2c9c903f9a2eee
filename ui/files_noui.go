//go:build sidecar_noui

package ui

import "embed"

// static is empty under the sidecar_noui tag: the build `make ui-size`
// compares against (every /ui/ file then answers 404).
var static embed.FS
