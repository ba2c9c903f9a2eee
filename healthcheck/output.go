package healthcheck

import "unicode/utf8"

// truncate cuts b to at most limit bytes, backing off to the start of a
// rune so that the output stays valid UTF-8 when it was.
func truncate(b []byte, limit int) []byte {
	if len(b) <= limit {
		return b
	}
	b = b[:limit]
	// A rune is at most 4 bytes: look back at most 3 for its start.
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				b = b[:i]
			}
			break
		}
	}
	return b
}

// tailWriter keeps the last limit bytes written to it: the end of a
// script's output is where it says why it failed.
type tailWriter struct {
	buf   []byte
	limit int
	// cut reports that earlier bytes were dropped.
	cut bool
}

func (w *tailWriter) reset(limit int) {
	w.buf, w.limit, w.cut = w.buf[:0], limit, false
}

func (w *tailWriter) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) >= w.limit {
		w.buf = append(w.buf[:0], p[len(p)-w.limit:]...)
		w.cut = true
		return n, nil
	}
	if drop := len(w.buf) + len(p) - w.limit; drop > 0 {
		w.buf = w.buf[:copy(w.buf, w.buf[drop:])]
		w.cut = true
	}
	w.buf = append(w.buf, p...)
	return n, nil
}

// tail returns the kept bytes, at most limit of them, starting at a rune
// boundary when bytes were dropped.
func (w *tailWriter) tail(limit int) []byte {
	b := w.buf
	cut := w.cut
	if len(b) > limit {
		b, cut = b[len(b)-limit:], true
	}
	if cut {
		// A continuation byte first: skip to the next rune (at most 3).
		for n := 0; n < utf8.UTFMax-1 && len(b) > 0 && !utf8.RuneStart(b[0]); n++ {
			b = b[1:]
		}
	}
	return b
}
