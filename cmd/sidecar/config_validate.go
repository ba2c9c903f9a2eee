// Validation of what no single setting can check alone, and of the services
// and elections a config file declares.

package main

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/fsm"
)

// validate checks what no single setting can check alone.
func (c *Config) validate() error {
	if !fsm.ValidName(c.Name) {
		return configErrorf("invalid node name %q: must be a DNS label (1-63 letters, digits, '-'); set --name", c.Name)
	}
	if c.BootstrapExpect > 0 && !c.Server {
		return configErrorf("--bootstrap-expect needs --server: only servers vote")
	}
	if err := c.validateTLS(); err != nil {
		return err
	}

	// Listeners must not collide: a clash would only show up later as an
	// "address already in use" from whichever component started second.
	type listener struct {
		flag string
		addr netip.AddrPort
		udp  bool
	}
	ls := []listener{
		{"bind-addr", netip.MustParseAddrPort(c.BindAddr), true},
		{"http-addr", netip.MustParseAddrPort(c.HTTPAddr), false},
		{"dns-addr", netip.MustParseAddrPort(c.DNSAddr), true},
	}
	if c.Server {
		ls = append(ls, listener{"raft-addr", netip.MustParseAddrPort(c.RaftAddr), false})
	}
	if c.HTTPSAddr != "" {
		ls = append(ls, listener{"https-addr", netip.MustParseAddrPort(c.HTTPSAddr), false})
	}
	for i, a := range ls {
		for _, b := range ls[i+1:] {
			if a.addr.Port() == 0 || a.addr.Port() != b.addr.Port() {
				continue
			}
			ia, ib := a.addr.Addr().Unmap(), b.addr.Addr().Unmap()
			if ia == ib || ia.IsUnspecified() || ib.IsUnspecified() {
				return configErrorf("--%s %s and --%s %s use the same port", a.flag, a.addr, b.flag, b.addr)
			}
		}
	}

	ids := map[string]bool{}
	for i := range c.Services {
		s := &c.Services[i]
		if err := validateService(s); err != nil {
			return configErrorf("config file %s: services[%d]: %v", c.ConfigFile, i, err)
		}
		if ids[s.ID] {
			return configErrorf("config file %s: services[%d]: duplicate id %q", c.ConfigFile, i, s.ID)
		}
		for j, ch := range s.Checks {
			if ch.Type == "exec" && c.ExecChecks == "" {
				return configErrorf("config file %s: services[%d].checks[%d]: exec checks need --enable-exec-checks=local (or all)", c.ConfigFile, i, j)
			}
		}
		ids[s.ID] = true
	}
	names := map[string]bool{}
	for i := range c.Elections {
		e := &c.Elections[i]
		if err := validateElection(e, c.Name); err != nil {
			return configErrorf("config file %s: elections[%d]: %v", c.ConfigFile, i, err)
		}
		if names[e.Name] {
			return configErrorf("config file %s: elections[%d]: duplicate election %q", c.ConfigFile, i, e.Name)
		}
		names[e.Name] = true
	}
	return nil
}

// defaultServiceID names an instance registered without an id. The port
// keeps two instances of one service on one node apart.
func defaultServiceID(name string, port int) string {
	if port == 0 {
		return name
	}
	return fmt.Sprintf("%s-%d", name, port)
}

// validateService fills defaults of a configured service and checks what the
// agent could not register anyway, so the mistake stops the start instead of
// showing up as a log line.
func validateService(s *api.ServiceRegistration) error {
	if !fsm.ValidName(s.Name) {
		return fmt.Errorf("name %q must be a DNS label (1-63 letters, digits, '-')", s.Name)
	}
	if s.Port < 0 || s.Port > 65535 {
		return fmt.Errorf("port %d is outside 0-65535", s.Port)
	}
	if s.Weight < 0 || s.Weight > fsm.MaxWeight {
		return fmt.Errorf("weight %d is outside 1-%d", s.Weight, fsm.MaxWeight)
	}
	if s.ID == "" {
		s.ID = defaultServiceID(s.Name, s.Port)
	}
	if !fsm.ValidID(s.ID) {
		return fmt.Errorf("id %q must be 1-%d of letters, digits and . _ : @ -", s.ID, fsm.MaxIDLen)
	}
	for j := range s.Checks {
		if err := validateCheck(&s.Checks[j]); err != nil {
			return fmt.Errorf("checks[%d]: %w", j, err)
		}
	}
	return nil
}

func validateCheck(ch *api.CheckDefinition) error {
	present := map[string]bool{"http": ch.HTTP != "", "tcp": ch.TCP != "", "exec": len(ch.Exec) > 0, "ttl": ch.TTL != ""}
	if ch.Type == "" {
		// Infer the type from the one field given, as Consul does.
		for _, t := range []string{"http", "tcp", "exec", "ttl"} {
			if present[t] {
				if ch.Type != "" {
					return errors.New("several check kinds given; set type")
				}
				ch.Type = t
			}
		}
		if ch.Type == "" {
			return errors.New("no type and none of http, tcp, exec, ttl")
		}
	}
	if !fsm.ValidCheckType(ch.Type) {
		return fmt.Errorf("type %q: want http, tcp, exec or ttl", ch.Type)
	}
	if !present[ch.Type] {
		return fmt.Errorf("type %s needs the %q field", ch.Type, ch.Type)
	}
	for k, p := range present {
		if p && k != ch.Type {
			return fmt.Errorf("type %s must not set %q", ch.Type, k)
		}
	}
	if ch.Type == "ttl" {
		if _, err := positiveDuration(ch.TTL); err != nil {
			return fmt.Errorf("ttl %q: %w", ch.TTL, err)
		}
	}
	for _, d := range []struct{ name, v string }{
		{"interval", ch.Interval}, {"timeout", ch.Timeout}, {"deregister_critical_after", ch.DeregisterCriticalAfter},
	} {
		if d.v == "" {
			continue
		}
		if _, err := positiveDuration(d.v); err != nil {
			return fmt.Errorf("%s %q: %w", d.name, d.v, err)
		}
	}
	if ch.SuccessBeforePassing < 0 || ch.FailuresBeforeCritical < 0 {
		return errors.New("thresholds must not be negative")
	}
	return nil
}

func positiveDuration(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, errors.New("not a duration")
	}
	if d <= 0 {
		return 0, errors.New("must be positive")
	}
	return d, nil
}

func validateElection(e *ElectionConfig, node string) error {
	if !fsm.ValidName(e.Name) {
		return fmt.Errorf("name %q must be a DNS label (1-63 letters, digits, '-')", e.Name)
	}
	if e.Candidate == "" {
		e.Candidate = node
	}
	if !fsm.ValidID(e.Candidate) {
		return fmt.Errorf("candidate %q must be 1-%d of letters, digits and . _ : @ -", e.Candidate, fsm.MaxIDLen)
	}
	if e.Value == "" {
		return errors.New("value is required (what the leader publishes, usually host:port)")
	}
	if e.Service != "" && !fsm.ValidID(e.Service) {
		return fmt.Errorf("service %q is not a valid instance id", e.Service)
	}
	return nil
}
