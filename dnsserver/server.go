package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/sidecarhq/sidecar/fsm"
)

// Errors of the server's life cycle.
var (
	ErrClosed = errors.New("dnsserver: server closed")
)

// udpReadSize is the buffer a query is read into: a query is one name of at
// most 255 bytes plus EDNS0 options, so 4096 bytes read any query whole.
const udpReadSize = 4096

// udpSocketBuffer is the UDP receive buffer asked of the kernel (which caps
// it at net.core.rmem_max). The usual default, 208 KB, holds about 270
// queries (each datagram costs ~768 bytes of kernel memory): 5 ms at 60k
// queries/s, so a scheduling hiccup of the process drops queries, and a
// stub resolver retries only after seconds. 4 MB holds ~80 ms.
const udpSocketBuffer = 4 << 20

// Server answers DNS queries for a domain from the registry and forwards
// other names to recursors. It is a dns.Handler (ServeDNS) and, after Start,
// also serves UDP and TCP on one address.
type Server struct {
	cfg    Config
	reg    Registry
	lister Lister // nil when reg does not list names
	// svcLister is nil when reg does not list services.
	svcLister ServiceLister
	watcher   Watcher // nil when reg cannot tell when it changes
	services  svcCache
	leases    Leases // nil: leader answers get TTL 0
	log       *slog.Logger
	metrics   *metrics
	soa       *dns.SOA
	ns        *dns.NS
	// nsAddr is where ns.<domain> points; set again by Start, which learns
	// the address served.
	nsAddr atomic.Pointer[nsAddr]
	// seed is this server's own, so that agents truncate differently.
	seed    uint64
	targets *targetCache
	pool    sync.Pool

	foldNodes, foldElections *foldIndex

	udpClient, tcpClient *dns.Client

	mu       sync.Mutex
	started  bool
	udp, tcp *dns.Server
	addr     string
	errc     chan error
	wg       sync.WaitGroup

	closing   atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// New checks cfg and returns a server reading reg. leases tells how long
// leaders' leases are surely live; nil gives leader answers TTL 0. The
// server's metrics are registered on cfg.Registerer, so a registerer takes
// one server only. Nothing is listened on before Start.
func New(cfg Config, reg Registry, leases Leases) (*Server, error) {
	if reg == nil {
		return nil, fmt.Errorf("%w: nil registry", ErrConfig)
	}
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	met, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:     cfg,
		reg:     reg,
		leases:  leases,
		log:     cfg.Logger.With("component", "dns"),
		metrics: met,
		targets: newTargetCache(cfg.Domain),
		errc:    make(chan error, 2),
		udpClient: &dns.Client{
			Net:     "udp",
			Timeout: cfg.RecursorTimeout,
		},
		tcpClient: &dns.Client{
			Net:     "tcp",
			Timeout: cfg.RecursorTimeout,
		},
		foldNodes:     newFoldIndex(fsm.TableNodes, nodeNames),
		foldElections: newFoldIndex(fsm.TableElections, electionNames),
	}
	if l, ok := reg.(Lister); ok {
		s.lister = l
	}
	if w, ok := reg.(Watcher); ok {
		s.watcher = w
	}
	if l, ok := reg.(ServiceLister); ok {
		s.svcLister = l
	}
	s.seed = agentSeed(cfg.NodeName, cfg.Addr)
	s.setNSAddr(cfg.Addr)
	neg := ttlSeconds(cfg.ServiceTTL)
	s.soa = &dns.SOA{
		// The SOA's TTL and minimum bound negative caching (RFC 2308):
		// a service registered after an NXDOMAIN is seen within them.
		Hdr:  dns.RR_Header{Name: cfg.Domain, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: neg},
		Ns:   "ns." + cfg.Domain,
		Mbox: "hostmaster." + cfg.Domain,
		// The zone is never transferred, so the serial only needs to be
		// plausible; the start time is.
		Serial: uint32(time.Now().Unix()),
		// Refresh 1h, retry 10m, expire 1d: RFC 1912's suggestions, unused
		// since no secondary exists.
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  neg,
	}
	s.ns = &dns.NS{
		Hdr: dns.RR_Header{Name: cfg.Domain, Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: neg},
		Ns:  s.soa.Ns,
	}
	s.pool.New = func() any { return s.newScratch() }
	return s, nil
}

// nsAddr is the address of ns.<domain>.
type nsAddr struct {
	ip       netip.Addr // invalid: the address of node NodeName
	loopback netip.Addr // when NodeName's address is unknown too
}

// setNSAddr sets the address of ns.<domain> from the address served, unless
// Config.NSAddr names one.
func (s *Server) setNSAddr(addr string) {
	if ip, ok := parseIP(s.cfg.NSAddr); ok {
		s.nsAddr.Store(&nsAddr{ip: ip})
		return
	}
	host, _, _ := net.SplitHostPort(addr)
	if ip, ok := parseIP(host); ok && !ip.IsUnspecified() {
		s.nsAddr.Store(&nsAddr{ip: ip})
		return
	}
	// A wildcard: the node's advertised address, else loopback, which a
	// wildcard also listens on.
	a := &nsAddr{loopback: netip.IPv6Loopback()}
	if host == "" || strings.Contains(host, ".") {
		a.loopback = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	s.nsAddr.Store(a)
}

// nsIP is the address of ns.<domain>: this server's.
func (s *Server) nsIP() netip.Addr {
	a := s.nsAddr.Load()
	if a.ip.IsValid() {
		return a.ip
	}
	if s.cfg.NodeName != "" {
		if n, ok := s.reg.Node(s.cfg.NodeName); ok {
			if ip, ok := parseIP(n.Address); ok && !ip.IsUnspecified() {
				return ip
			}
		}
	}
	return a.loopback
}

// Start listens on cfg.Addr over UDP and TCP and serves in the background
// until Close. It returns once both listeners are serving. Calling it again
// does nothing.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return ErrClosed
	}
	if s.started {
		return nil
	}
	pc, ln, err := listen(s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("dnsserver: listen on %s: %w", s.cfg.Addr, err)
	}
	s.addr = ln.Addr().String()
	s.setNSAddr(s.addr)
	s.udp = &dns.Server{PacketConn: pc, Handler: s, UDPSize: udpReadSize}
	s.tcp = &dns.Server{Listener: ln, Handler: s}
	ready := make(chan struct{}, 2)
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		srv.NotifyStartedFunc = func() { ready <- struct{}{} }
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			// equivalent mutant: ActivateAndServe fails before Close only on a socket error that no test can provoke.
			if err := srv.ActivateAndServe(); err != nil && !s.closing.Load() {
				s.errc <- err
			}
		}()
	}
	for range 2 {
		select {
		case <-ready:
		case err := <-s.errc:
			// One of them failed before serving: stop the other.
			s.started = true
			s.mu.Unlock()
			_ = s.Close()
			s.mu.Lock()
			return fmt.Errorf("dnsserver: serve on %s: %w", s.addr, err)
		}
	}
	s.started = true
	s.log.Info("dns server listening", "addr", s.addr, "domain", s.cfg.Domain, "recursors", s.cfg.Recursors)
	return nil
}

// listen binds TCP and then UDP on the same address. With port 0 the UDP
// port TCP got may be taken; a few other ports are tried then.
func listen(addr string) (net.PacketConn, net.Listener, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, err
	}
	// 20 tries: a random free TCP port is busy over UDP rarely, twenty
	// times in a row practically never.
	for range 20 {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, nil, err
		}
		ta := ln.Addr().(*net.TCPAddr)
		pc, err := net.ListenPacket("udp", net.JoinHostPort(ta.IP.String(), strconv.Itoa(ta.Port)))
		if err == nil {
			if uc, ok := pc.(*net.UDPConn); ok {
				_ = uc.SetReadBuffer(udpSocketBuffer) // best effort
			}
			return pc, ln, nil
		}
		_ = ln.Close()
		if port != "0" {
			return nil, nil, err
		}
	}
	return nil, nil, errors.New("no port free over both UDP and TCP")
}

// Run starts the server unless it runs already, serves until ctx is done or
// a listener fails, then closes it. It returns nil after ctx is done.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Start(); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		return s.Close()
	case err := <-s.errc:
		_ = s.Close()
		return fmt.Errorf("dnsserver: serve on %s: %w", s.Addr(), err)
	}
}

// Addr is the address served (UDP and TCP), "" before Start.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Close stops serving, waits for the queries in flight (forwarding stops
// after the recursor it is waiting for) and releases the listeners. It is
// safe to call twice, and before Start.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.closing.Store(true)
		s.mu.Lock()
		udp, tcp := s.udp, s.tcp
		s.mu.Unlock()
		// A query in flight takes at most one recursor timeout more.
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RecursorTimeout+5*time.Second)
		defer cancel()
		var errs []error
		for _, srv := range []*dns.Server{udp, tcp} {
			if srv == nil {
				continue
			}
			// equivalent mutant: a started server's shutdown fails only past this deadline, which a query in flight never reaches; a nil appended on success joins to nil
			if err := srv.ShutdownContext(ctx); err != nil {
				errs = append(errs, err)
			}
		}
		s.wg.Wait()
		if err := errors.Join(errs...); err != nil {
			s.closeErr = fmt.Errorf("dnsserver: close: %w", err)
		}
		if udp != nil {
			s.log.Info("dns server stopped", "addr", s.Addr())
		}
	})
	return s.closeErr
}
