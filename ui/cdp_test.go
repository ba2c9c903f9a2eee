package ui_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"syscall"
	"testing"
	"time"
)

// browser is a headless Chromium driven over the Chrome DevTools protocol,
// with a WebSocket client of the standard library's parts: enough of RFC
// 6455 for one page's request/response traffic.
type browser struct {
	t       *testing.T
	cmd     *exec.Cmd
	ws      *wsConn
	id      int
	profile string
}

// startBrowser runs chromium on a blank page and attaches to it.
func startBrowser(t *testing.T, bin string) *browser {
	t.Helper()
	// Not t.TempDir: chromium's helper processes may still write there for
	// a moment after the browser is gone; close removes it once they are.
	profile, err := os.MkdirTemp("", "sidecar-ui-profile")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
		"--font-render-hinting=none", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
		"--user-data-dir="+profile, "--window-size=1280,1000", "about:blank")
	// Its own process group, so that close stops its helpers too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	b := &browser{t: t, cmd: cmd, profile: profile}
	t.Cleanup(b.close)
	// "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
	found := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`DevTools listening on ws://([^/]+)/`)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				found <- m[1]
				break
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	var hostport string
	select {
	case hostport = <-found:
	case <-time.After(30 * time.Second):
		t.Fatal("chromium printed no DevTools address in 30s")
	}
	var targets []struct{ Type, WebSocketDebuggerURL string }
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + hostport + "/json/list")
		if err == nil {
			json.NewDecoder(resp.Body).Decode(&targets)
			resp.Body.Close()
		}
		ws := ""
		for _, tg := range targets {
			if tg.Type == "page" {
				ws = tg.WebSocketDebuggerURL
			}
		}
		if ws != "" {
			if b.ws, err = wsDial(ws); err != nil {
				t.Fatalf("devtools websocket: %v", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no page target: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.call("Page.enable", nil, nil)
	b.call("Runtime.enable", nil, nil)
	return b
}

func (b *browser) close() {
	if b.ws != nil {
		b.ws.c.Close()
	}
	if b.cmd.Process != nil {
		syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
		b.cmd.Wait()
	}
	// A helper killed with the group may still be exiting: try again for a
	// while rather than fail the test on its leftovers.
	deadline := time.Now().Add(5 * time.Second)
	for os.RemoveAll(b.profile) != nil && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
}

// call sends one command and waits for its answer, dropping events.
func (b *browser) call(method string, params any, result any) {
	b.t.Helper()
	if err := b.tryCall(method, params, result); err != nil {
		b.t.Fatalf("%s: %v", method, err)
	}
}

func (b *browser) tryCall(method string, params any, result any) error {
	b.id++
	msg, _ := json.Marshal(map[string]any{"id": b.id, "method": method, "params": params})
	b.ws.c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := b.ws.write(msg); err != nil {
		return err
	}
	for {
		data, err := b.ws.read()
		if err != nil {
			return err
		}
		var m struct {
			ID     int             `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(data, &m); err != nil || m.ID != b.id {
			continue
		}
		if m.Error != nil {
			return errors.New(m.Error.Message)
		}
		if result != nil {
			return json.Unmarshal(m.Result, result)
		}
		return nil
	}
}

// eval runs a JavaScript expression in the page and decodes its value.
func (b *browser) eval(expr string, v any) {
	b.t.Helper()
	b.evaluate(expr, false, v)
}

// evalAwait is eval of an expression whose value is a promise.
func (b *browser) evalAwait(expr string, v any) {
	b.t.Helper()
	b.evaluate(expr, true, v)
}

func (b *browser) evaluate(expr string, await bool, v any) {
	b.t.Helper()
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	b.call("Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": await}, &r)
	if r.ExceptionDetails != nil {
		b.t.Fatalf("eval %s: %s", expr, r.ExceptionDetails.Text)
	}
	if v != nil && len(r.Result.Value) > 0 {
		if err := json.Unmarshal(r.Result.Value, v); err != nil {
			b.t.Fatalf("eval %s: %v (%s)", expr, err, r.Result.Value)
		}
	}
}

func (b *browser) navigate(u string) {
	b.t.Helper()
	b.call("Page.navigate", map[string]any{"url": u}, nil)
}

// waitTrue polls a boolean expression every 10 ms until it holds, and
// returns when it first did; it fails the test after timeout.
func (b *browser) waitTrue(what, expr string, timeout time.Duration) time.Time {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var ok bool
		// The page may be between documents: an exception is "not yet".
		b.eval("(() => { try { return !!("+expr+") } catch (e) { return false } })()", &ok)
		if ok {
			return time.Now()
		}
		if time.Now().After(deadline) {
			var dom string
			b.eval(`document.querySelector('main')?.innerText.slice(0, 2000) + '\n[banner] ' + document.querySelector('#banner')?.innerText`, &dom)
			b.t.Fatalf("timed out after %v waiting for %s (%s); the page shows:\n%s", timeout, what, expr, dom)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// viewport sets the page's size (and a phone's touch/mobile metrics) and
// its colour scheme.
func (b *browser) viewport(w, h int, mobile bool, scheme string) {
	b.t.Helper()
	b.call("Emulation.setDeviceMetricsOverride", map[string]any{"width": w, "height": h, "deviceScaleFactor": 1, "mobile": mobile}, nil)
	b.call("Emulation.setEmulatedMedia", map[string]any{"features": []map[string]string{{"name": "prefers-color-scheme", "value": scheme}}}, nil)
}

// screenshot writes a PNG of the viewport to path.
func (b *browser) screenshot(path string) {
	b.t.Helper()
	time.Sleep(150 * time.Millisecond) // let the last render paint
	var r struct {
		Data string `json:"data"`
	}
	b.call("Page.captureScreenshot", map[string]any{"format": "png"}, &r)
	png, err := base64.StdEncoding.DecodeString(r.Data)
	if err != nil {
		b.t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot %s", path)
	fmt.Printf("ui screenshot: %s\n", path)
}

// wsConn is a client WebSocket connection (RFC 6455): masked text frames
// out, unmasked frames in, pings answered.
type wsConn struct {
	c  net.Conn
	br *bufio.Reader
}

func wsDial(raw string) (*wsConn, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, err
	}
	key := make([]byte, 16)
	rand.Read(key)
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
		u.RequestURI(), u.Host, base64.StdEncoding.EncodeToString(key))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		c.Close()
		return nil, fmt.Errorf("websocket handshake: %s", resp.Status)
	}
	return &wsConn{c: c, br: br}, nil
}

func (w *wsConn) writeFrame(op byte, p []byte) error {
	var hdr bytes.Buffer
	hdr.WriteByte(0x80 | op)
	switch n := len(p); {
	case n < 126:
		hdr.WriteByte(0x80 | byte(n))
	case n < 1<<16:
		hdr.WriteByte(0x80 | 126)
		binary.Write(&hdr, binary.BigEndian, uint16(n))
	default:
		hdr.WriteByte(0x80 | 127)
		binary.Write(&hdr, binary.BigEndian, uint64(n))
	}
	mask := make([]byte, 4)
	rand.Read(mask)
	hdr.Write(mask)
	masked := make([]byte, len(p))
	for i := range p {
		masked[i] = p[i] ^ mask[i%4]
	}
	_, err := w.c.Write(append(hdr.Bytes(), masked...))
	return err
}

func (w *wsConn) write(p []byte) error { return w.writeFrame(0x1, p) }

// read returns the next whole message.
func (w *wsConn) read() ([]byte, error) {
	var msg []byte
	for {
		var h [2]byte
		if _, err := io.ReadFull(w.br, h[:]); err != nil {
			return nil, err
		}
		fin, op := h[0]&0x80 != 0, h[0]&0x0f
		n := uint64(h[1] & 0x7f)
		switch n {
		case 126:
			var x uint16
			if err := binary.Read(w.br, binary.BigEndian, &x); err != nil {
				return nil, err
			}
			n = uint64(x)
		case 127:
			if err := binary.Read(w.br, binary.BigEndian, &n); err != nil {
				return nil, err
			}
		}
		var mask []byte
		if h[1]&0x80 != 0 {
			mask = make([]byte, 4)
			if _, err := io.ReadFull(w.br, mask); err != nil {
				return nil, err
			}
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(w.br, p); err != nil {
			return nil, err
		}
		if mask != nil {
			for i := range p {
				p[i] ^= mask[i%4]
			}
		}
		switch op {
		case 0x8:
			return nil, errors.New("websocket closed by the browser")
		case 0x9:
			if err := w.writeFrame(0xA, p); err != nil {
				return nil, err
			}
			continue
		case 0xA:
			continue
		}
		msg = append(msg, p...)
		if fin {
			return msg, nil
		}
	}
}

// js quotes a string for a JavaScript expression.
func js(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
