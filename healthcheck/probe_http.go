package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/sidecarhq/sidecar/fsm"
)

const (
	// maxRedirects is how many redirects an HTTP check follows: enough for
	// http→https and a canonical path, and a loop ends long before the
	// timeout.
	maxRedirects = 5
	// maxDrain is how much of a body past the output limit is read so that
	// the connection can be reused; a longer body costs a new connection
	// on the next run instead.
	maxDrain = 64 << 10
)

// newTransport is the one transport of a Runner's HTTP checks. Timeouts come
// from each run's context.
func newTransport() *http.Transport {
	return &http.Transport{
		// No proxy: a check probes the service next to the sidecar, and an
		// HTTP_PROXY meant for the service's own traffic must not divert it.
		Proxy: nil,
		DialContext: (&net.Dialer{
			// A dial goes on after the run that started it gives up, so
			// that the next run finds the connection. 10s bounds how
			// many such dials a check of a host that drops packets
			// leaves pending (one per run, at most 10s each), where the
			// kernel would try for two minutes; a local service accepts
			// in microseconds.
			Timeout: 10 * time.Second,
			// Keep-alive probes every 30s (net's default) notice a dead
			// peer of an idle connection.
			KeepAlive: 30 * time.Second,
		}).DialContext,
		// 100 idle connections in all: one per target for a sidecar with
		// many services, bounded so that checks of services since gone
		// cannot pile up sockets and goroutines.
		MaxIdleConns: 100,
		// 32 per host: checks of one service share its connections, and
		// runs that share a 25ms slot (see runSlack) go together. 500
		// checks a second of one host (BenchmarkHTTPChecks500) use about
		// 20; fewer would close and dial connections at every slot.
		MaxIdleConnsPerHost: 32,
		// 30s: three default intervals, so a check at the default interval
		// reuses its connection, and those of removed checks go soon.
		IdleConnTimeout: 30 * time.Second,
		// 64 KiB of headers: a health answer needs a few hundred bytes;
		// this bounds what a misbehaving target makes the sidecar hold.
		MaxResponseHeaderBytes: 64 << 10,
		// The body is the output: ask for it uncompressed.
		DisableCompression: true,
	}
}

func newHTTPClient(t *http.Transport) *http.Client {
	return &http.Client{
		Transport: t,
		CheckRedirect: func(_ *http.Request, via []*http.Request) error {
			if len(via) > maxRedirects {
				return fmt.Errorf("stopped after %d redirects", maxRedirects)
			}
			return nil
		},
	}
}

// httpProber GETs a URL. Its request is built once and reused: net/http
// allows it once the previous response's body is closed.
type httpProber struct {
	client  *http.Client
	req     *http.Request
	url     string
	timeout time.Duration
}

func newHTTPProber(client *http.Client, rawURL string, timeout time.Duration) (*httpProber, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("url %q is not an absolute http or https URL", rawURL)
	}
	req, err := http.NewRequest(http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "sidecar-healthcheck")
	req.Header.Set("Accept", "text/plain, text/*, */*")
	// The output shows the URL without its password, if it has one.
	return &httpProber{client: client, req: req, url: u.Redacted(), timeout: timeout}, nil
}

func (p *httpProber) probe(ctx context.Context, out []byte, limit int) ([]byte, string) {
	out = append(out, "HTTP GET "...)
	out = append(out, p.url...)
	out = append(out, ": "...)
	resp, err := p.client.Do(p.req.WithContext(ctx))
	if err != nil {
		return appendErr(ctx, out, err, p.timeout), fsm.StatusCritical
	}
	defer resp.Body.Close()
	out = append(out, resp.Status...)
	out = append(out, " Output: "...)
	status := fsm.StatusCritical
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode <= 299:
		status = fsm.StatusPassing
	case resp.StatusCode == http.StatusTooManyRequests:
		status = fsm.StatusWarning
	}
	if n := limit - len(out); n > 0 {
		// Read up to a rune past the limit, so that the caller's
		// truncate sees a rune cut at the limit and drops it.
		n += utf8.UTFMax - 1
		out = slices.Grow(out, n)
		m, err := io.ReadFull(resp.Body, out[len(out):len(out)+n])
		out = out[:len(out)+m]
		if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
			// The body did not arrive whole (timeout, reset): whatever
			// the code said, the service is not answering.
			out = append(out, "\nreading body: "...)
			return appendErr(ctx, out, err, p.timeout), fsm.StatusCritical
		}
	}
	_, _ = io.CopyN(io.Discard, resp.Body, maxDrain)
	return out, status
}

// appendErr writes err, or "timed out after T" when the run's timeout cut
// it.
func appendErr(ctx context.Context, out []byte, err error, timeout time.Duration) []byte {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		out = append(out, "timed out after "...)
		return append(out, timeout.String()...)
	}
	return append(out, err.Error()...)
}
