// Command loadgen sends DNS queries over UDP at a fixed rate for a bounded
// time and reports the rate achieved, the queries lost and latency
// percentiles. dnsperf (2.10, Debian 12) measures throughput but prints no
// percentiles unless -v prints every query; run.sh uses this when dnsperf
// cannot be installed.
//
//	loadgen -server 127.0.0.1:7053 -name bench.service.sidecar. -type SRV -rate 60000 -duration 10s
//
// Open loop: queries leave on schedule whether or not answers came back, so
// a slow server shows as latency and loss rather than as a lower rate.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

func main() { os.Exit(run(os.Args[1:])) }

// Bounds on what a run may ask, so that a typo cannot flood or hang.
const (
	maxDuration = time.Minute
	maxRate     = 1_000_000
	maxConns    = 64
)

func run(args []string) int {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	server := fs.String("server", "127.0.0.1:7053", "DNS server ip:port (loopback only)")
	name := fs.String("name", "bench.service.sidecar.", "name to query")
	qtype := fs.String("type", "SRV", "query type")
	rate := fs.Int("rate", 60000, "queries per second")
	duration := fs.Duration("duration", 10*time.Second, "how long to send")
	conns := fs.Int("conns", 4, "UDP sockets (each with its own query IDs)")
	timeout := fs.Duration("timeout", time.Second, "an answer later than this counts as lost")
	edns := fs.Int("edns", 0, "EDNS0 buffer size to advertise; 0: no EDNS0")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	t, ok := dns.StringToType[*qtype]
	switch {
	case !ok:
		return usage("unknown -type %q", *qtype)
	case *rate < 1 || *rate > maxRate:
		return usage("-rate must be 1-%d", maxRate)
	case *duration <= 0 || *duration > maxDuration:
		return usage("-duration must be positive and at most %v", maxDuration)
	case *conns < 1 || *conns > maxConns:
		return usage("-conns must be 1-%d", maxConns)
	case *timeout <= 0 || *timeout > 10*time.Second:
		return usage("-timeout must be positive and at most 10s")
	}
	host, _, err := net.SplitHostPort(*server)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		return usage("-server must be a loopback ip:port")
	}
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(*name), t)
	if *edns > 0 {
		q.SetEdns0(uint16(*edns), false)
	}
	query, err := q.Pack()
	if err != nil {
		return usage("cannot pack query: %v", err)
	}

	res, err := load(*server, query, *rate, *conns, *duration, *timeout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		return 1
	}
	res.print(os.Stdout, *name, *qtype)
	return 0
}

func usage(format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "loadgen: "+format+"\n", args...)
	return 2
}

// result sums up a run.
type result struct {
	elapsed             time.Duration
	sent, answered, tc  int64
	rcodes              map[int]int64
	hist                histogram
	sendErrs, malformed int64
	skipped             int64 // not sent: the sender was behind schedule
}

// histogram counts latencies in 10µs buckets up to 1s.
type histogram struct{ b [100_001]int64 }

const bucket = 10 * time.Microsecond

func (h *histogram) add(d time.Duration) {
	i := int(d / bucket)
	if i >= len(h.b) {
		i = len(h.b) - 1
	}
	h.b[i]++
}

func (h *histogram) merge(o *histogram) {
	for i, n := range o.b {
		h.b[i] += n
	}
}

// quantile is the upper bound of the bucket holding quantile q.
func (h *histogram) quantile(q float64, total int64) time.Duration {
	if total == 0 {
		return 0
	}
	want := min(int64(q*float64(total)), total-1)
	var seen int64
	for i, n := range h.b {
		seen += n
		if seen > want {
			return time.Duration(i+1) * bucket
		}
	}
	return time.Duration(len(h.b)) * bucket
}

// conn is one UDP socket with its own ID space: sent[id] is when the query
// of that ID left (monotonic ns since start), 0 when answered.
type conn struct {
	c    *net.UDPConn
	sent [1 << 16]atomic.Int64
	res  result
}

func load(server string, query []byte, rate, nconns int, duration, timeout time.Duration) (*result, error) {
	raddr, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		return nil, err
	}
	conns := make([]*conn, nconns)
	for i := range conns {
		c, err := net.DialUDP("udp", nil, raddr)
		if err != nil {
			for _, o := range conns[:i] {
				o.c.Close()
			}
			return nil, err
		}
		_ = c.SetReadBuffer(4 << 20)
		_ = c.SetWriteBuffer(4 << 20)
		conns[i] = &conn{c: c, res: result{rcodes: map[int]int64{}}}
	}
	start := time.Now()
	end := start.Add(duration)
	var wg sync.WaitGroup
	for i, c := range conns {
		perConn := float64(rate) / float64(nconns)
		wg.Add(2)
		go func() { defer wg.Done(); c.send(query, uint16(i), perConn, start, end) }()
		go func() { defer wg.Done(); c.receive(start, end.Add(timeout), timeout) }()
	}
	wg.Wait()
	total := &result{elapsed: duration, rcodes: map[int]int64{}}
	for _, c := range conns {
		c.c.Close()
		total.sent += c.res.sent
		total.answered += c.res.answered
		total.tc += c.res.tc
		total.sendErrs += c.res.sendErrs
		total.malformed += c.res.malformed
		total.skipped += c.res.skipped
		for k, v := range c.res.rcodes {
			total.rcodes[k] += v
		}
		total.hist.merge(&c.res.hist)
	}
	if total.sent == 0 {
		return nil, errors.New("nothing sent")
	}
	return total, nil
}

// send paces queries: every wake-up it sends what the schedule owes, then
// sleeps a little. It stops at end.
func (c *conn) send(query []byte, seed uint16, rate float64, start, end time.Time) {
	buf := append([]byte(nil), query...)
	id := seed * 4099
	burst := int64(rate/100) + 1 // 10 ms of queries
	for {
		now := time.Now()
		if !now.Before(end) {
			return
		}
		owed := int64(rate*now.Sub(start).Seconds()) - c.res.sent - c.res.skipped
		// After a stall of this process, skip what it could not send
		// rather than flood the server with a burst it never asked for.
		if owed > burst {
			c.res.skipped += owed - burst
			owed = burst
		}
		for ; owed > 0; owed-- {
			id++
			buf[0], buf[1] = byte(id>>8), byte(id)
			c.sent[id].Store(int64(time.Since(start)) | 1)
			if _, err := c.c.Write(buf); err != nil {
				c.res.sendErrs++
			}
			c.res.sent++
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// receive reads answers until deadline, timing each against its query.
func (c *conn) receive(start, deadline time.Time, timeout time.Duration) {
	buf := make([]byte, 65536)
	_ = c.c.SetReadDeadline(deadline)
	for {
		n, err := c.c.Read(buf)
		if err != nil {
			return // the deadline, or the socket closed
		}
		if n < 12 {
			c.res.malformed++
			continue
		}
		id := uint16(buf[0])<<8 | uint16(buf[1])
		at := c.sent[id].Swap(0)
		if at == 0 {
			continue // a duplicate, or an ID reused before its answer
		}
		lat := time.Since(start) - time.Duration(at&^1)
		if lat > timeout {
			continue // counted lost
		}
		c.res.answered++
		c.res.hist.add(lat)
		if buf[2]&0x02 != 0 {
			c.res.tc++
		}
		c.res.rcodes[int(buf[3]&0x0F)]++
	}
}

func (r *result) print(w *os.File, name, qtype string) {
	lost := r.sent - r.answered
	fmt.Fprintf(w, "loadgen %s %s: %d sent in %.1fs, %d answered (%.0f answers/s), %d lost (%.3f%%), %d truncated\n",
		qtype, name, r.sent, r.elapsed.Seconds(), r.answered, float64(r.answered)/r.elapsed.Seconds(),
		lost, 100*float64(lost)/float64(r.sent), r.tc)
	fmt.Fprintf(w, "  latency p50 %v  p90 %v  p99 %v  p99.9 %v  max<= %v\n",
		r.hist.quantile(0.5, r.answered), r.hist.quantile(0.9, r.answered),
		r.hist.quantile(0.99, r.answered), r.hist.quantile(0.999, r.answered),
		r.hist.quantile(1, r.answered))
	for code, n := range r.rcodes {
		fmt.Fprintf(w, "  rcode %s: %d\n", dns.RcodeToString[code], n)
	}
	if r.skipped > 0 {
		fmt.Fprintf(w, "  %d queries not sent: loadgen fell behind its schedule (CPU-starved)\n", r.skipped)
	}
	if r.sendErrs > 0 || r.malformed > 0 {
		fmt.Fprintf(w, "  send errors %d, malformed answers %d\n", r.sendErrs, r.malformed)
	}
}
