// Command tlsprobe is run by deploy/e2e_test.go inside a container of the
// compose network (the images have no shell) to look at a server's
// Raft/RPC port as an attacker without a certificate would, and at the TLS
// files the agents read. It runs the checks named on its command line in
// turn, prints one line per check, "ok ..." or "FAIL ...", and exits 1 when
// one failed:
//
//	answers HOST:PORT  a plain-text HTTP request gets an answer (the control:
//	                   the probe does see an answer where there is one)
//	plain HOST:PORT    plain-text requests get no byte back
//	nocert HOST:PORT   a TLS client without a certificate gets no byte back
//	files DIR UID      DIR's files belong to UID; keys are 0600
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// answerWait is how long a connection is watched for an answer: far longer
// than an agent takes to answer on the same network.
const answerWait = 3 * time.Second

func main() {
	var fails int
	report := func(ok bool, format string, args ...any) {
		if ok {
			fmt.Printf("ok "+format+"\n", args...)
		} else {
			fails++
			fmt.Printf("FAIL "+format+"\n", args...)
		}
	}
	args := os.Args[1:]
	if len(args) == 0 {
		usage()
	}
	for len(args) > 0 {
		switch {
		case args[0] == "answers" && len(args) >= 2:
			n, got, err := exchange(args[1], func(c net.Conn) (net.Conn, error) {
				_, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: "+args[1]+"\r\nConnection: close\r\n\r\n")
				return c, err
			})
			report(err == nil && strings.HasPrefix(got, "HTTP/1.1 "), "control: plain HTTP to %s: %d bytes back %q (%v)", args[1], n, strings.SplitN(got, "\r\n", 2)[0], err)
			args = args[2:]
		case args[0] == "plain" && len(args) >= 2:
			plain(args[1], report)
			args = args[2:]
		case args[0] == "nocert" && len(args) >= 2:
			nocert(args[1], report)
			args = args[2:]
		case args[0] == "files" && len(args) >= 3:
			uid, err := strconv.Atoi(args[2])
			if err != nil {
				usage()
			}
			files(args[1], uid, report)
			args = args[3:]
		default:
			usage()
		}
	}
	if fails > 0 {
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: tlsprobe [answers HOST:PORT] [plain HOST:PORT] [nocert HOST:PORT] [files DIR UID]...")
	os.Exit(2)
}

type reporter func(ok bool, format string, args ...any)

func plain(addr string, report reporter) {
	// What the attacker sent: a forwarded write, a registry stream,
	// and bytes that are no TLS record.
	for _, req := range []string{
		"POST /rpc/v1/apply HTTP/1.1\r\nHost: " + addr + "\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
		"GET /rpc/v1/stream?index=0 HTTP/1.1\r\nHost: " + addr + "\r\n\r\n",
		"\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00",
	} {
		n, got, err := exchange(addr, func(c net.Conn) (net.Conn, error) {
			_, err := io.WriteString(c, req)
			return c, err
		})
		first := strings.SplitN(req, "\r\n", 2)[0]
		report(err == nil && n == 0, "plain %q to %s: %d bytes back %q (%v)", first, addr, n, got, err)
	}
}

func nocert(addr string, report reporter) {
	n, got, err := exchange(addr, func(c net.Conn) (net.Conn, error) {
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12})
		// With TLS 1.3 the client's handshake ends before the server has
		// checked the (missing) certificate: the refusal shows on the
		// first read, which exchange does.
		if err := tc.Handshake(); err != nil {
			return nil, err
		}
		_, err := io.WriteString(tc, "GET /rpc/v1/stream?index=0 HTTP/1.1\r\nHost: "+addr+"\r\n\r\n")
		return tc, err
	})
	report(err == nil && n == 0, "TLS without a certificate to %s: %d bytes of data back %q (%v)", addr, n, got, err)
}

func files(dir string, uid int, report reporter) {
	entries, err := os.ReadDir(dir)
	report(err == nil && len(entries) > 0, "%s holds %d files (%v)", dir, len(entries), err)
	for _, e := range entries {
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil {
			report(false, "%s: %v", e.Name(), err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		mode := fi.Mode().Perm()
		key := strings.HasSuffix(e.Name(), "-key.pem")
		report(int(st.Uid) == uid && (!key || mode == 0o600), "%s: uid %d, mode %#o", e.Name(), st.Uid, mode)
	}
}

// exchange connects to addr, lets send write, then reads what comes back
// until the server hangs up or answerWait passes, and returns the bytes
// read (through TLS: application data only; an alert is no answer). err is
// set only when no connection could be made: a refused or unreachable port
// is not "no answer", the test must reach a listening server.
func exchange(addr string, send func(net.Conn) (net.Conn, error)) (n int, got string, err error) {
	c, err := net.DialTimeout("tcp", addr, answerWait)
	if err != nil {
		return 0, "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(answerWait))
	rc, err := send(c)
	if err != nil {
		// The server hung up during the write or the handshake.
		return 0, "", nil
	}
	buf := make([]byte, 512)
	for n < len(buf) {
		k, err := rc.Read(buf[n:])
		n += k
		if err != nil {
			break // EOF, reset, timeout or a TLS alert: the server said no more
		}
	}
	return n, string(buf[:n]), nil
}
