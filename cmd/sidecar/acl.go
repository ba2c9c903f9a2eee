package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/sidecarhq/sidecar/acl"
	"github.com/sidecarhq/sidecar/api"
)

// The agent's token types, as api.Client's ACL calls answer them.
type (
	aclToken        = api.ACLToken
	aclTokenRequest = api.ACLTokenRequest
)

// aclAPI is what the acl commands need of the agent (*api.Client), small
// so that tests can stand in for it.
type aclAPI interface {
	ACLBootstrap(ctx context.Context) (*aclToken, error)
	ACLCreateToken(ctx context.Context, req aclTokenRequest) (*aclToken, error)
	ACLTokens(ctx context.Context) ([]aclToken, error)
	ACLToken(ctx context.Context, id string) (*aclToken, error)
	ACLDeleteToken(ctx context.Context, id string) error
}

type aclSubcommand struct {
	words, args, summary string
	run                  func(ctx context.Context, s *streams, args []string) error
}

// aclSubcommands are "sidecar acl ..." in --help order.
var aclSubcommands []aclSubcommand

func init() {
	// Assigned in init because the subcommands' help refers back to the table.
	aclSubcommands = []aclSubcommand{
		{"bootstrap", "[--out FILE [--if-needed]] [--format text|json]",
			"make the cluster's first management token, once, and print its id and secret (or write the secret to FILE)", cmdACLBootstrap},
		{"token create", "--rules FILE|JSON [--description D] [--management] [--id ID] [--secret S] [--out FILE [--if-needed]] [--format text|json]",
			"make a token with the given rules, and print its id and secret (shown once)", cmdACLTokenCreate},
		{"token list", "[--format text|json]", "list the tokens (never their secrets)", cmdACLTokenList},
		{"token read", "ID [--format text|json]", "show one token's description and rules", cmdACLTokenRead},
		{"token update", "ID --rules FILE|JSON [--description D] [--format text|json]",
			"replace a token's rules (and description); its secret stays. ID anonymous: the rules of requests without a token", cmdACLTokenUpdate},
		{"token delete", "ID", "delete a token: requests with its secret are refused from then on", cmdACLTokenDelete},
	}
}

// cmdACL is `sidecar acl ...`: SPEC's ACL tokens, through the local agent.
func cmdACL(ctx context.Context, s *streams, args []string) error {
	switch {
	case len(args) == 0:
		return usageErrorf("acl: want 'bootstrap' or 'token create|list|read|update|delete' (run 'sidecar acl --help')")
	case isHelp(args[0]):
		aclUsage(s.stdout)
		return errHelp
	case args[0] == "bootstrap":
		return cmdACLBootstrap(ctx, s, args[1:])
	case args[0] != "token":
		return usageErrorf("acl: unknown subcommand %q (want 'bootstrap' or 'token')", args[0])
	case len(args) < 2:
		return usageErrorf("acl token: want create, list, read, update or delete")
	case isHelp(args[1]):
		aclUsage(s.stdout)
		return errHelp
	}
	for _, sc := range aclSubcommands {
		if sc.words == "token "+args[1] {
			return sc.run(ctx, s, args[2:])
		}
	}
	return usageErrorf("acl token: unknown subcommand %q (want create, list, read, update or delete)", args[1])
}

func aclUsage(w io.Writer) {
	fmt.Fprintln(w, "Usage: sidecar acl SUBCOMMAND [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Manages the ACL tokens of the cluster through the local agent (README, ACL tokens).")
	fmt.Fprintln(w)
	for _, sc := range aclSubcommands {
		fmt.Fprintf(w, "  sidecar acl %s %s\n        %s\n", sc.words, sc.args, sc.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Every subcommand takes --http-addr, --token and --token-file (default $SIDECAR_TOKEN,")
	fmt.Fprintln(w, "else the file $SIDECAR_TOKEN_FILE). Run 'sidecar acl SUBCOMMAND --help' for its flags.")
}

// aclFlagError is flagError for the acl subcommands.
func aclFlagError(s *streams, fs *flag.FlagSet, err error) error {
	if !errors.Is(err, flag.ErrHelp) {
		return usageErrorf("%s: %v", fs.Name(), err)
	}
	for _, sc := range aclSubcommands {
		if fs.Name() == "acl "+sc.words {
			fmt.Fprintf(s.stdout, "Usage: sidecar acl %s %s\n\n%s%s.\n\nFlags:\n", sc.words, sc.args, strings.ToUpper(sc.summary[:1]), sc.summary[1:])
		}
	}
	fs.VisitAll(func(f *flag.Flag) {
		arg, usage := flag.UnquoteUsage(f)
		if arg != "" {
			arg = " " + strings.ToUpper(arg)
		}
		def := ""
		if f.DefValue != "" && f.DefValue != "false" {
			def = fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(s.stdout, "  --%s%s\n        %s%s\n", f.Name, arg, usage, def)
	})
	return errHelp
}

// aclCommand holds what every acl subcommand parses: the agent flags and
// --format.
type aclCommand struct {
	fs     *flag.FlagSet
	agent  *agentFlags
	format *string
	asJSON *bool
}

func newACLCommand(name string) *aclCommand {
	fs := newFlagSet("acl " + name)
	return &aclCommand{
		fs:     fs,
		agent:  addrFlag(fs),
		format: fs.String("format", "text", "output `format`: text or json"),
		asJSON: fs.Bool("json", false, "the same as --format json"),
	}
}

// parse parses args, wants n positional arguments, and returns them with
// the agent's ACL calls.
func (a *aclCommand) parse(s *streams, args []string, n int, what string) ([]string, aclAPI, error) {
	pos, err := parseFlags(a.fs, args)
	if err != nil {
		return nil, nil, aclFlagError(s, a.fs, err)
	}
	if err := wantArgs(a.fs, pos, n, what); err != nil {
		return nil, nil, err
	}
	switch *a.format {
	case "text":
		if *a.asJSON {
			*a.format = "json"
		}
	case "json":
	default:
		return nil, nil, usageErrorf("%s: --format %q: want text or json", a.fs.Name(), *a.format)
	}
	c, err := newClient(a.agent)
	if err != nil {
		return nil, nil, err
	}
	return pos, c, nil
}

func (a *aclCommand) json() bool { return *a.format == "json" }

func (a *aclCommand) set(name string) bool {
	found := false
	a.fs.Visit(func(f *flag.Flag) { found = found || f.Name == name })
	return found
}

func cmdACLBootstrap(ctx context.Context, s *streams, args []string) error {
	a := newACLCommand("bootstrap")
	out := a.fs.String("out", "", "write the secret to `FILE` (mode 0600) instead of printing it")
	ifNeeded := a.fs.Bool("if-needed", false, "with --out: succeed without a new token when the cluster was bootstrapped already and FILE holds a token")
	_, c, err := a.parse(s, args, 0, "")
	if err != nil {
		return err
	}
	if *ifNeeded && *out == "" {
		return usageErrorf("acl bootstrap: --if-needed needs --out FILE")
	}
	t, err := c.ACLBootstrap(ctx)
	var se *api.StatusError
	if errors.As(err, &se) && se.Code == http.StatusConflict {
		if *ifNeeded && fileHolds(*out) {
			fmt.Fprintf(s.stdout, "ACLs were bootstrapped already; the management token is in %s\n", *out)
			return nil
		}
		return errors.New("acl bootstrap: ACLs were bootstrapped already (the management token was shown once; any token with acl write makes more)")
	}
	if err != nil {
		return fmt.Errorf("acl bootstrap: %w", err)
	}
	return printNewToken(s, a, "acl bootstrap", t, *out)
}

// fileHolds reports whether path is a file with something in it.
func fileHolds(path string) bool {
	b, err := os.ReadFile(path)
	return err == nil && strings.TrimSpace(string(b)) != ""
}

// printNewToken shows a token just made: its id and its secret, or, with
// out, its id and where its secret was written.
func printNewToken(s *streams, a *aclCommand, cmd string, t *aclToken, out string) error {
	if t.ID == "" || (t.Secret == "" && out != "") {
		return fmt.Errorf("%s: the agent's answer lacks the token's id or secret", cmd)
	}
	if out != "" {
		if err := writeSecretFile(out, t.Secret); err != nil {
			return fmt.Errorf("%s: %w", cmd, err)
		}
		if a.json() {
			return printJSON(s.stdout, map[string]string{"id": t.ID, "secret_file": out})
		}
		tw := newTable(s.stdout)
		fmt.Fprintf(tw, "id\t%s\n", t.ID)
		fmt.Fprintf(tw, "secret\twritten to %s\n", out)
		return tw.Flush()
	}
	if a.json() {
		return printJSON(s.stdout, map[string]string{"id": t.ID, "secret": t.Secret})
	}
	tw := newTable(s.stdout)
	fmt.Fprintf(tw, "id\t%s\n", t.ID)
	if t.Secret != "" {
		fmt.Fprintf(tw, "secret\t%s\n", t.Secret)
	}
	return tw.Flush()
}

// writeSecretFile writes a secret to path, mode 0600, through a temporary
// file renamed into place: the file holds the old secret or the whole new
// one, never a part.
func writeSecretFile(path, secret string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.WriteString(secret + "\n"); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// readRules reads --rules: JSON when it starts with "{", else the name of a
// file holding it ("-": stdin). Rules are checked here as the agent checks
// them, so that a mistake is a usage error naming what is wrong.
func readRules(cmd string, stdin io.Reader, arg string) (json.RawMessage, error) {
	var b []byte
	switch t := strings.TrimSpace(arg); {
	case strings.HasPrefix(t, "{"):
		b = []byte(t)
	case t == "-":
		var err error
		if b, err = io.ReadAll(io.LimitReader(stdin, acl.MaxRulesBytes+1)); err != nil {
			return nil, usageErrorf("%s: --rules -: %v", cmd, err)
		}
	default:
		var err error
		if b, err = os.ReadFile(t); err != nil {
			return nil, usageErrorf("%s: --rules: %v", cmd, err)
		}
	}
	if _, err := acl.ParseRules(b); err != nil {
		return nil, usageErrorf("%s: --rules: %v", cmd, err)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, bytes.TrimSpace(b)); err != nil {
		return nil, usageErrorf("%s: --rules: %v", cmd, err)
	}
	return compact.Bytes(), nil
}

func cmdACLTokenCreate(ctx context.Context, s *streams, args []string) error {
	a := newACLCommand("token create")
	rules := a.fs.String("rules", "", "the token's rules: JSON, or a `FILE` holding them (- for stdin)")
	desc := a.fs.String("description", "", "what the token is for")
	mgmt := a.fs.Bool("management", false, "a management token: may do everything (no --rules)")
	id := a.fs.String("id", "", "the token's `ID` (default: a new random one)")
	secret := a.fs.String("secret", "", "the token's `secret` (default: a new random one; prefer the default)")
	out := a.fs.String("out", "", "write the secret to `FILE` (mode 0600) instead of printing it")
	ifNeeded := a.fs.Bool("if-needed", false, "with --out: do nothing when FILE holds a token already")
	_, c, err := a.parse(s, args, 0, "")
	if err != nil {
		return err
	}
	const cmd = "acl token create"
	req := aclTokenRequest{ID: *id, Description: *desc}
	if *mgmt {
		req.Management = mgmt
	}
	switch {
	case *mgmt && *rules != "":
		return usageErrorf("%s: a --management token has no --rules", cmd)
	case !*mgmt && !a.set("rules"):
		return usageErrorf("%s: --rules is required (or --management)", cmd)
	case *ifNeeded && *out == "":
		return usageErrorf("%s: --if-needed needs --out FILE", cmd)
	case *id == fsmAnonymous:
		return usageErrorf("%s: the anonymous token has no secret: change its rules with 'acl token update anonymous'", cmd)
	}
	if a.set("secret") {
		if req.Secret, err = checkSecret(cmd, "--secret", *secret); err != nil {
			return err
		}
	}
	if !*mgmt {
		if req.Rules, err = readRules(cmd, s.stdin, *rules); err != nil {
			return err
		}
	}
	if *ifNeeded && fileHolds(*out) {
		fmt.Fprintf(s.stdout, "%s holds a token already\n", *out)
		return nil
	}
	t, err := c.ACLCreateToken(ctx, req)
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	if t.Secret == "" {
		t.Secret = req.Secret
	}
	return printNewToken(s, a, cmd, t, *out)
}

// fsmAnonymous is the ID of the token whose rules apply to requests
// without a token (fsm.AnonymousTokenID).
const fsmAnonymous = "anonymous"

func cmdACLTokenUpdate(ctx context.Context, s *streams, args []string) error {
	a := newACLCommand("token update")
	rules := a.fs.String("rules", "", "the token's new rules: JSON, or a `FILE` holding them (- for stdin)")
	desc := a.fs.String("description", "", "the token's new description (default: keep it)")
	pos, c, err := a.parse(s, args, 1, "token ID")
	if err != nil {
		return err
	}
	id := pos[0]
	cmd := "acl token update " + id
	if !a.set("rules") {
		return usageErrorf("%s: --rules is required", cmd)
	}
	req := aclTokenRequest{ID: id, Description: *desc}
	if req.Rules, err = readRules(cmd, s.stdin, *rules); err != nil {
		return err
	}
	if !a.set("description") {
		// PUT replaces the description too: keep the one it has.
		old, err := c.ACLToken(ctx, id)
		switch {
		case err == nil:
			if old.Management {
				return fmt.Errorf("%s: a management token has no rules to update", cmd)
			}
			req.Description = old.Description
		case api.IsNotFound(err) && id == fsmAnonymous:
			// The anonymous token exists once it is given rules.
		case api.IsNotFound(err):
			return fmt.Errorf("%s: no such token", cmd)
		default:
			return fmt.Errorf("%s: %w", cmd, err)
		}
	}
	t, err := c.ACLCreateToken(ctx, req)
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	if t.ID == "" {
		t.ID = id
	}
	if a.json() {
		return printJSON(s.stdout, t)
	}
	fmt.Fprintln(s.stdout, t.ID)
	return nil
}

func cmdACLTokenList(ctx context.Context, s *streams, args []string) error {
	a := newACLCommand("token list")
	_, c, err := a.parse(s, args, 0, "")
	if err != nil {
		return err
	}
	ts, err := c.ACLTokens(ctx)
	if err != nil {
		return fmt.Errorf("acl token list: %w", err)
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].ID < ts[j].ID })
	if a.json() {
		if ts == nil {
			ts = []aclToken{} // "[]", not "null", for scripts
		}
		return printJSON(s.stdout, ts)
	}
	tw := newTable(s.stdout)
	fmt.Fprintln(tw, "ID\tKIND\tDESCRIPTION")
	for _, t := range ts {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", t.ID, tokenKind(&t), oneLine(t.Description))
	}
	return tw.Flush()
}

func tokenKind(t *aclToken) string {
	switch {
	case t.Management:
		return "management"
	case t.ID == fsmAnonymous:
		return "anonymous"
	}
	return "rules"
}

func cmdACLTokenRead(ctx context.Context, s *streams, args []string) error {
	a := newACLCommand("token read")
	pos, c, err := a.parse(s, args, 1, "token ID")
	if err != nil {
		return err
	}
	t, err := c.ACLToken(ctx, pos[0])
	if err != nil {
		return fmt.Errorf("acl token read %s: %w", pos[0], err)
	}
	t.Secret = "" // never shown again, whatever the agent says
	if a.json() {
		return printJSON(s.stdout, t)
	}
	tw := newTable(s.stdout)
	fmt.Fprintf(tw, "id\t%s\n", t.ID)
	fmt.Fprintf(tw, "kind\t%s\n", tokenKind(t))
	fmt.Fprintf(tw, "description\t%s\n", oneLine(t.Description))
	if err := tw.Flush(); err != nil {
		return err
	}
	if !t.Management {
		rules := "{}"
		var buf bytes.Buffer
		if len(t.Rules) > 0 && json.Indent(&buf, t.Rules, "", "  ") == nil {
			rules = buf.String()
		}
		fmt.Fprintf(s.stdout, "rules:\n%s\n", rules)
	}
	return nil
}

func cmdACLTokenDelete(ctx context.Context, s *streams, args []string) error {
	a := newACLCommand("token delete")
	pos, c, err := a.parse(s, args, 1, "token ID")
	if err != nil {
		return err
	}
	if err := c.ACLDeleteToken(ctx, pos[0]); err != nil {
		return fmt.Errorf("acl token delete %s: %w", pos[0], err)
	}
	return nil
}
