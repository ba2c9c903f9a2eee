package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultAddr is where an agent serves HTTP unless told otherwise.
const DefaultAddr = "127.0.0.1:7080"

// ErrStreamClosed is returned by Stream.Next once the server ended the stream
// or Close was called: for a connection-bound hold it means the hold is gone.
var ErrStreamClosed = errors.New("api: stream closed")

// StatusError is a non-2xx answer of the agent. Message is the server's
// {"error": ...} text, or the status text when the body carried none. Code
// is 0 for an {"error": ...} line inside a hold stream, whose HTTP status
// was 200 when the stream began.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string {
	if e.Code == 0 {
		return e.Message
	}
	if e.Message == "" {
		return fmt.Sprintf("%d %s", e.Code, http.StatusText(e.Code))
	}
	return fmt.Sprintf("%d %s: %s", e.Code, http.StatusText(e.Code), e.Message)
}

// IsNotFound reports whether err is a 404 answer.
func IsNotFound(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

// QueryOptions parameterise a read. The zero value (or nil) is a plain,
// non-blocking, locally served read.
type QueryOptions struct {
	// Index makes the read a blocking query: the agent answers once the
	// answer's index exceeds Index, or after Wait with the same answer.
	Index uint64
	// Wait bounds a blocking query; 0 leaves the agent's default.
	Wait time.Duration
	// Consistent forces a linearizable read through the Raft leader.
	Consistent bool
}

// QueryMeta is what a read reports besides its body.
type QueryMeta struct {
	// Index is X-Sidecar-Index: pass it as QueryOptions.Index to block until
	// the answer changes.
	Index uint64
}

// Client talks to one agent's HTTP API. It is safe for concurrent use.
type Client struct {
	// Token is the secret of the ACL token sent with every request
	// (X-Sidecar-Token); "" sends none. Set it before the first request.
	Token string

	base string
	hc   *http.Client
	// stream is used for connection-bound holds: keep-alives are off so a
	// closed stream can never leave its connection in a pool, since the
	// server ties the hold to that very connection.
	stream *http.Client
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient makes the client send ordinary requests through hc.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) { c.hc = hc }
}

// NewClient returns a client for the agent at addr, given as host:port or as
// an http:// or https:// URL.
func NewClient(addr string, opts ...Option) (*Client, error) {
	base, err := normalizeAddr(addr)
	if err != nil {
		return nil, err
	}
	// The dial timeout is short because the agent is normally local: a
	// connection that cannot be made within seconds will not be made.
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy:               nil, // the agent is local; never route it through a proxy
		DialContext:         dialer.DialContext,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
	}
	str := &http.Transport{
		DialContext:       dialer.DialContext,
		DisableKeepAlives: true,
	}
	c := &Client{
		base:   base,
		hc:     &http.Client{Transport: tr},
		stream: &http.Client{Transport: str},
	}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

func normalizeAddr(addr string) (string, error) {
	addr = strings.TrimSpace(addr)
	if addr == "" {
		return "", errors.New("api: empty agent address")
	}
	if !strings.Contains(addr, "://") {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return "", fmt.Errorf("api: agent address %q: %w", addr, err)
		}
		addr = "http://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil {
		return "", fmt.Errorf("api: agent address %q: %w", addr, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("api: agent address %q: scheme must be http or https", addr)
	}
	if u.Host == "" {
		return "", fmt.Errorf("api: agent address %q: no host", addr)
	}
	return strings.TrimRight(u.Scheme+"://"+u.Host+u.Path, "/"), nil
}

// CloseIdleConnections closes kept-alive connections to the agent; the
// client stays usable.
func (c *Client) CloseIdleConnections() {
	c.hc.CloseIdleConnections()
	c.stream.CloseIdleConnections()
}

// Addr is the base URL the client sends to.
func (c *Client) Addr() string { return c.base }

// seg escapes one path segment, so names cannot break out of their route.
func seg(s string) string { return url.PathEscape(s) }

func (q *QueryOptions) encode(v url.Values) string {
	if q != nil {
		if q.Index > 0 {
			v.Set("index", strconv.FormatUint(q.Index, 10))
		}
		if q.Wait > 0 {
			v.Set("wait", q.Wait.String())
		}
	}
	s := v.Encode()
	// ?consistent is a bare flag in SPEC.
	if q != nil && q.Consistent {
		if s != "" {
			s += "&"
		}
		s += "consistent"
	}
	return s
}

// do sends one request and returns the response of any status. The body, if
// not nil, is sent as JSON unless it is an io.Reader.
func (c *Client) do(ctx context.Context, hc *http.Client, method, path, query string, body any) (*http.Response, error) {
	var rd io.Reader
	contentType := ""
	switch b := body.(type) {
	case nil:
	case io.Reader:
		rd = b
		contentType = "application/octet-stream"
	default:
		buf, err := json.Marshal(b)
		if err != nil {
			return nil, fmt.Errorf("%s %s: encode body: %w", method, path, err)
		}
		rd = bytes.NewReader(buf)
		contentType = "application/json"
	}
	u := c.base + path
	if query != "" {
		u += "?" + query
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", "application/json")
	if c.Token != "" {
		req.Header.Set(HeaderToken, c.Token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		// url.Error repeats the whole URL; the path and the cause read better.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	return resp, nil
}

// statusError reads an error answer. It never fails: a body that is not the
// {"error": ...} envelope is quoted (shortened) instead.
func statusError(resp *http.Response) *StatusError {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return errorFromBody(resp.StatusCode, b)
}

func errorFromBody(code int, b []byte) *StatusError {
	var e Error
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		return &StatusError{Code: code, Message: e.Error}
	}
	msg := strings.TrimSpace(string(b))
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	return &StatusError{Code: code, Message: msg}
}

func meta(resp *http.Response) *QueryMeta {
	m := &QueryMeta{}
	if v := resp.Header.Get(HeaderIndex); v != "" {
		// An unparsable index is treated as absent: the read itself is good.
		m.Index, _ = strconv.ParseUint(v, 10, 64)
	}
	return m
}

// call sends a request, fails on a non-2xx answer and decodes a 2xx body
// into out (when out is not nil).
func (c *Client) call(ctx context.Context, method, path, query string, body, out any) (*QueryMeta, error) {
	resp, err := c.do(ctx, c.hc, method, path, query, body)
	if err != nil {
		return nil, err
	}
	defer drainClose(resp.Body)
	m := meta(resp)
	if resp.StatusCode/100 != 2 {
		return m, statusError(resp)
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return m, fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return m, nil
}

// callSoft is call for routes where one non-2xx status (soft) is an answer
// rather than a failure: 409 of a lock, 503 of elections/self. Its body is
// decoded into out unless it is an {"error": ...} envelope.
func (c *Client) callSoft(ctx context.Context, method, path, query string, body, out any, soft int) (*QueryMeta, error) {
	resp, err := c.do(ctx, c.hc, method, path, query, body)
	if err != nil {
		return nil, err
	}
	defer drainClose(resp.Body)
	m := meta(resp)
	switch {
	case resp.StatusCode/100 == 2:
	case resp.StatusCode == soft:
		b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil {
			return m, fmt.Errorf("%s %s: read answer: %w", method, path, err)
		}
		var e Error
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return m, &StatusError{Code: resp.StatusCode, Message: e.Error}
		}
		if err := json.Unmarshal(b, out); err != nil {
			return m, errorFromBody(resp.StatusCode, b)
		}
		return m, nil
	default:
		return m, statusError(resp)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return m, fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return m, nil
}

// drainClose reads a little of what is left so the connection can be
// reused, then closes the body.
func drainClose(rc io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(rc, 64<<10))
	_ = rc.Close()
}

// Health returns nil while the agent process runs (GET /healthz).
func (c *Client) Health(ctx context.Context) error {
	_, err := c.call(ctx, http.MethodGet, "/healthz", "", nil, nil)
	return err
}

// Ready returns nil once the agent has joined and knows a Raft leader
// (GET /readyz), else a *StatusError with code 503.
func (c *Client) Ready(ctx context.Context) error {
	_, err := c.call(ctx, http.MethodGet, "/readyz", "", nil, nil)
	return err
}

// Metrics copies the Prometheus text exposition to w (GET /metrics).
func (c *Client) Metrics(ctx context.Context, w io.Writer) error {
	return c.copyTo(ctx, "/metrics", w)
}

// Status returns the agent's view of the Raft group (GET /v1/status).
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var s Status
	if _, err := c.call(ctx, http.MethodGet, "/v1/status", "", nil, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// Members returns the gossip members (GET /v1/members).
func (c *Client) Members(ctx context.Context) ([]Member, error) {
	var ms []Member
	if _, err := c.call(ctx, http.MethodGet, "/v1/members", "", nil, &ms); err != nil {
		return nil, err
	}
	return ms, nil
}

// Services returns every service name with the union of its tags
// (GET /v1/services).
func (c *Client) Services(ctx context.Context, q *QueryOptions) (map[string][]string, *QueryMeta, error) {
	var s map[string][]string
	m, err := c.call(ctx, http.MethodGet, "/v1/services", q.encode(url.Values{}), nil, &s)
	if err != nil {
		return nil, m, err
	}
	return s, m, nil
}

// Service returns the instances of one service (GET /v1/services/{name}):
// only healthy ones when passingOnly, only those tagged tag when tag is not
// empty.
func (c *Client) Service(ctx context.Context, name string, passingOnly bool, tag string, q *QueryOptions) ([]Instance, *QueryMeta, error) {
	v := url.Values{}
	if tag != "" {
		v.Set("tag", tag)
	}
	query := q.encode(v)
	if passingOnly {
		// ?passing is a bare flag like ?consistent.
		if query != "" {
			query += "&"
		}
		query += "passing"
	}
	var in []Instance
	m, err := c.call(ctx, http.MethodGet, "/v1/services/"+seg(name), query, nil, &in)
	if err != nil {
		return nil, m, err
	}
	return in, m, nil
}

// Register registers a service instance owned by the agent's node
// (PUT /v1/services).
func (c *Client) Register(ctx context.Context, reg ServiceRegistration) (*RegisterResponse, error) {
	var r RegisterResponse
	if _, err := c.call(ctx, http.MethodPut, "/v1/services", "", reg, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Deregister removes an instance (DELETE /v1/services/{id}).
func (c *Client) Deregister(ctx context.Context, id string) error {
	_, err := c.call(ctx, http.MethodDelete, "/v1/services/"+seg(id), "", nil, nil)
	return err
}

// UpdateCheck sets a TTL check's status (PUT /v1/checks/{id}/pass|warn|fail).
// status is "pass", "warn" or "fail"; the health names passing, warning and
// critical are accepted too.
func (c *Client) UpdateCheck(ctx context.Context, checkID, status, note string) error {
	switch status {
	case StatusPassing:
		status = "pass"
	case StatusWarning:
		status = "warn"
	case StatusCritical:
		status = "fail"
	case "pass", "warn", "fail":
	default:
		return fmt.Errorf("api: check status %q: want pass, warn or fail", status)
	}
	v := url.Values{}
	if note != "" {
		v.Set("note", note)
	}
	_, err := c.call(ctx, http.MethodPut, "/v1/checks/"+seg(checkID)+"/"+status, v.Encode(), nil, nil)
	return err
}

// GrantLease creates a lease (POST /v1/leases).
func (c *Client) GrantLease(ctx context.Context, ttl time.Duration) (*Lease, error) {
	var l Lease
	if _, err := c.call(ctx, http.MethodPost, "/v1/leases", "", LeaseRequest{TTL: ttl.String()}, &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// KeepAlive renews a lease (PUT /v1/leases/{id}/keepalive). An expired lease
// answers a *StatusError with code 404 (see IsNotFound).
func (c *Client) KeepAlive(ctx context.Context, id string) (*Lease, error) {
	var l Lease
	if _, err := c.call(ctx, http.MethodPut, "/v1/leases/"+seg(id)+"/keepalive", "", nil, &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// RevokeLease revokes a lease, releasing every lock and instance attached
// (DELETE /v1/leases/{id}).
func (c *Client) RevokeLease(ctx context.Context, id string) error {
	_, err := c.call(ctx, http.MethodDelete, "/v1/leases/"+seg(id), "", nil, nil)
	return err
}

// Lock tries to acquire a lock (PUT /v1/locks/{name}), waiting up to
// req.Wait. A lock held by someone else is not an error: the result has
// Held false and names the holder. For a hold bound to the connection use
// HoldLock.
func (c *Client) Lock(ctx context.Context, name string, req LockRequest) (*LockResult, error) {
	if req.Hold != "" {
		return nil, errors.New("api: Lock with a hold: use HoldLock")
	}
	var r LockResult
	if _, err := c.callSoft(ctx, http.MethodPut, "/v1/locks/"+seg(name), "", req, &r, http.StatusConflict); err != nil {
		return nil, err
	}
	return &r, nil
}

// Unlock releases a lock held on lease (DELETE /v1/locks/{name}); an empty
// lease means the agent's own node lease.
func (c *Client) Unlock(ctx context.Context, name, lease string) error {
	_, err := c.call(ctx, http.MethodDelete, "/v1/locks/"+seg(name), "", LockRequest{Lease: lease}, nil)
	return err
}

// UnlockToken releases the acquisition of a lock that got token on lease
// (DELETE /v1/locks/{name} with a token): when the lock was released and
// taken again since, it is a *StatusError with code 409 and nothing
// changes.
func (c *Client) UnlockToken(ctx context.Context, name, lease string, token uint64) error {
	_, err := c.call(ctx, http.MethodDelete, "/v1/locks/"+seg(name), "", LockRequest{Lease: lease, Token: token}, nil)
	return err
}

// LockFence asks whether token is the fencing token of the lock's live
// holder (GET /v1/locks/{name}/fence), confirmed with a quorum. A token
// that is not current is an answer (Current false, with the current
// token), not an error.
func (c *Client) LockFence(ctx context.Context, name string, token uint64) (*FenceResult, error) {
	var r FenceResult
	q := url.Values{"token": {strconv.FormatUint(token, 10)}}.Encode()
	if _, err := c.callSoft(ctx, http.MethodGet, "/v1/locks/"+seg(name)+"/fence", q, nil, &r, http.StatusConflict); err != nil {
		return nil, err
	}
	return &r, nil
}

// ElectionFence is LockFence for an election's leader
// (GET /v1/elections/{name}/fence).
func (c *Client) ElectionFence(ctx context.Context, name string, token uint64) (*FenceResult, error) {
	var r FenceResult
	q := url.Values{"token": {strconv.FormatUint(token, 10)}}.Encode()
	if _, err := c.callSoft(ctx, http.MethodGet, "/v1/elections/"+seg(name)+"/fence", q, nil, &r, http.StatusConflict); err != nil {
		return nil, err
	}
	return &r, nil
}

// Transfer hands an election's leadership from candidate from (which
// campaigns through this agent) to the waiting candidate to
// (PUT /v1/elections/{name}/transfer), in one Raft entry with a greater
// token; 409 when from does not lead here or to is not waiting.
func (c *Client) Transfer(ctx context.Context, name, from, to string) (*TransferResult, error) {
	var r TransferResult
	if _, err := c.call(ctx, http.MethodPut, "/v1/elections/"+seg(name)+"/transfer", "", TransferRequest{From: from, To: to}, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// LockInfo describes a lock's holder (GET /v1/locks/{name}). A free lock
// returns a nil *LockInfo and no error.
func (c *Client) LockInfo(ctx context.Context, name string, q *QueryOptions) (*LockInfo, *QueryMeta, error) {
	var li LockInfo
	m, err := c.call(ctx, http.MethodGet, "/v1/locks/"+seg(name), q.encode(url.Values{}), nil, &li)
	if IsNotFound(err) {
		return nil, m, nil
	}
	if err != nil {
		return nil, m, err
	}
	return &li, m, nil
}

// Campaign campaigns in an election through the agent
// (PUT /v1/elections/{name}/campaign), waiting up to req.Wait. Not winning
// is not an error: the result has Leader false. For a candidacy bound to the
// connection use HoldCampaign.
func (c *Client) Campaign(ctx context.Context, name string, req CampaignRequest) (*CampaignResult, error) {
	if req.Hold != "" {
		return nil, errors.New("api: Campaign with a hold: use HoldCampaign")
	}
	var r CampaignResult
	if _, err := c.callSoft(ctx, http.MethodPut, "/v1/elections/"+seg(name)+"/campaign", "", req, &r, http.StatusConflict); err != nil {
		return nil, err
	}
	return &r, nil
}

// Resign withdraws a candidate (DELETE /v1/elections/{name}/campaign).
func (c *Client) Resign(ctx context.Context, name, candidate string) error {
	v := url.Values{}
	v.Set("candidate", candidate)
	_, err := c.call(ctx, http.MethodDelete, "/v1/elections/"+seg(name)+"/campaign", v.Encode(), nil, nil)
	return err
}

// Election returns an election's leader (GET /v1/elections/{name}). A vacant
// election returns an ElectionInfo with a nil Leader and no error.
func (c *Client) Election(ctx context.Context, name string, q *QueryOptions) (*ElectionInfo, *QueryMeta, error) {
	var e ElectionInfo
	m, err := c.call(ctx, http.MethodGet, "/v1/elections/"+seg(name), q.encode(url.Values{}), nil, &e)
	if IsNotFound(err) {
		return &ElectionInfo{}, m, nil
	}
	if err != nil {
		return nil, m, err
	}
	return &e, m, nil
}

// Self reports whether a candidate of this agent leads the election
// (GET /v1/elections/{name}/self). Not leading is not an error: the 503
// answer decodes into a SelfStatus with Leader false.
func (c *Client) Self(ctx context.Context, name string, q *QueryOptions) (*SelfStatus, *QueryMeta, error) {
	var s SelfStatus
	m, err := c.callSoft(ctx, http.MethodGet, "/v1/elections/"+seg(name)+"/self", q.encode(url.Values{}), nil, &s, http.StatusServiceUnavailable)
	if err != nil {
		return nil, m, err
	}
	return &s, m, nil
}

// SnapshotSave copies a snapshot of the registry to w (GET /v1/snapshot).
func (c *Client) SnapshotSave(ctx context.Context, w io.Writer) error {
	return c.copyTo(ctx, "/v1/snapshot", w)
}

// SnapshotRestore replaces the registry with the snapshot read from r
// (PUT /v1/snapshot).
func (c *Client) SnapshotRestore(ctx context.Context, r io.Reader) error {
	_, err := c.call(ctx, http.MethodPut, "/v1/snapshot", "", r, nil)
	return err
}

func (c *Client) copyTo(ctx context.Context, path string, w io.Writer) error {
	resp, err := c.do(ctx, c.hc, http.MethodGet, path, "", nil)
	if err != nil {
		return err
	}
	defer drainClose(resp.Body)
	if resp.StatusCode/100 != 2 {
		return statusError(resp)
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
}

// HoldLock asks for a lock held exactly as long as the returned stream's
// connection: each line the agent sends is one LockResult (Held false while
// waiting or once lost, Held true with the fencing token once acquired).
// Closing the stream, or cancelling ctx, closes the connection, which the
// agent treats as a release.
func (c *Client) HoldLock(ctx context.Context, name string, req LockRequest) (*Stream[LockResult], error) {
	req.Hold = HoldConnection
	return openStream[LockResult](ctx, c, "/v1/locks/"+seg(name), req)
}

// HoldCampaign campaigns with a candidacy that lives exactly as long as the
// returned stream's connection; each line is one CampaignResult. Closing the
// stream, or cancelling ctx, resigns.
func (c *Client) HoldCampaign(ctx context.Context, name string, req CampaignRequest) (*Stream[CampaignResult], error) {
	req.Hold = HoldConnection
	return openStream[CampaignResult](ctx, c, "/v1/elections/"+seg(name)+"/campaign", req)
}

// Stream reads the JSON lines of a connection-bound hold. Next and Close may
// be called from different goroutines; Next from one goroutine at a time.
type Stream[T any] struct {
	resp   *http.Response
	sc     *bufio.Scanner
	cancel context.CancelFunc
	once   sync.Once
	path   string
}

func openStream[T any](ctx context.Context, c *Client, path string, body any) (*Stream[T], error) {
	// The stream owns a context of its own so that Close can tear the
	// connection down even while the server has not answered yet.
	sctx, cancel := context.WithCancel(ctx)
	resp, err := c.do(sctx, c.stream, http.MethodPut, path, "", body)
	if err != nil {
		cancel()
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		defer cancel()
		defer resp.Body.Close()
		return nil, statusError(resp)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	return &Stream[T]{resp: resp, sc: sc, cancel: cancel, path: path}, nil
}

// Next blocks until the agent sends the next line and returns it decoded.
// It returns ErrStreamClosed once the stream ended (server closed it, or
// Close was called), and a *StatusError with Code 0 if the agent sent an
// {"error": ...} line.
func (s *Stream[T]) Next() (T, error) {
	var zero T
	for s.sc.Scan() {
		line := bytes.TrimSpace(s.sc.Bytes())
		if len(line) == 0 {
			continue // blank lines are keep-alives
		}
		var e Error
		if json.Unmarshal(line, &e) == nil && e.Error != "" {
			return zero, &StatusError{Message: e.Error}
		}
		var v T
		if err := json.Unmarshal(line, &v); err != nil {
			return zero, fmt.Errorf("PUT %s: decode stream line: %w", s.path, err)
		}
		return v, nil
	}
	if err := s.sc.Err(); err != nil {
		return zero, fmt.Errorf("PUT %s: %w: %w", s.path, ErrStreamClosed, err)
	}
	return zero, ErrStreamClosed
}

// Close closes the connection, which releases the hold. It is safe to call
// more than once.
func (s *Stream[T]) Close() error {
	s.once.Do(func() {
		s.cancel()
		_ = s.resp.Body.Close()
	})
	return nil
}
