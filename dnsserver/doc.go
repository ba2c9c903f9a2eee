// Package dnsserver is sidecar's DNS interface: it answers names of its
// domain (sidecar. by default) from the local copy of the registry and
// forwards other names to recursors.
//
// Names answered, matched without regard to case:
//
//	<svc>.service.<domain>              A, AAAA: passing instances, shuffled
//	                                    SRV: port and target per instance
//	_<svc>._tcp.service.<domain>        SRV (RFC 2782; _udp too; _<tag> filters)
//	<tag>[.<tag>...].<svc>.service.<domain>  the same, instances with every tag
//	<node>.node.<domain>                A, AAAA: the node's address
//	<election>.leader.<domain>          A, AAAA (CNAME when a host name),
//	                                    SRV, TXT "token=N"
//	<hex>.addr.<domain>                 A (8 hex digits), AAAA (32)
//
// An SRV target resolves to the instance's own address, and that address is
// in the additional section: <hex>.addr.<domain> for an instance registered
// with an IP (7f000001.addr.sidecar. is 127.0.0.1), <node>.node.<domain>
// for one registered without an address (it uses its node's), and the name
// itself for one registered with a host name. An instance whose address is
// a host name is left out of A and AAAA answers.
//
//	<domain>                            SOA, NS ns.<domain>; ns.<domain> A/AAAA
//
// Which names exist follows from one description of the name tree (zone.go):
// a name with nothing at or below it gets NXDOMAIN; an empty non-terminal
// (service., _tcp.service., node., leader., addr. while names exist below
// them) and a known name without records of the type asked get NOERROR with
// no answer (RFC 8020); both carry the SOA. ANY gets one HINFO record
// (RFC 8482). Answers over UDP that exceed 512 bytes, or the query's EDNS0
// size up to Config.MaxUDPSize, are truncated with TC set; over TCP they are
// whole. Every answer section is capped at Config.MaxRecords records. An
// answer that holds only some of a service's records keeps the same ones
// for the same asker while the service is unchanged, and other ones on
// other agents (weighted rendezvous hashing of the server's seed, the
// asker's address and the record). SRV records carry the instances'
// weights, and answers are shuffled in proportion to them.
//
// The registry is read through Registry, a narrow interface *fsm.FSM
// satisfies, and two optional capabilities found by type assertion: Lister
// (case-insensitive node and election names) and Watcher (service matches
// kept until the registry changes). A service answer is packed by hand in
// pooled memory: the handler allocates nothing for it. See README.md.
package dnsserver
