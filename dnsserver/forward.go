package dnsserver

import (
	"context"
	"log/slog"

	"github.com/miekg/dns"
)

// forward sends a query for a name outside the domain to the recursors in
// order, over the transport the client used, and relays the first answer.
// A recursor that does not answer in time or fails (SERVFAIL, REFUSED) is
// skipped for the next; when none answers well the client gets the last
// failure, or SERVFAIL. Without recursors the answer is REFUSED.
func (s *Server) forward(sc *scratch, w dns.ResponseWriter, r *dns.Msg, tcp bool, udpSize int) int {
	m := &sc.msg
	if len(s.cfg.Recursors) == 0 {
		m.Rcode = dns.RcodeRefused
		return s.write(w, sc, m, udpSize)
	}
	client := s.udpClient
	if tcp {
		client = s.tcpClient
	}
	var failed *dns.Msg
	for _, addr := range s.cfg.Recursors {
		if s.closing.Load() {
			break
		}
		resp, _, err := client.Exchange(r, addr)
		if err != nil {
			s.debug("recursor failed", "recursor", addr, "name", r.Question[0].Name, "err", err)
			continue
		}
		if resp.Rcode == dns.RcodeServerFailure || resp.Rcode == dns.RcodeRefused {
			s.debug("recursor refused", "recursor", addr, "name", r.Question[0].Name, "rcode", dns.RcodeToString[resp.Rcode])
			failed = resp
			continue
		}
		return s.relay(w, resp, udpSize)
	}
	if failed != nil {
		return s.relay(w, failed, udpSize)
	}
	m.Rcode = dns.RcodeServerFailure
	m.RecursionAvailable = true
	return s.write(w, sc, m, udpSize)
}

// relay sends a recursor's answer on, cut to the client's UDP size.
func (s *Server) relay(w dns.ResponseWriter, resp *dns.Msg, udpSize int) int {
	if udpSize > 0 {
		resp.Truncate(udpSize)
	}
	if err := w.WriteMsg(resp); err != nil {
		s.debug("cannot write answer", "err", err)
	}
	return resp.Rcode
}

func (s *Server) debug(msg string, args ...any) {
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.log.Debug(msg, args...)
	}
}
