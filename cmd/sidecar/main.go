// Command sidecar is the sidecar agent and its command-line client.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		// The first signal starts a graceful shutdown; a second one means
		// the user is done waiting.
		again := make(chan os.Signal, 1)
		signal.Notify(again, os.Interrupt, syscall.SIGTERM)
		stop()
		<-again
		fmt.Fprintln(os.Stderr, "sidecar: second signal, exiting now")
		os.Exit(1)
	}()
	os.Exit(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// usageError is a mistake on the command line: exit 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// exitCode ends a command with a given code and no message of its own: the
// child of lock/elect already spoke for itself.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// streams are the process's standard files, passed down so tests can run
// commands in-process.
type streams struct {
	stdin          io.Reader
	stdout, stderr io.Writer
}

type command struct {
	name    string
	args    string // synopsis after the name
	summary string
	run     func(ctx context.Context, s *streams, args []string) error
}

var commands []*command

func init() {
	// Assigned in init because agent's help refers back to the table.
	commands = []*command{
		{"agent", "[flags]", "run the agent", cmdAgent},
		{"members", "[--json]", "list gossip members", cmdMembers},
		{"status", "[--json]", "show the Raft status of the local agent", cmdStatus},
		{"services", "[NAME] [--passing] [--tag T] [--json]", "list services, or the instances of one", cmdServices},
		{"register", "--name N --port P [--address A] [--tag T]... [--check-http URL|--check-tcp ADDR|--check-ttl D]", "register a service instance on the local agent", cmdRegister},
		{"deregister", "ID", "deregister a service instance", cmdDeregister},
		{"lock", "NAME [--ttl D] [--value V] [--timeout D] -- CMD [ARGS...]", "run CMD while holding a lock", cmdLock},
		{"elect", "NAME --value V [--candidate ID] [--ttl D] -- CMD [ARGS...]", "run CMD while leading an election", cmdElect},
		{"leader", "NAME [--json]", "print the value of an election's leader", cmdLeader},
		{"transfer", "NAME --to CANDIDATE [--from CANDIDATE]", "hand an election's leadership to a waiting candidate", cmdTransfer},
		{"snapshot", "save|restore FILE", "save or restore the registry", cmdSnapshot},
		{"keygen", "", "print a new gossip encryption key", cmdKeygen},
		{"tls", "ca create [--dir D] | cert create --server|--client --node NAME [--dir D] [--ca FILE --ca-key FILE] [--days N]", "make the cluster CA and agent certificates", cmdTLS},
		{"keyring", "list|install|use|remove [KEY|-] [--json]", "list or change the gossip keys of every member", cmdKeyring},
		{"acl", "bootstrap | token create|list|read|update|delete ...", "make the first management token, and manage ACL tokens", cmdACL},
		{"version", "", "print the version", cmdVersion},
	}
}

// run executes one sidecar command line (without the program name) and
// returns the process exit code. Failures print one line, "sidecar: ...",
// on stderr.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	s := &streams{stdin: stdin, stdout: stdout, stderr: stderr}
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	name := args[0]
	switch name {
	case "help", "-h", "-help", "--help":
		if len(args) > 1 {
			// "sidecar help lock" is "sidecar lock --help".
			return run(ctx, []string{args[1], "--help"}, stdin, stdout, stderr)
		}
		usage(stdout)
		return exitOK
	case "-v", "-version", "--version":
		name = "version"
	}
	for _, c := range commands {
		if c.name == name {
			return report(stderr, c.run(ctx, s, args[1:]))
		}
	}
	fmt.Fprintf(stderr, "sidecar: unknown command %q (run 'sidecar help')\n", name)
	return exitUsage
}

// report turns a command's error into its exit code and one line on stderr.
func report(stderr io.Writer, err error) int {
	var (
		ue   *usageError
		ce   *configError
		code exitCode
	)
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errHelp):
		return exitOK
	case errors.As(err, &code):
		return int(code)
	case errors.As(err, &ue), errors.As(err, &ce):
		fmt.Fprintf(stderr, "sidecar: %s\n", oneLine(err.Error()))
		return exitUsage
	default:
		fmt.Fprintf(stderr, "sidecar: %s\n", oneLine(err.Error()))
		return exitFailure
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: sidecar COMMAND [ARGS...]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Service discovery, health, locks and leader election next to every service.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	width := 0
	for _, c := range commands {
		width = max(width, len(c.name))
	}
	for _, c := range commands {
		fmt.Fprintf(w, "  %-*s  %s\n", width, c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Client commands talk to the local agent at --http-addr (default $SIDECAR_HTTP_ADDR,")
	fmt.Fprintln(w, "else 127.0.0.1:7080) and send the ACL token of --token or --token-file (default")
	fmt.Fprintln(w, "$SIDECAR_TOKEN, else the file $SIDECAR_TOKEN_FILE). Run 'sidecar COMMAND --help' for its flags.")
	fmt.Fprintln(w, "Exit codes: 0 success, 1 failure, 2 usage error.")
}

func cmdAgent(ctx context.Context, s *streams, args []string) error {
	cfg, err := parseAgentConfig(args)
	if errors.Is(err, errHelp) {
		agentUsage(s.stdout)
		return errHelp
	}
	if err != nil {
		return err
	}
	reload := func() (*Config, error) { return parseAgentConfigTLS(args, false) }
	if code := runAgent(ctx, cfg, reload, s.stdout, s.stderr); code != 0 {
		// runAgent has logged why; exit with its code and nothing more.
		return exitCode(code)
	}
	return nil
}

func cmdVersion(_ context.Context, s *streams, args []string) error {
	fs := newFlagSet("version")
	if _, err := parseFlags(fs, args); err != nil {
		return flagError(s, fs, err)
	}
	fmt.Fprintf(s.stdout, "sidecar %s\n", version)
	return nil
}

// commandByName finds a command for its --help output.
func commandByName(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}
