package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/fsm"
)

// Request decoding is kept in pure functions of bytes and query strings, so
// that each is fuzzed on its own; the handlers only move data.

// MaxBodyBytes caps every request body but a snapshot restore.
const MaxBodyBytes = 1 << 20

// MaxWait caps blocking queries and lock waits, as Consul caps at 10m.
const MaxWait = 10 * time.Minute

// badRequest is an error the client caused; it maps to 400.
type badRequest struct{ msg string }

func (e *badRequest) Error() string { return e.msg }

func badf(format string, args ...any) error { return &badRequest{fmt.Sprintf(format, args...)} }

// readBody reads a capped body; an over-long one is 413.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	// A client that sends its body slowly holds a connection and a
	// goroutine: it gets BodyReadTimeout for the whole body. The deadline
	// is lifted afterwards, so a blocking query or a hold streams for as
	// long as it lasts.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(s.cfg.BodyReadTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err == nil {
		_ = rc.SetReadDeadline(time.Time{})
	} else {
		// The deadline stays: the server must not wait for the rest of a
		// body it will not read before it answers and closes.
		w.Header().Set("Connection", "close")
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, errTooLarge
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, fmt.Errorf("%w: request body not received within %v", errSlowBody, s.cfg.BodyReadTimeout)
		}
		return nil, badf("read body: %v", err)
	}
	return body, nil
}

var errTooLarge = errors.New("request body larger than 1 MiB")

var errSlowBody = errors.New("request timeout")

// decodeJSON decodes one JSON object strictly: unknown fields, wrong types
// and trailing data are errors that name what is wrong. An empty body is
// the zero value when optional.
func decodeJSON(body []byte, v any, optional bool) error {
	if len(bytes.TrimSpace(body)) == 0 {
		if optional {
			return nil
		}
		return badf("request body is empty; want a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syn):
			return badf("malformed JSON at byte %d: %v", syn.Offset, err)
		case errors.As(err, &typ):
			field := typ.Field
			if field == "" {
				field = "body"
			}
			return badf("field %q: got JSON %s, want %s", field, typ.Value, typ.Type)
		case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
			return badf("malformed JSON: unexpected end of body")
		}
		return badf("invalid JSON: %v", err)
	}
	if dec.More() {
		return badf("malformed JSON: data after the object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return badf("malformed JSON: data after the object")
	}
	return nil
}

// parseDuration parses an optional Go duration field.
func parseDuration(field, s string, min, max time.Duration) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, badf("%s %q is not a duration like \"10s\"", field, s)
	}
	if d < min || d > max {
		return 0, badf("%s %v must be between %v and %v", field, d, min, max)
	}
	return d, nil
}

func checkName(what, s string) error {
	if !fsm.ValidName(s) {
		return badf("%s %q is not a DNS label (1-63 letters, digits and '-', not starting or ending with '-')", what, s)
	}
	return nil
}

func checkID(what, s string) error {
	if !fsm.ValidID(s) {
		return badf("%s %q must be 1-%d letters, digits and . _ : @ -", what, s, fsm.MaxIDLen)
	}
	return nil
}

// InstanceFromRegistration validates a registration and turns it into the
// instance the registry stores for node. Config-file services go through it
// too.
func InstanceFromRegistration(reg api.ServiceRegistration, node string) (*fsm.Instance, error) {
	if err := checkID("id", reg.ID); err != nil {
		return nil, err
	}
	if err := checkName("name", reg.Name); err != nil {
		return nil, err
	}
	if reg.Port < 0 || reg.Port > 65535 {
		return nil, badf("port %d is outside 0-65535", reg.Port)
	}
	// 0 is no weight given, stored as such and served as
	// fsm.DefaultWeight, so that a registration without one writes the
	// same entry as before weights existed.
	if reg.Weight < 0 || reg.Weight > fsm.MaxWeight {
		return nil, badf("weight %d is outside 1-%d", reg.Weight, fsm.MaxWeight)
	}
	in := &fsm.Instance{
		ID: reg.ID, Name: reg.Name, Node: node, Address: reg.Address, Port: reg.Port,
		Tags: reg.Tags, Meta: reg.Meta, Lease: reg.Lease, Weight: reg.Weight,
	}
	for i, def := range reg.Checks {
		ch, err := checkFromDefinition(def, reg.ID, i+1)
		if err != nil {
			return nil, err
		}
		in.Checks = append(in.Checks, ch)
	}
	if err := fsm.ValidateInstance(in); err != nil {
		return nil, badf("%s", strings.TrimPrefix(err.Error(), fsm.ErrInvalid.Error()+": "))
	}
	return in, nil
}

func checkFromDefinition(def api.CheckDefinition, instance string, n int) (fsm.Check, error) {
	ch := fsm.Check{ID: def.ID, Name: def.Name, Type: def.Type,
		SuccessBeforePassing: def.SuccessBeforePassing, FailuresBeforeCritical: def.FailuresBeforeCritical}
	if ch.ID == "" {
		ch.ID = instance + ":" + strconv.Itoa(n)
	}
	if ch.Name == "" {
		ch.Name = def.Type
	}
	if err := checkID("check id", ch.ID); err != nil {
		return ch, err
	}
	// Exactly the field of the check's type.
	fields := map[string]bool{"http": def.HTTP != "", "tcp": def.TCP != "", "exec": len(def.Exec) > 0, "ttl": def.TTL != ""}
	if _, ok := fields[def.Type]; !ok {
		return ch, badf("check %q: type %q is not http, tcp, exec or ttl", ch.ID, def.Type)
	}
	for field, set := range fields {
		if field == def.Type && !set {
			return ch, badf("check %q of type %s needs the field %q", ch.ID, def.Type, field)
		}
		if field != def.Type && set {
			return ch, badf("check %q of type %s must not set %q", ch.ID, def.Type, field)
		}
	}
	switch def.Type {
	case "http":
		u, err := url.Parse(def.HTTP)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return ch, badf("check %q: http %q is not an http(s) URL", ch.ID, def.HTTP)
		}
		ch.HTTP = def.HTTP
	case "tcp":
		if _, _, err := splitHostPort(def.TCP); err != nil {
			return ch, badf("check %q: tcp %q is not host:port", ch.ID, def.TCP)
		}
		ch.TCP = def.TCP
	case "exec":
		ch.Exec = append([]string(nil), def.Exec...)
	}
	var err error
	ttl, err := parseDuration("check "+ch.ID+" ttl", def.TTL, time.Second, fsm.MaxLeaseTTL)
	if err != nil {
		return ch, err
	}
	interval, err := parseDuration("check "+ch.ID+" interval", def.Interval, 100*time.Millisecond, time.Hour)
	if err != nil {
		return ch, err
	}
	timeout, err := parseDuration("check "+ch.ID+" timeout", def.Timeout, time.Millisecond, time.Hour)
	if err != nil {
		return ch, err
	}
	dereg, err := parseDuration("check "+ch.ID+" deregister_critical_after", def.DeregisterCriticalAfter, time.Second, 30*24*time.Hour)
	if err != nil {
		return ch, err
	}
	if def.SuccessBeforePassing < 0 || def.FailuresBeforeCritical < 0 {
		return ch, badf("check %q: thresholds must not be negative", ch.ID)
	}
	ch.TTL, ch.Interval, ch.Timeout, ch.DeregisterCriticalAfter = int64(ttl), int64(interval), int64(timeout), int64(dereg)
	return ch, nil
}

func splitHostPort(s string) (string, int, error) {
	i := strings.LastIndexByte(s, ':')
	if i <= 0 {
		return "", 0, errors.New("no port")
	}
	port, err := strconv.Atoi(s[i+1:])
	if err != nil || port < 1 || port > 65535 {
		return "", 0, errors.New("bad port")
	}
	return s[:i], port, nil
}

// decodeRegistration decodes PUT /v1/services.
func decodeRegistration(body []byte, node string) (*fsm.Instance, error) {
	var reg api.ServiceRegistration
	if err := decodeJSON(body, &reg, false); err != nil {
		return nil, err
	}
	// An explicit "weight": 0 is a mistake, not a request for the default
	// that leaving it out gives.
	var given struct {
		Weight *int `json:"weight"`
	}
	if err := json.Unmarshal(body, &given); err == nil && given.Weight != nil && *given.Weight == 0 {
		return nil, badf("weight 0 is outside 1-%d (leave it out for the default, 1)", fsm.MaxWeight)
	}
	return InstanceFromRegistration(reg, node)
}

// decodeLeaseRequest decodes POST /v1/leases.
func decodeLeaseRequest(body []byte) (time.Duration, error) {
	var req api.LeaseRequest
	if err := decodeJSON(body, &req, false); err != nil {
		return 0, err
	}
	if req.TTL == "" {
		return 0, badf("ttl is required, e.g. {\"ttl\":\"10s\"}")
	}
	return parseDuration("ttl", req.TTL, fsm.MinLeaseTTL, fsm.MaxLeaseTTL)
}

// holdFields are what a lock request and a campaign share: the lease to
// hang on, the value published, how long to wait, and a connection-bound
// hold with the TTL of its own lease.
type holdFields struct {
	Lease      string
	Value      string
	Wait       time.Duration
	Connection bool
	TTL        time.Duration
}

func decodeHoldFields(lease, value, wait, hold, ttl string) (holdFields, error) {
	var out holdFields
	if lease != "" {
		if err := checkID("lease", lease); err != nil {
			return out, err
		}
	}
	if len(value) > fsm.MaxValueLen {
		return out, badf("value is longer than %d bytes", fsm.MaxValueLen)
	}
	switch hold {
	case "":
	case api.HoldConnection:
		out.Connection = true
	default:
		return out, badf("hold %q: the only kind is %q", hold, api.HoldConnection)
	}
	if out.Connection && lease != "" {
		return out, badf("a connection-bound hold has a lease of its own; drop \"lease\" or \"hold\"")
	}
	if !out.Connection && ttl != "" {
		return out, badf("ttl applies only to a connection-bound hold; lease TTLs are set with POST /v1/leases")
	}
	out.Lease, out.Value = lease, value
	var err error
	if out.Wait, err = parseDuration("wait", wait, 0, MaxWait); err != nil {
		return out, err
	}
	if out.TTL, err = parseDuration("ttl", ttl, fsm.MinLeaseTTL, fsm.MaxLeaseTTL); err != nil {
		return out, err
	}
	return out, nil
}

// lockRequest is a decoded PUT /v1/locks/{name}.
type lockRequest struct {
	holdFields
	LockDelay time.Duration
}

func decodeLockRequest(body []byte) (lockRequest, error) {
	var req api.LockRequest
	var out lockRequest
	if err := decodeJSON(body, &req, true); err != nil {
		return out, err
	}
	var err error
	if out.holdFields, err = decodeHoldFields(req.Lease, req.Value, req.Wait, req.Hold, req.TTL); err != nil {
		return out, err
	}
	if out.LockDelay, err = parseDuration("lock_delay", req.LockDelay, 0, fsm.MaxLockDelay); err != nil {
		return out, err
	}
	return out, nil
}

// campaignRequest is a decoded PUT /v1/elections/{name}/campaign.
type campaignRequest struct {
	holdFields
	Candidate string
	Service   string
}

func decodeCampaignRequest(body []byte) (campaignRequest, error) {
	var req api.CampaignRequest
	var out campaignRequest
	if err := decodeJSON(body, &req, false); err != nil {
		return out, err
	}
	if err := checkID("candidate", req.Candidate); err != nil {
		return out, err
	}
	if req.Service != "" {
		if err := checkID("service", req.Service); err != nil {
			return out, err
		}
	}
	var err error
	if out.holdFields, err = decodeHoldFields(req.Lease, req.Value, req.Wait, req.Hold, req.TTL); err != nil {
		return out, err
	}
	out.Candidate, out.Service = req.Candidate, req.Service
	return out, nil
}

// blockingQuery is ?index=N&wait=D&consistent.
type blockingQuery struct {
	Index      uint64
	Wait       time.Duration
	Consistent bool
}

// DefaultWait is the wait of a blocking query that names none.
const DefaultWait = 5 * time.Minute

func parseBlocking(q url.Values) (blockingQuery, error) {
	var b blockingQuery
	if s := q.Get("index"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return b, badf("index %q is not a non-negative integer", s)
		}
		b.Index = n
	}
	b.Wait = DefaultWait
	if s := q.Get("wait"); s != "" {
		d, err := parseDuration("wait", s, 0, MaxWait)
		if err != nil {
			return b, err
		}
		b.Wait = d
	}
	_, b.Consistent = q["consistent"]
	return b, nil
}
