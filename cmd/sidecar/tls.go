package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sidecarhq/sidecar/tlsutil"
)

type tlsSubcommand struct {
	words, args, summary string
	run                  func(s *streams, args []string) error
}

// tlsSubcommands are "sidecar tls ..." in --help order.
var tlsSubcommands []tlsSubcommand

func init() {
	// Assigned in init because the subcommands' help refers back to the table.
	tlsSubcommands = []tlsSubcommand{
		{"ca create", "[--dir D] [--days N]", "make a cluster CA: " + tlsutil.CACertFile + " and " + tlsutil.CAKeyFile + " in D", cmdTLSCACreate},
		{"cert create", "--server|--client --node NAME [--dir D] [--ca FILE --ca-key FILE] [--days N] [--domain D] [--san NAME|IP]...",
			"make an agent certificate signed by the CA: NAME.pem and NAME-key.pem in D", cmdTLSCertCreate},
	}
}

// cmdTLS makes the files of SPEC's Security → Transport: a CA, then one
// certificate per agent. It never talks to an agent.
func cmdTLS(_ context.Context, s *streams, args []string) error {
	switch {
	case len(args) == 0:
		return usageErrorf("tls: want 'ca create' or 'cert create' (run 'sidecar tls --help')")
	case isHelp(args[0]):
		tlsUsage(s.stdout)
		return errHelp
	}
	for _, sc := range tlsSubcommands {
		noun, verb, _ := strings.Cut(sc.words, " ")
		if args[0] != noun {
			continue
		}
		switch {
		case len(args) < 2:
			return usageErrorf("tls %s: want 'tls %s'", noun, sc.words)
		case isHelp(args[1]):
			tlsUsage(s.stdout)
			return errHelp
		case args[1] == verb:
			return sc.run(s, args[2:])
		}
	}
	return usageErrorf("tls: unknown subcommand %q (want 'ca create' or 'cert create')", strings.Join(args[:min(2, len(args))], " "))
}

func isHelp(a string) bool { return a == "-h" || a == "-help" || a == "--help" || a == "help" }

func tlsUsage(w io.Writer) {
	fmt.Fprintln(w, "Usage: sidecar tls SUBCOMMAND [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Makes the TLS files of the Raft/RPC port: one CA per cluster, one certificate per agent.")
	fmt.Fprintln(w, "Existing files are never overwritten. Keys are written with mode 0600.")
	fmt.Fprintln(w)
	for _, sc := range tlsSubcommands {
		fmt.Fprintf(w, "  sidecar tls %s %s\n        %s\n", sc.words, sc.args, sc.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'sidecar tls SUBCOMMAND --help' for its flags.")
}

// tlsFlagError is flagError for the two-word subcommands.
func tlsFlagError(s *streams, fs *flag.FlagSet, err error) error {
	if !errors.Is(err, flag.ErrHelp) {
		return usageErrorf("%s: %v", fs.Name(), err)
	}
	for _, sc := range tlsSubcommands {
		if fs.Name() == "tls "+sc.words {
			fmt.Fprintf(s.stdout, "Usage: sidecar tls %s %s\n\n%s.\n\nFlags:\n", sc.words, sc.args, sc.summary)
		}
	}
	fs.VisitAll(func(f *flag.Flag) {
		arg, usage := flag.UnquoteUsage(f)
		if arg != "" {
			arg = " " + arg
		}
		def := ""
		if f.DefValue != "" && f.DefValue != "false" {
			def = fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(s.stdout, "  --%s%s\n        %s%s\n", f.Name, arg, usage, def)
	})
	return errHelp
}

func cmdTLSCACreate(s *streams, args []string) error {
	fs := newFlagSet("tls ca create")
	dir := fs.String("dir", ".", "`DIR` to write the files in (created if missing)")
	days := fs.Int("days", tlsutil.DefaultCADays, "validity of the CA in `DAYS`")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return tlsFlagError(s, fs, err)
	}
	if err := wantArgs(fs, pos, 0, ""); err != nil {
		return err
	}
	if *days <= 0 {
		return usageErrorf("tls ca create: --days must be a positive number of days")
	}
	ca, err := tlsutil.NewCA(*days, time.Now())
	if err != nil {
		return fmt.Errorf("tls ca create: %w", err)
	}
	certPath, keyPath, err := tlsutil.WriteCA(*dir, ca)
	if err != nil {
		return fmt.Errorf("tls ca create: %w", err)
	}
	fmt.Fprintf(s.stdout, "created %s\ncreated %s (keep it secret: it signs every agent's certificate)\n", certPath, keyPath)
	return nil
}

func cmdTLSCertCreate(s *streams, args []string) error {
	fs := newFlagSet("tls cert create")
	server := fs.Bool("server", false, "a server certificate (server.<domain>): the agent may be a Raft voter")
	client := fs.Bool("client", false, "a client certificate (client.<domain>)")
	node := fs.String("node", "", "the agent's node `NAME` (its --name); also names the files")
	dir := fs.String("dir", ".", "`DIR` to write the files in, and where the CA is read from by default")
	caFile := fs.String("ca", "", "CA certificate `FILE` (default DIR/"+tlsutil.CACertFile+")")
	caKeyFile := fs.String("ca-key", "", "CA key `FILE` (default DIR/"+tlsutil.CAKeyFile+")")
	days := fs.Int("days", tlsutil.DefaultCertDays, "validity in `DAYS`")
	defDomain := os.Getenv("SIDECAR_DOMAIN")
	if defDomain == "" {
		defDomain = "sidecar."
	}
	domain := fs.String("domain", defDomain, "the agents' DNS `DOMAIN` (their --domain; $SIDECAR_DOMAIN)")
	var sans stringsFlag
	fs.Var(&sans, "san", "another DNS `NAME or IP` the agent's HTTPS API is reached by (repeatable, or a comma list); localhost, 127.0.0.1 and ::1 are always in")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return tlsFlagError(s, fs, err)
	}
	if err := wantArgs(fs, pos, 0, ""); err != nil {
		return err
	}
	var role tlsutil.Role
	switch {
	case *server && *client:
		return usageErrorf("tls cert create: --server and --client exclude each other")
	case *server:
		role = tlsutil.RoleServer
	case *client:
		role = tlsutil.RoleClient
	default:
		return usageErrorf("tls cert create: want --server or --client")
	}
	if *node == "" {
		return usageErrorf("tls cert create: missing --node NAME")
	}
	if err := tlsutil.ValidNodeName(*node); err != nil {
		return usageErrorf("tls cert create: --node: %v", err)
	}
	if (*caFile == "") != (*caKeyFile == "") {
		return usageErrorf("tls cert create: --ca and --ca-key go together")
	}
	if *days <= 0 {
		return usageErrorf("tls cert create: --days must be a positive number of days")
	}
	if _, err := tlsutil.NormalizeDomain(*domain); err != nil {
		return usageErrorf("tls cert create: --domain: %v", err)
	}
	var extraDNS []string
	var extraIPs []net.IP
	for _, v := range sans {
		for _, n := range splitList(v) {
			if ip := net.ParseIP(n); ip != nil {
				extraIPs = append(extraIPs, ip)
			} else if err := tlsutil.ValidExtraDNS(n, *domain); err != nil {
				return usageErrorf("tls cert create: --san: %v", err)
			} else {
				extraDNS = append(extraDNS, n)
			}
		}
	}
	if *caFile == "" {
		*caFile, *caKeyFile = filepath.Join(*dir, tlsutil.CACertFile), filepath.Join(*dir, tlsutil.CAKeyFile)
	}
	ca, err := readCA(*caFile, *caKeyFile)
	if err != nil {
		return fmt.Errorf("tls cert create: %w", err)
	}
	certPEM, keyPEM, err := ca.Issue(tlsutil.CertRequest{Role: role, Node: *node, Domain: *domain, Days: *days, ExtraDNS: extraDNS, ExtraIPs: extraIPs})
	if err != nil {
		return fmt.Errorf("tls cert create: %w", err)
	}
	certPath, keyPath, err := tlsutil.WriteCert(*dir, *node, certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("tls cert create: %w", err)
	}
	fmt.Fprintf(s.stdout, "created %s (%s %s)\ncreated %s\n", certPath, role, *node, keyPath)
	return nil
}

func readCA(certFile, keyFile string) (*tlsutil.CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no CA at %s (make one with 'sidecar tls ca create', or name it with --ca and --ca-key)", certFile)
	}
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	ca, err := tlsutil.ParseCA(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA %s with key %s: %w", certFile, keyFile, err)
	}
	return ca, nil
}
