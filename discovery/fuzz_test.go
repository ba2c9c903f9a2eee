package discovery

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func metaSeeds(tb testing.TB) [][]byte {
	var seeds [][]byte
	for _, m := range []Meta{
		{},
		{Role: RoleServer, RaftAddr: "10.0.0.1:7947", HTTPAddr: "127.0.0.1:7080", DNSAddr: "127.0.0.1:7053", BootstrapExpect: 3},
		{Role: RoleClient, HTTPAddr: "[::1]:7080", Tags: map[string]string{"zone": "a", "": "\u2028<>&"}},
	} {
		b, err := encodeMeta(m, "0123456789abcdef")
		if err != nil {
			tb.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	return append(seeds,
		nil,
		[]byte("{}"),
		[]byte(`{"v":0,"role":"server"}`),
		[]byte(`{"v":2,"role":"server","raft":"x","future":[1,{"a":null}],"boot":"b"}`),
		[]byte(`{"v":1} {"v":1}`),
		[]byte(`{"v":1e400}`),
		[]byte(`{"v":-1}`),
		[]byte(`{"v":1,"tags":{"a":1}}`),
		[]byte(`{"v":1,"tags":null,"expect":"3"}`),
		[]byte("{\"v\":1,\"role\":\"\xff\xfe\"}"),
		[]byte(`[1,2,3]`),
		[]byte(`null`),
		bytes.Repeat([]byte("["), 600),
	)
}

// FuzzDecodeMeta: decoding whatever a peer sends as meta never panics, and
// a decoded Meta encodes (when it fits) to one that decodes the same.
func FuzzDecodeMeta(f *testing.F) {
	for _, s := range metaSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, boot, err := decodeMeta(data)
		if err != nil {
			if !reflect.DeepEqual(m, Meta{}) || boot != "" {
				t.Fatalf("error %v with non-zero result %+v %q", err, m, boot)
			}
			return
		}
		if m.Version < 1 {
			t.Fatalf("accepted version %d", m.Version)
		}
		b, err := encodeMeta(m, boot)
		if errors.Is(err, ErrMetaTooLarge) {
			return // escaping can grow a string beyond the limit
		}
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		m2, boot2, err := decodeMeta(b)
		if err != nil {
			t.Fatalf("decode of re-encoded %q: %v", b, err)
		}
		m.Version = MetaVersion
		if len(m.Tags) == 0 {
			m.Tags = nil // omitempty drops an empty map
		}
		if !reflect.DeepEqual(m, m2) || boot != boot2 {
			t.Fatalf("round trip changed %+v %q into %+v %q", m, boot, m2, boot2)
		}
	})
}

// detachedGossip is a Gossip without memberlist, enough to drive its
// delegates: it knows "b" (alive, boot bbbb) and "c" (failed, boot cccc).
func detachedGossip(tb testing.TB) *Gossip {
	g := &Gossip{
		cfg:     Config{Name: "self", ReapAfter: time.Hour},
		log:     slog.New(slog.DiscardHandler),
		members: make(map[string]*memberState),
		events:  newEventQueue(16),
		stop:    make(chan struct{}),
		// No keyringLoop reads it: a full queue drops requests.
		keyQueue: make(chan keyringRequest, 1),
		pending:  map[string]chan keyringResponse{"id1": make(chan keyringResponse, 1)},
	}
	g.m = newMetrics(g)
	g.bcast = &memberlist.TransmitLimitedQueue{NumNodes: func() int { return 3 }, RetransmitMult: 4}
	for _, n := range []struct{ name, boot string }{{"self", "ssss"}, {"b", "bbbb"}, {"c", "cccc"}} {
		meta, err := encodeMeta(Meta{Role: RoleClient}, n.boot)
		if err != nil {
			tb.Fatal(err)
		}
		g.nodeAlive(&memberlist.Node{Name: n.name, Addr: net.IPv4(127, 0, 0, 1), Port: 7946, Meta: meta}, true)
	}
	g.nodeGone(&memberlist.Node{Name: "c"})
	return g
}

// FuzzNotifyMsg fuzzes the gossip delegate: any user message, push/pull
// state or member meta from a peer is handled without panicking, and
// leaves the table consistent.
func FuzzNotifyMsg(f *testing.F) {
	intent := func(name, boot string) []byte {
		return newIntentBroadcast(intentMsg{Name: name, Boot: boot}, nil).Message()
	}
	push := func(st pushState) []byte {
		b, _ := json.Marshal(st)
		return append([]byte{pushStateVersion}, b...)
	}
	f.Add(intent("b", "bbbb"))
	f.Add(intent("c", "cccc"))
	f.Add(intent("b", "other"))
	f.Add(intent("self", "ssss"))
	f.Add(intent("", ""))
	f.Add(push(pushState{Left: []intentMsg{{"c", "cccc"}, {"b", "bbbb"}, {"x", "y"}}}))
	f.Add([]byte{msgLeaveIntent})
	f.Add(append([]byte{msgKeyringRequest}, `{"id":"id1","from":"b","op":"install","key":"AAAAAAAAAAAAAAAAAAAAAA=="}`...))
	f.Add(append([]byte{msgKeyringRequest}, `{"id":"id1","from":"b","op":"drop"}`...))
	f.Add(append([]byte{msgKeyringResponse}, `{"id":"id1","node":"b","keys":["x"],"error":""}`...))
	f.Add(append([]byte{msgKeyringResponse}, `{"id":"nope","node":"b"}`...))
	f.Add([]byte{msgKeyringResponse})
	f.Add([]byte{pushStateVersion, 'n', 'u', 'l', 'l'})
	f.Add([]byte{0})
	f.Add([]byte{255, 1, 2, 3})
	for _, s := range metaSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		g := detachedGossip(t)
		d := gossipDelegate{g}
		d.NotifyMsg(data)
		d.MergeRemoteState(data, false)
		d.MergeRemoteState(data, true)
		g.nodeAlive(&memberlist.Node{Name: "fuzz", Addr: net.IP(data), Meta: data}, true)
		g.nodeAlive(&memberlist.Node{Name: "b", Meta: data}, false)
		g.nodeGone(&memberlist.Node{Name: string(data), Meta: data})

		for _, m := range g.Members() {
			switch m.Status {
			case StatusAlive, StatusFailed, StatusLeft:
			default:
				t.Fatalf("member %q has status %q", m.Name, m.Status)
			}
		}
		if st := statusOf(g, "self"); st != StatusAlive {
			t.Fatalf("self is %s", st)
		}
		if ls := d.LocalState(false); ls != nil {
			var st pushState
			if ls[0] != pushStateVersion || json.Unmarshal(ls[1:], &st) != nil {
				t.Fatalf("bad local state %q", ls)
			}
		}
		for _, b := range d.GetBroadcasts(3, 1400) {
			if len(b) == 0 || b[0] != msgLeaveIntent {
				t.Fatalf("bad broadcast %q", b)
			}
		}
	})
}
