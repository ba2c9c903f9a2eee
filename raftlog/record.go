package raftlog

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"time"

	"github.com/hashicorp/raft"
)

// A record on disk is
//
//	u32 payload length | u32 CRC-32C of the payload | payload
//
// and the payload is
//
//	u64 index | u64 term | u8 type | i64 appended-at (Unix ns) |
//	u32 data length | data | u32 extensions length | extensions
//
// all little-endian. The checksum covers everything Raft stored, so a
// flipped bit anywhere in an entry is found when it is read.
const (
	headerSize  = 8
	fixedFields = 8 + 8 + 1 + 8 + 4 + 4
	// maxPayload bounds what a damaged length field can make us allocate.
	maxPayload = 1 << 30
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var errShortRecord = errors.New("record cut short")

// appendRecord encodes l onto buf.
func appendRecord(buf []byte, l *raft.Log) []byte {
	n := fixedFields + len(l.Data) + len(l.Extensions)
	start := len(buf)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(n))
	buf = binary.LittleEndian.AppendUint32(buf, 0) // the checksum, below
	buf = binary.LittleEndian.AppendUint64(buf, l.Index)
	buf = binary.LittleEndian.AppendUint64(buf, l.Term)
	buf = append(buf, byte(l.Type))
	var at int64
	if !l.AppendedAt.IsZero() {
		at = l.AppendedAt.UnixNano()
	}
	buf = binary.LittleEndian.AppendUint64(buf, uint64(at))
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(l.Data)))
	buf = append(buf, l.Data...)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(l.Extensions)))
	buf = append(buf, l.Extensions...)
	binary.LittleEndian.PutUint32(buf[start+4:], crc32.Checksum(buf[start+headerSize:], castagnoli))
	return buf
}

// payloadLen reads a record's header; it fails on a length no record of
// ours can have.
func payloadLen(h []byte) (int, error) {
	n := binary.LittleEndian.Uint32(h)
	if n < fixedFields || n > maxPayload {
		return 0, errors.New("impossible record length")
	}
	return int(n), nil
}

// decodeRecord checks rec (header and payload) against its checksum and
// decodes it into l. l.Data and l.Extensions alias rec.
func decodeRecord(rec []byte, l *raft.Log) error {
	if len(rec) < headerSize+fixedFields {
		return errShortRecord
	}
	p := rec[headerSize:]
	if crc32.Checksum(p, castagnoli) != binary.LittleEndian.Uint32(rec[4:]) {
		return errors.New("checksum mismatch")
	}
	l.Index = binary.LittleEndian.Uint64(p)
	l.Term = binary.LittleEndian.Uint64(p[8:])
	l.Type = raft.LogType(p[16])
	if at := int64(binary.LittleEndian.Uint64(p[17:])); at != 0 {
		l.AppendedAt = time.Unix(0, at)
	} else {
		l.AppendedAt = time.Time{}
	}
	p = p[25:]
	dn := int(binary.LittleEndian.Uint32(p))
	if dn > len(p)-8 {
		return errors.New("data length beyond the record")
	}
	l.Data = nilIfEmpty(p[4 : 4+dn])
	p = p[4+dn:]
	en := int(binary.LittleEndian.Uint32(p))
	if en != len(p)-4 {
		return errors.New("extensions length does not match the record")
	}
	l.Extensions = nilIfEmpty(p[4:])
	return nil
}

func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}
