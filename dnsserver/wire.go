package dnsserver

import (
	"encoding/binary"

	"github.com/miekg/dns"
)

// Service answers are the hot path (SPEC's goal: tens of thousands of SRV
// queries a second on two cores), and miekg/dns's general packer spends most
// of their time in its compression map. Their shape is fixed, so they are
// packed here by hand instead: owner names point at the question, address
// records point at the SRV target they belong to, and SRV targets
// themselves are written whole, as RFC 2782 requires. Every other answer
// goes through miekg/dns.

// Header flag bits (RFC 1035 4.1.1).
const (
	flagQR = 1 << 15
	flagAA = 1 << 10
	flagTC = 1 << 9
	flagRD = 1 << 8
	flagRA = 1 << 7
	flagCD = 1 << 4
)

const (
	headerLen = 12
	optLen    = 11     // root name, type, class, TTL, RDLENGTH 0
	ptrQName  = 0xC00C // compression pointer to the question's name
	maxPtr    = 0x3FFF // compression pointers address the first 16 KB
)

// appendName appends a fully-qualified name without escapes in wire format.
// It reports false for names DNS cannot carry (empty labels, labels over 63
// bytes, names over 255).
func appendName(b []byte, name string) ([]byte, bool) {
	if name == "." {
		return append(b, 0), true
	}
	if len(name) == 0 || len(name) > 254 || name[len(name)-1] != '.' {
		return b, false
	}
	start := 0
	for i := 0; i < len(name); i++ {
		if name[i] != '.' {
			continue
		}
		n := i - start
		if n == 0 || n > 63 {
			return b, false
		}
		b = append(b, byte(n))
		b = append(b, name[start:i]...)
		start = i + 1
	}
	return append(b, 0), true
}

func appendRRHeader(b []byte, rrtype uint16, ttl uint32) []byte {
	b = binary.BigEndian.AppendUint16(b, rrtype)
	b = binary.BigEndian.AppendUint16(b, dns.ClassINET)
	return binary.BigEndian.AppendUint32(b, ttl)
}

// appendAddr appends the type, class, TTL and RDATA of an A or AAAA record
// of ip, after its owner name.
func appendAddr(b []byte, t target, ttl uint32) []byte {
	if t.ip.Is4() {
		b = appendRRHeader(b, dns.TypeA, ttl)
		b = binary.BigEndian.AppendUint16(b, 4)
		a := t.ip.As4()
		return append(b, a[:]...)
	}
	b = appendRRHeader(b, dns.TypeAAAA, ttl)
	b = binary.BigEndian.AppendUint16(b, 16)
	a := t.ip.As16()
	return append(b, a[:]...)
}

// packService packs the answer to an A, AAAA or SRV query of a service from
// sc.picks, in their order, into sc.buf. Over UDP the answer stops at the
// first record that does not fit udpSize (the caller chose picks that fit:
// this is a safeguard), and at the first additional record that does not,
// and sets TC. forceTC sets TC and leaves the additional section out: the
// picks are what was kept of a cut answer. It returns nil, having packed
// nothing, when no pick gives a record and TC is not set, or when the
// question cannot be packed; the caller then answers through miekg/dns.
func (s *Server) packService(sc *scratch, q *dns.Question, forceTC bool) []byte {
	r, udpSize, hasOpt := sc.req, sc.udpSize, sc.hasOpt
	limit := udpSize
	if limit == 0 {
		limit = dns.MaxMsgSize
	}
	if hasOpt {
		limit -= optLen
	}
	b := append(sc.buf[:0], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0) // header, set last
	b, ok := appendName(b, q.Name)
	if !ok {
		return nil
	}
	b = binary.BigEndian.AppendUint16(b, q.Qtype)
	b = binary.BigEndian.AppendUint16(b, q.Qclass)

	picks := sc.picks
	an, ar, tc, cut := 0, 0, forceTC, false
	ttl := ttlSeconds(s.cfg.ServiceTTL)
	if q.Qtype == dns.TypeSRV {
		for i := range picks {
			p := &picks[i]
			// equivalent mutant: a pick is left unpacked only when the answer is cut, and then (TC) no additional record reads off.
			p.off = -1
			if p.t.wire == "" || cut {
				continue
			}
			start := len(b)
			b = binary.BigEndian.AppendUint16(b, ptrQName)
			b = appendRRHeader(b, dns.TypeSRV, ttl)
			rdlen := len(b)
			// RDLENGTH (set below), priority 1 for all, the weight.
			b = append(b, 0, 0, 0, 1)
			b = binary.BigEndian.AppendUint16(b, p.weight)
			b = binary.BigEndian.AppendUint16(b, p.port)
			off := len(b)
			b = append(b, p.t.wire...)
			if len(b) > limit {
				b, tc, cut = b[:start], true, true
				continue
			}
			binary.BigEndian.PutUint16(b[rdlen:], uint16(len(b)-rdlen-2))
			p.off = off
			an++
		}
		if !tc {
			sc.newAnswer()
			for i := range picks {
				p := &picks[i]
				// equivalent mutant: a packed target's offset lies past the header and question, never 0 (<= for <).
				if p.off < 0 || !p.t.ip.IsValid() || !sc.firstExtra(p) {
					continue
				}
				start := len(b)
				if p.off <= maxPtr {
					b = binary.BigEndian.AppendUint16(b, 0xC000|uint16(p.off))
				} else {
					b = append(b, p.t.wire...)
				}
				b = appendAddr(b, p.t, p.ttl)
				if len(b) > limit {
					b, tc = b[:start], true
					break
				}
				ar++
			}
		}
	} else {
		want4 := q.Qtype == dns.TypeA
		for i := range picks {
			t := picks[i].t
			if !t.ip.IsValid() || t.ip.Is4() != want4 {
				continue
			}
			start := len(b)
			b = binary.BigEndian.AppendUint16(b, ptrQName)
			b = appendAddr(b, t, ttl)
			if len(b) > limit {
				b, tc, cut = b[:start], true, true
				break
			}
			an++
		}
	}
	if an == 0 && !tc {
		return nil
	}
	if hasOpt {
		b = append(b, 0, byte(dns.TypeOPT>>8), byte(dns.TypeOPT)) // root name, type
		b = binary.BigEndian.AppendUint16(b, uint16(s.cfg.MaxUDPSize))
		b = append(b, 0, 0, 0, 0, 0, 0) // extended rcode, version, flags; RDLENGTH 0
		ar++
	}
	flags := uint16(flagQR|flagAA) | uint16(r.Opcode&0xF)<<11
	if tc {
		flags |= flagTC
	}
	if r.RecursionDesired {
		flags |= flagRD
	}
	if len(s.cfg.Recursors) > 0 {
		flags |= flagRA
	}
	if r.CheckingDisabled {
		flags |= flagCD
	}
	binary.BigEndian.PutUint16(b[0:], r.Id)
	binary.BigEndian.PutUint16(b[2:], flags)
	binary.BigEndian.PutUint16(b[4:], 1)
	binary.BigEndian.PutUint16(b[6:], uint16(an))
	binary.BigEndian.PutUint16(b[8:], 0)
	binary.BigEndian.PutUint16(b[10:], uint16(ar))
	return b
}
