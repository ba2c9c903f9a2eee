package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sidecarhq/sidecar/api"
)

// newFlagSet returns a flag set that reports errors to its caller instead of
// printing them, so every failure stays one line.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// parseFlags parses args allowing flags after positional arguments
// ("services web --json"), which the flag package alone does not. Everything
// after "--" is positional, verbatim.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos, tail []string
	for i, a := range args {
		if a == "--" {
			args, tail = args[:i], args[i+1:]
			break
		}
	}
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return append(pos, tail...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// flagError turns a parse error into --help output or a usage error.
func flagError(s *streams, fs *flag.FlagSet, err error) error {
	if !errors.Is(err, flag.ErrHelp) {
		return usageErrorf("%s: %v", fs.Name(), err)
	}
	c := commandByName(fs.Name())
	fmt.Fprintf(s.stdout, "Usage: sidecar %s %s\n\n%s%s.\n", c.name, c.args, strings.ToUpper(c.summary[:1]), c.summary[1:])
	var flags []*flag.Flag
	fs.VisitAll(func(f *flag.Flag) { flags = append(flags, f) })
	if len(flags) > 0 {
		fmt.Fprintln(s.stdout, "\nFlags:")
		for _, f := range flags {
			arg, usage := flag.UnquoteUsage(f)
			if arg != "" {
				arg = " " + strings.ToUpper(arg)
			}
			def := ""
			if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0s" && f.DefValue != "[]" && f.DefValue != "-1" {
				def = fmt.Sprintf(" (default %s)", f.DefValue)
			}
			fmt.Fprintf(s.stdout, "  --%s%s\n        %s%s\n", f.Name, arg, usage, def)
		}
	}
	return errHelp
}

// agentFlags are the flags of every client command: where the local agent
// is, and the ACL token to send it.
type agentFlags struct {
	fs        *flag.FlagSet
	addr      string
	token     string
	tokenFile string
}

// addrFlag registers --http-addr, --token and --token-file on fs. The token
// flags have no default shown in --help: a secret from the environment
// must not be printed.
func addrFlag(fs *flag.FlagSet) *agentFlags {
	def := os.Getenv("SIDECAR_HTTP_ADDR")
	if def == "" {
		def = api.DefaultAddr
	}
	af := &agentFlags{fs: fs}
	fs.StringVar(&af.addr, "http-addr", def, "`address` of the local agent's HTTP API ($SIDECAR_HTTP_ADDR)")
	fs.StringVar(&af.token, "token", "", "ACL token `secret` to send ($SIDECAR_TOKEN)")
	fs.StringVar(&af.tokenFile, "token-file", "", "`file` holding the ACL token's secret ($SIDECAR_TOKEN_FILE)")
	return af
}

// secret returns the token to send: --token, else the content of
// --token-file, else $SIDECAR_TOKEN, else the content of
// $SIDECAR_TOKEN_FILE, else none. A flag wins over the environment.
func (af *agentFlags) secret() (string, error) {
	set := map[string]bool{}
	af.fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	switch {
	case set["token"] && set["token-file"]:
		return "", usageErrorf("%s: give --token or --token-file, not both", af.fs.Name())
	case set["token"]:
		return checkSecret(af.fs.Name(), "--token", af.token)
	case set["token-file"]:
		return readSecretFile(af.fs.Name(), "--token-file", af.tokenFile)
	}
	if v, ok := os.LookupEnv("SIDECAR_TOKEN"); ok && v != "" {
		return checkSecret(af.fs.Name(), "SIDECAR_TOKEN", v)
	}
	if v := os.Getenv("SIDECAR_TOKEN_FILE"); v != "" {
		return readSecretFile(af.fs.Name(), "SIDECAR_TOKEN_FILE", v)
	}
	return "", nil
}

// maxSecretFile bounds what a token file may hold: a secret is a few dozen
// bytes.
const maxSecretFile = 4096

func readSecretFile(cmd, what, path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%s: %s: %w", cmd, what, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return "", fmt.Errorf("%s: %s: %w", cmd, what, err)
	}
	if len(b) > maxSecretFile {
		return "", fmt.Errorf("%s: %s %s: longer than %d bytes, not a token", cmd, what, path, maxSecretFile)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s: %s %s is empty", cmd, what, path)
	}
	return checkSecret(cmd, what+" "+path, s)
}

// checkSecret refuses what the agent would refuse as a token (400), with a
// message that never shows the secret.
func checkSecret(cmd, what, s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", usageErrorf("%s: %s is empty", cmd, what)
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return "", usageErrorf("%s: %s holds a space or control character", cmd, what)
		}
	}
	return s, nil
}

// newClient builds the client of the agent at --http-addr that sends the
// token of the flags or the environment.
func newClient(af *agentFlags) (*api.Client, error) {
	c, err := api.NewClient(af.addr)
	if err != nil {
		return nil, usageErrorf("--http-addr: %v", err)
	}
	if c.Token, err = af.secret(); err != nil {
		return nil, err
	}
	return c, nil
}

// stringsFlag is a repeatable flag.
type stringsFlag []string

func (f *stringsFlag) String() string     { return strings.Join(*f, ",") }
func (f *stringsFlag) Set(v string) error { *f = append(*f, v); return nil }

func wantArgs(fs *flag.FlagSet, pos []string, n int, what string) error {
	switch {
	case len(pos) < n:
		return usageErrorf("%s: missing %s", fs.Name(), what)
	case len(pos) > n:
		return usageErrorf("%s: unexpected argument %q", fs.Name(), pos[n])
	}
	return nil
}

// clientArgs parses a client command's flags, wants n positional arguments
// (what names them), and builds the client of the agent at addr.
func clientArgs(s *streams, fs *flag.FlagSet, addr *agentFlags, args []string, n int, what string) ([]string, *api.Client, error) {
	pos, err := parseFlags(fs, args)
	if err != nil {
		return nil, nil, flagError(s, fs, err)
	}
	if err := wantArgs(fs, pos, n, what); err != nil {
		return nil, nil, err
	}
	c, err := newClient(addr)
	if err != nil {
		return nil, nil, err
	}
	return pos, c, nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
}

func cmdMembers(ctx context.Context, s *streams, args []string) error {
	fs := newFlagSet("members")
	addr := addrFlag(fs)
	asJSON := fs.Bool("json", false, "print the raw JSON answer")
	_, c, err := clientArgs(s, fs, addr, args, 0, "")
	if err != nil {
		return err
	}
	ms, err := c.Members(ctx)
	if err != nil {
		return fmt.Errorf("members: %w", err)
	}
	if *asJSON {
		return printJSON(s.stdout, ms)
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Name < ms[j].Name })
	tw := newTable(s.stdout)
	fmt.Fprintln(tw, "NAME\tADDRESS\tROLE\tSTATUS")
	for _, m := range ms {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.Name, joinHostPort(m.Addr, m.Port), m.Role, m.Status)
	}
	return tw.Flush()
}

func joinHostPort(host string, port int) string {
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port == 0 {
		return host
	}
	return host + ":" + strconv.Itoa(port)
}

func cmdStatus(ctx context.Context, s *streams, args []string) error {
	fs := newFlagSet("status")
	addr := addrFlag(fs)
	asJSON := fs.Bool("json", false, "print the raw JSON answer")
	_, c, err := clientArgs(s, fs, addr, args, 0, "")
	if err != nil {
		return err
	}
	st, err := c.Status(ctx)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if *asJSON {
		return printJSON(s.stdout, st)
	}
	leader := st.Leader
	if leader == "" {
		leader = "(none)"
	}
	tw := newTable(s.stdout)
	fmt.Fprintf(tw, "node\t%s\n", st.Node)
	fmt.Fprintf(tw, "role\t%s\n", st.Role)
	fmt.Fprintf(tw, "leader\t%s\n", leader)
	fmt.Fprintf(tw, "term\t%d\n", st.Term)
	fmt.Fprintf(tw, "commit index\t%d\n", st.CommitIndex)
	fmt.Fprintf(tw, "applied index\t%d\n", st.AppliedIndex)
	fmt.Fprintf(tw, "registry index\t%d\n", st.RegistryIndex)
	fmt.Fprintf(tw, "registry digest\t%s\n", st.Digest)
	if st.StreamServer != "" {
		fmt.Fprintf(tw, "stream server\t%s\n", st.StreamServer)
	}
	fmt.Fprintf(tw, "peers\t%s\n", strings.Join(st.Peers, ", "))
	return tw.Flush()
}

func cmdServices(ctx context.Context, s *streams, args []string) error {
	fs := newFlagSet("services")
	addr := addrFlag(fs)
	asJSON := fs.Bool("json", false, "print the raw JSON answer")
	passing := fs.Bool("passing", false, "with NAME: only instances whose checks pass")
	tag := fs.String("tag", "", "with NAME: only instances carrying `tag`")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return flagError(s, fs, err)
	}
	if len(pos) > 1 {
		return usageErrorf("services: unexpected argument %q", pos[1])
	}
	if len(pos) == 0 && (*passing || *tag != "") {
		return usageErrorf("services: --passing and --tag need a service NAME")
	}
	c, err := newClient(addr)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		svcs, _, err := c.Services(ctx, nil)
		if err != nil {
			return fmt.Errorf("services: %w", err)
		}
		if *asJSON {
			return printJSON(s.stdout, svcs)
		}
		names := make([]string, 0, len(svcs))
		for n := range svcs {
			names = append(names, n)
		}
		sort.Strings(names)
		tw := newTable(s.stdout)
		fmt.Fprintln(tw, "NAME\tTAGS")
		for _, n := range names {
			fmt.Fprintf(tw, "%s\t%s\n", n, strings.Join(svcs[n], ","))
		}
		return tw.Flush()
	}
	in, _, err := c.Service(ctx, pos[0], *passing, *tag, nil)
	if err != nil {
		return fmt.Errorf("services %s: %w", pos[0], err)
	}
	if *asJSON {
		if in == nil {
			in = []api.Instance{} // "[]", not "null", for scripts
		}
		return printJSON(s.stdout, in)
	}
	sort.Slice(in, func(i, j int) bool {
		if in[i].Node != in[j].Node {
			return in[i].Node < in[j].Node
		}
		return in[i].ID < in[j].ID
	})
	tw := newTable(s.stdout)
	fmt.Fprintln(tw, "ID\tNODE\tADDRESS\tSTATUS\tTAGS")
	for _, i := range in {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", i.ID, i.Node, joinHostPort(i.Address, i.Port), i.Status, strings.Join(i.Tags, ","))
	}
	return tw.Flush()
}

func cmdRegister(ctx context.Context, s *streams, args []string) error {
	fs := newFlagSet("register")
	addr := addrFlag(fs)
	asJSON := fs.Bool("json", false, "print the raw JSON answer")
	name := fs.String("name", "", "service `name` (required)")
	port := fs.Int("port", -1, "service `port` (required)")
	address := fs.String("address", "", "instance `address` (default: the node's advertised address)")
	id := fs.String("id", "", "instance `id` (default NAME-PORT)")
	var tags, metas stringsFlag
	fs.Var(&tags, "tag", "`tag` of the instance (repeatable)")
	fs.Var(&metas, "meta", "`key=value` metadata (repeatable)")
	checkHTTP := fs.String("check-http", "", "health check: GET `URL`, 2xx passing, 429 warning")
	checkTCP := fs.String("check-tcp", "", "health check: connect to `host:port`")
	checkTTL := fs.Duration("check-ttl", 0, "health check: critical unless updated within `duration`")
	interval := fs.Duration("check-interval", 10*time.Second, "how often the http or tcp check runs")
	weight := fs.Int("weight", 0, "`weight` 1-65535: the SRV weight, and how often DNS lists the address first (default 1)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return flagError(s, fs, err)
	}
	if err := wantArgs(fs, pos, 0, ""); err != nil {
		return err
	}
	if *name == "" {
		return usageErrorf("register: --name is required")
	}
	if *port < 0 || *port > 65535 {
		if *port == -1 {
			return usageErrorf("register: --port is required")
		}
		return usageErrorf("register: --port %d is outside 0-65535", *port)
	}
	weightSet := false
	fs.Visit(func(f *flag.Flag) { weightSet = weightSet || f.Name == "weight" })
	if weightSet && (*weight < 1 || *weight > 65535) {
		return usageErrorf("register: --weight %d is outside 1-65535", *weight)
	}
	reg := api.ServiceRegistration{ID: *id, Name: *name, Address: *address, Port: *port, Tags: tags, Weight: *weight}
	if reg.ID == "" {
		reg.ID = defaultServiceID(reg.Name, reg.Port)
	}
	for _, kv := range metas {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return usageErrorf("register: --meta %q: want key=value", kv)
		}
		if reg.Meta == nil {
			reg.Meta = map[string]string{}
		}
		reg.Meta[k] = v
	}
	intervalSet := false
	fs.Visit(func(f *flag.Flag) { intervalSet = intervalSet || f.Name == "check-interval" })
	var checks []api.CheckDefinition
	if *checkHTTP != "" {
		checks = append(checks, api.CheckDefinition{Type: "http", HTTP: *checkHTTP, Interval: interval.String()})
	}
	if *checkTCP != "" {
		checks = append(checks, api.CheckDefinition{Type: "tcp", TCP: *checkTCP, Interval: interval.String()})
	}
	if *checkTTL != 0 {
		if *checkTTL < 0 {
			return usageErrorf("register: --check-ttl must be positive")
		}
		checks = append(checks, api.CheckDefinition{Type: "ttl", TTL: checkTTL.String()})
	}
	switch {
	case len(checks) > 1:
		return usageErrorf("register: give at most one of --check-http, --check-tcp, --check-ttl")
	case *interval <= 0:
		return usageErrorf("register: --check-interval must be positive")
	case intervalSet && (len(checks) == 0 || checks[0].Type == "ttl"):
		return usageErrorf("register: --check-interval needs --check-http or --check-tcp")
	}
	reg.Checks = checks
	if err := validateService(&reg); err != nil {
		return usageErrorf("register: %v", err)
	}
	c, err := newClient(addr)
	if err != nil {
		return err
	}
	r, err := c.Register(ctx, reg)
	if err != nil {
		return fmt.Errorf("register %s: %w", reg.ID, err)
	}
	if *asJSON {
		return printJSON(s.stdout, r)
	}
	fmt.Fprintln(s.stdout, r.ID)
	return nil
}

func cmdDeregister(ctx context.Context, s *streams, args []string) error {
	fs := newFlagSet("deregister")
	addr := addrFlag(fs)
	pos, c, err := clientArgs(s, fs, addr, args, 1, "instance ID")
	if err != nil {
		return err
	}
	if err := c.Deregister(ctx, pos[0]); err != nil {
		return fmt.Errorf("deregister %s: %w", pos[0], err)
	}
	return nil
}

func cmdLeader(ctx context.Context, s *streams, args []string) error {
	fs := newFlagSet("leader")
	addr := addrFlag(fs)
	asJSON := fs.Bool("json", false, "print the raw JSON answer")
	pos, c, err := clientArgs(s, fs, addr, args, 1, "election NAME")
	if err != nil {
		return err
	}
	e, _, err := c.Election(ctx, pos[0], nil)
	if err != nil {
		return fmt.Errorf("leader %s: %w", pos[0], err)
	}
	if *asJSON {
		return printJSON(s.stdout, e)
	}
	if e.Leader == nil {
		return fmt.Errorf("election %s has no leader", pos[0])
	}
	fmt.Fprintln(s.stdout, e.Leader.Value)
	return nil
}

// cmdTransfer hands an election from a candidate campaigning through the
// local agent (--from, by default its one candidate there) to the waiting
// candidate --to, in one Raft entry (PUT /v1/elections/{name}/transfer).
func cmdTransfer(ctx context.Context, s *streams, args []string) error {
	fs := newFlagSet("transfer")
	addr := addrFlag(fs)
	to := fs.String("to", "", "the waiting candidate to hand leadership to (required)")
	from := fs.String("from", "", "the leading candidate of this agent (default: its one candidate in NAME)")
	pos, c, err := clientArgs(s, fs, addr, args, 1, "election NAME")
	if err != nil {
		return err
	}
	if *to == "" {
		return usageErrorf("transfer: missing --to CANDIDATE")
	}
	res, err := c.Transfer(ctx, pos[0], *from, *to)
	if err != nil {
		return fmt.Errorf("transfer %s: %w", pos[0], err)
	}
	fmt.Fprintf(s.stdout, "%s leads %s with token %d\n", res.Leader, pos[0], res.Token)
	return nil
}

func cmdSnapshot(ctx context.Context, s *streams, args []string) error {
	fs := newFlagSet("snapshot")
	addr := addrFlag(fs)
	pos, err := parseFlags(fs, args)
	if err != nil {
		return flagError(s, fs, err)
	}
	if len(pos) == 0 || (pos[0] != "save" && pos[0] != "restore") {
		return usageErrorf("snapshot: want 'save FILE' or 'restore FILE'")
	}
	if err := wantArgs(fs, pos[1:], 1, "FILE"); err != nil {
		return err
	}
	c, err := newClient(addr)
	if err != nil {
		return err
	}
	file := pos[1]
	if pos[0] == "save" {
		if file == "-" {
			return c.SnapshotSave(ctx, s.stdout)
		}
		return saveSnapshot(ctx, c, file)
	}
	var r io.Reader = s.stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return fmt.Errorf("snapshot restore: %w", err)
		}
		defer f.Close()
		r = f
	}
	if err := c.SnapshotRestore(ctx, r); err != nil {
		return fmt.Errorf("snapshot restore: %w", err)
	}
	return nil
}

// saveSnapshot writes to a temporary file renamed into place, so FILE is
// either the old content or a whole snapshot, never a truncated one.
func saveSnapshot(ctx context.Context, c *api.Client, file string) error {
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*.tmp")
	if err != nil {
		return fmt.Errorf("snapshot save: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if err := c.SnapshotSave(ctx, tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("snapshot save: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("snapshot save: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("snapshot save: %w", err)
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return fmt.Errorf("snapshot save: %w", err)
	}
	return nil
}

func cmdKeygen(_ context.Context, s *streams, args []string) error {
	fs := newFlagSet("keygen")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return flagError(s, fs, err)
	}
	if err := wantArgs(fs, pos, 0, ""); err != nil {
		return err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	fmt.Fprintln(s.stdout, base64.StdEncoding.EncodeToString(key))
	return nil
}
