package fsm

import (
	"fmt"
	"time"
)

// Limits of what the registry accepts. The HTTP API checks the same rules
// first, so a user sees them as 400s; Apply checks again so that no entry,
// whatever wrote it, can put the registry in a state it cannot serve.
const (
	MinLeaseTTL  = time.Second
	MaxLeaseTTL  = 24 * time.Hour
	MaxIDLen     = 128
	MaxValueLen  = 4096
	MaxTags      = 64
	MaxMeta      = 64
	MaxChecks    = 32
	MaxTextLen   = 512
	MaxOutputLen = 4096
	MaxLockDelay = time.Minute
)

// ValidName reports whether s can be a service, node, lock or election name:
// a DNS label (RFC 1123), because each of them is looked up over DNS.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// ValidID reports whether s can be the ID of an instance, check, lease or
// candidate: 1 to 128 characters of letters, digits and . _ : @ -.
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > MaxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '_' || c == ':' || c == '@' || c == '-') {
			return false
		}
	}
	return true
}

// ValidStatus reports whether s is a check status.
func ValidStatus(s string) bool {
	return s == StatusPassing || s == StatusWarning || s == StatusCritical
}

func validNodeStatus(s string) bool {
	return s == NodeAlive || s == NodeFailed || s == NodeLeft
}

// ValidCheckType reports whether s is a check type.
func ValidCheckType(s string) bool {
	return s == "http" || s == "tcp" || s == "exec" || s == "ttl"
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

func checkName(what, s string) error {
	if !ValidName(s) {
		return invalid("%s %q is not a DNS label (1-63 letters, digits, '-')", what, s)
	}
	return nil
}

func checkID(what, s string) error {
	if !ValidID(s) {
		return invalid("%s %q must be 1-%d of letters, digits and . _ : @ -", what, s, MaxIDLen)
	}
	return nil
}

func checkLen(what, s string, max int) error {
	if len(s) > max {
		return invalid("%s is longer than %d bytes", what, max)
	}
	return nil
}

func checkMeta(m map[string]string) error {
	if len(m) > MaxMeta {
		return invalid("more than %d meta keys", MaxMeta)
	}
	for k, v := range m {
		if k == "" || len(k) > MaxIDLen {
			return invalid("meta key %q must be 1-%d bytes", k, MaxIDLen)
		}
		if err := checkLen("meta value", v, MaxTextLen); err != nil {
			return err
		}
	}
	return nil
}

func checkTTL(ttl int64) error {
	if ttl < int64(MinLeaseTTL) || ttl > int64(MaxLeaseTTL) {
		return invalid("lease ttl %v must be between %v and %v", time.Duration(ttl), MinLeaseTTL, MaxLeaseTTL)
	}
	return nil
}

// ValidateInstance checks an instance as a registration would write it.
func ValidateInstance(in *Instance) error {
	if err := checkID("instance id", in.ID); err != nil {
		return err
	}
	if err := checkName("service name", in.Name); err != nil {
		return err
	}
	if err := checkName("node", in.Node); err != nil {
		return err
	}
	if err := checkLen("address", in.Address, 255); err != nil {
		return err
	}
	if in.Port < 0 || in.Port > 65535 {
		return invalid("port %d is outside 0-65535", in.Port)
	}
	// 0 is an instance from before weights, served as DefaultWeight.
	if in.Weight < 0 || in.Weight > MaxWeight {
		return invalid("weight %d is outside 1-%d", in.Weight, MaxWeight)
	}
	if len(in.Tags) > MaxTags {
		return invalid("more than %d tags", MaxTags)
	}
	for _, t := range in.Tags {
		if t == "" || len(t) > 63 {
			return invalid("tag %q must be 1-63 bytes", t)
		}
	}
	if err := checkMeta(in.Meta); err != nil {
		return err
	}
	if in.Lease != "" {
		if err := checkID("lease", in.Lease); err != nil {
			return err
		}
	}
	if len(in.Checks) > MaxChecks {
		return invalid("more than %d checks", MaxChecks)
	}
	seen := map[string]bool{}
	for _, ch := range in.Checks {
		if err := checkID("check id", ch.ID); err != nil {
			return err
		}
		if seen[ch.ID] {
			return invalid("check id %q appears twice", ch.ID)
		}
		seen[ch.ID] = true
		if !ValidCheckType(ch.Type) {
			return invalid("check type %q is not http, tcp, exec or ttl", ch.Type)
		}
		if ch.Status != "" && !ValidStatus(ch.Status) {
			return invalid("check status %q is not passing, warning or critical", ch.Status)
		}
		if err := checkLen("check output", ch.Output, MaxOutputLen); err != nil {
			return err
		}
		if ch.TTL < 0 || ch.Interval < 0 || ch.Timeout < 0 || ch.DeregisterCriticalAfter < 0 ||
			ch.SuccessBeforePassing < 0 || ch.FailuresBeforeCritical < 0 {
			return invalid("check %q has a negative duration or threshold", ch.ID)
		}
	}
	return nil
}

func validate(cmd Command) error {
	switch c := cmd.(type) {
	case *RegisterNode:
		if err := checkName("node", c.Name); err != nil {
			return err
		}
		if err := checkLen("address", c.Address, 255); err != nil {
			return err
		}
		return checkMeta(c.Meta)
	case *DeregisterNode:
		return checkName("node", c.Name)
	case *SetNodeStatus:
		if !validNodeStatus(c.Status) {
			return invalid("node status %q", c.Status)
		}
		return checkName("node", c.Name)
	case *RegisterInstance:
		return ValidateInstance(&c.Instance)
	case *DeregisterInstance:
		if err := checkName("node", c.Node); err != nil {
			return err
		}
		return checkID("instance id", c.ID)
	case *UpdateCheck:
		if !ValidStatus(c.Status) {
			return invalid("check status %q is not passing, warning or critical", c.Status)
		}
		if err := checkLen("check output", c.Output, MaxOutputLen); err != nil {
			return err
		}
		if err := checkName("node", c.Node); err != nil {
			return err
		}
		return checkID("check id", c.CheckID)
	case *GrantLease:
		if c.ID != "" {
			if err := checkID("lease", c.ID); err != nil {
				return err
			}
		}
		if c.Node != "" {
			if err := checkName("node", c.Node); err != nil {
				return err
			}
		}
		return checkTTL(c.TTL)
	case *RevokeLease:
		return checkID("lease", c.ID)
	case *ExpireLease:
		return checkID("lease", c.ID)
	case *AcquireLock:
		if err := checkName("lock", c.Name); err != nil {
			return err
		}
		if c.LockDelay < 0 || c.LockDelay > int64(MaxLockDelay) {
			return invalid("lock delay %v must be between 0 and %v", time.Duration(c.LockDelay), MaxLockDelay)
		}
		if err := checkLen("value", c.Value, MaxValueLen); err != nil {
			return err
		}
		return checkID("lease", c.Lease)
	case *ReleaseLock:
		if err := checkName("lock", c.Name); err != nil {
			return err
		}
		return checkID("lease", c.Lease)
	case *Campaign:
		if err := checkName("election", c.Election); err != nil {
			return err
		}
		if err := checkID("candidate", c.Candidate); err != nil {
			return err
		}
		if c.Service != "" {
			if err := checkID("service instance", c.Service); err != nil {
				return err
			}
		}
		if err := checkLen("value", c.Value, MaxValueLen); err != nil {
			return err
		}
		return checkID("lease", c.Lease)
	case *Resign:
		if err := checkName("election", c.Election); err != nil {
			return err
		}
		return checkID("candidate", c.Candidate)
	case *Transfer:
		if err := checkName("election", c.Election); err != nil {
			return err
		}
		if err := checkID("candidate", c.From); err != nil {
			return err
		}
		if err := checkID("candidate", c.To); err != nil {
			return err
		}
		if c.From == c.To {
			return invalid("a transfer names two different candidates")
		}
		return nil
	case *ACLBootstrap:
		return validateToken(&c.Token)
	case *ACLSetToken:
		return validateToken(&c.Token)
	case *ACLDeleteToken:
		return checkID("token id", c.ID)
	}
	return nil
}
