// Package wire speaks just enough of the MongoDB wire protocol for haagent: a legacy isMaster
// over OP_QUERY, which every server version answers (the Go driver refuses servers older than
// 3.6, and the runbook's MongoDB is 3.2), and the message framing a test stand-in needs.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"unicode/utf8"

	"go.mongodb.org/mongo-driver/bson"
)

// Opcodes (MongoDB wire protocol reference).
const (
	OpReply = 1
	OpQuery = 2004
	OpMsg   = 2013
)

var requestID atomic.Int32

// Header is the 16-byte message header.
type Header struct {
	Length, RequestID, ResponseTo, OpCode int32
}

// ReadMessage reads one whole message.
func ReadMessage(r io.Reader) (Header, []byte, error) {
	var hb [16]byte
	if _, err := io.ReadFull(r, hb[:]); err != nil {
		return Header{}, nil, err
	}
	h := Header{
		Length: int32(binary.LittleEndian.Uint32(hb[0:])), RequestID: int32(binary.LittleEndian.Uint32(hb[4:])),
		ResponseTo: int32(binary.LittleEndian.Uint32(hb[8:])), OpCode: int32(binary.LittleEndian.Uint32(hb[12:])),
	}
	if h.Length < 16 || h.Length > 48<<20 {
		return h, nil, fmt.Errorf("message length %d is not a MongoDB message (is this port a MongoDB server?)", h.Length)
	}
	body := make([]byte, h.Length-16)
	if _, err := io.ReadFull(r, body); err != nil {
		return h, nil, err
	}
	return h, body, nil
}

func frame(op int32, responseTo int32, body []byte) []byte {
	out := make([]byte, 16, 16+len(body))
	binary.LittleEndian.PutUint32(out[0:], uint32(16+len(body)))
	binary.LittleEndian.PutUint32(out[4:], uint32(requestID.Add(1)))
	binary.LittleEndian.PutUint32(out[8:], uint32(responseTo))
	binary.LittleEndian.PutUint32(out[12:], uint32(op))
	return append(out, body...)
}

// QueryMessage builds an OP_QUERY of cmd against db.$cmd.
func QueryMessage(db string, cmd bson.D) ([]byte, error) {
	doc, err := bson.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	body := make([]byte, 4)
	body = append(body, db+".$cmd"...)
	body = append(body, 0)
	body = binary.LittleEndian.AppendUint32(body, 0)          // numberToSkip
	body = binary.LittleEndian.AppendUint32(body, 0xffffffff) // numberToReturn: -1
	return frame(OpQuery, 0, append(body, doc...)), nil
}

// ParseQuery returns an OP_QUERY's collection and query document.
func ParseQuery(body []byte) (string, bson.Raw, error) {
	if len(body) < 4 {
		return "", nil, errors.New("short OP_QUERY")
	}
	rest := body[4:]
	i := 0
	for i < len(rest) && rest[i] != 0 {
		i++
	}
	if i+9 > len(rest) {
		return "", nil, errors.New("short OP_QUERY")
	}
	coll := string(rest[:i])
	doc := bson.Raw(rest[i+9:])
	if err := doc.Validate(); err != nil {
		return "", nil, err
	}
	return coll, doc, nil
}

// ReplyMessage builds an OP_REPLY with one document.
func ReplyMessage(responseTo int32, doc any) ([]byte, error) {
	d, err := bson.Marshal(doc)
	if err != nil {
		return nil, err
	}
	body := make([]byte, 20)
	binary.LittleEndian.PutUint32(body[16:], 1) // numberReturned
	return frame(OpReply, responseTo, append(body, d...)), nil
}

// ParseReply returns the first document of an OP_REPLY.
func ParseReply(body []byte) (bson.Raw, error) {
	if len(body) < 20 {
		return nil, errors.New("short OP_REPLY")
	}
	doc := bson.Raw(body[20:])
	return doc, doc.Validate()
}

// ParseMsg returns the body document (section kind 0) of an OP_MSG.
func ParseMsg(body []byte) (bson.Raw, error) {
	if len(body) < 5 {
		return nil, errors.New("short OP_MSG")
	}
	rest := body[4:]
	for len(rest) > 0 {
		kind := rest[0]
		rest = rest[1:]
		if len(rest) < 4 {
			return nil, errors.New("short OP_MSG section")
		}
		size := int(binary.LittleEndian.Uint32(rest))
		if size > len(rest) {
			return nil, errors.New("OP_MSG section overruns the message")
		}
		switch kind {
		case 0:
			doc := bson.Raw(rest[:size])
			return doc, doc.Validate()
		case 1:
			rest = rest[size:]
		default:
			return nil, fmt.Errorf("unknown OP_MSG section kind %d", kind)
		}
	}
	return nil, errors.New("OP_MSG without a body section")
}

// MsgMessage builds an OP_MSG reply with one body document.
func MsgMessage(responseTo int32, doc any) ([]byte, error) {
	d, err := bson.Marshal(doc)
	if err != nil {
		return nil, err
	}
	body := make([]byte, 4, 5+len(d))
	body = append(body, 0)
	return frame(OpMsg, responseTo, append(body, d...)), nil
}

// IsMaster is the part of a legacy isMaster answer haagent reads (MongoDB manual, "isMaster"
// and "hello": ismaster, secondary, setName, hosts, passives, arbiters, primary, me,
// maxWireVersion).
type IsMaster struct {
	IsMaster       bool     `bson:"ismaster"`
	Secondary      bool     `bson:"secondary"`
	SetName        string   `bson:"setName"`
	Hosts          []string `bson:"hosts"`
	Passives       []string `bson:"passives"`
	Arbiters       []string `bson:"arbiters"`
	Primary        string   `bson:"primary"`
	Me             string   `bson:"me"`
	MaxWireVersion int32    `bson:"maxWireVersion"`
	Msg            string   `bson:"msg"`
	OK             float64  `bson:"ok"`
}

// Members returns every advertised member (empty names, which some servers send when they
// listen on no plain address, are skipped).
func (m IsMaster) Members() []string {
	var out []string
	for _, list := range [][]string{m.Hosts, m.Passives, m.Arbiters} {
		for _, h := range list {
			if h != "" {
				out = append(out, h)
			}
		}
	}
	return out
}

// State names the member's role as the manual's replica-set states do.
func (m IsMaster) State() string {
	switch {
	case m.IsMaster && m.SetName != "":
		return "PRIMARY"
	case m.IsMaster:
		return "standalone"
	case m.Secondary:
		return "SECONDARY"
	}
	return "not PRIMARY or SECONDARY (RECOVERING, STARTUP2 or arbiter)"
}

// Version maps maxWireVersion to the server release that introduced it.
func Version(maxWire int32) string {
	switch {
	case maxWire >= 21:
		return "7.0 or later"
	case maxWire >= 17:
		return "6.0"
	case maxWire >= 13:
		return "5.0"
	case maxWire >= 9:
		return "4.4"
	case maxWire >= 8:
		return "4.2"
	case maxWire >= 7:
		return "4.0"
	case maxWire >= 6:
		return "3.6"
	case maxWire >= 5:
		return "3.4"
	case maxWire >= 4:
		return "3.2"
	case maxWire >= 3:
		return "3.0"
	}
	return "2.6 or older"
}

// DriverMinWire is 3.6's wire version, the oldest the Go driver accepts.
const DriverMinWire = 6

// SCRAMMinWire is 3.0's wire version: SCRAM-SHA-1 exists, and is the default mechanism, from
// 3.0 on; older servers know only MONGODB-CR.
const SCRAMMinWire = 3

// LegacyIsMaster sends isMaster as OP_QUERY on rw and reads the answer.
func LegacyIsMaster(rw io.ReadWriter) (IsMaster, error) {
	var im IsMaster
	doc, err := roundTrip(rw, "admin", bson.D{{Key: "isMaster", Value: 1}})
	if err != nil {
		return im, err
	}
	if err := bson.Unmarshal(doc, &im); err != nil {
		return im, fmt.Errorf("decoding the isMaster answer: %w", err)
	}
	return im, nil
}

// roundTrip sends cmd against db as OP_QUERY and returns the answer's document, whatever its
// ok field says. An OP_MSG answer is accepted too: some proxies answer that way.
func roundTrip(rw io.ReadWriter, db string, cmd bson.D) (bson.Raw, error) {
	name := "command"
	if len(cmd) > 0 {
		name = cmd[0].Key
	}
	msg, err := QueryMessage(db, cmd)
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", name, err)
	}
	id := int32(binary.LittleEndian.Uint32(msg[4:]))
	if _, err := rw.Write(msg); err != nil {
		return nil, fmt.Errorf("sending %s: %w", name, err)
	}
	h, body, err := ReadMessage(rw)
	if err != nil {
		return nil, fmt.Errorf("reading the answer to %s: %w", name, err)
	}
	if h.ResponseTo != id {
		return nil, fmt.Errorf("the answer to %s responds to request %d, not %d: %w", name, h.ResponseTo, id, ErrNotMongo)
	}
	var doc bson.Raw
	switch h.OpCode {
	case OpReply:
		doc, err = ParseReply(body)
	case OpMsg:
		doc, err = ParseMsg(body)
	default:
		return nil, fmt.Errorf("unexpected opcode %d in the answer to %s: %w", h.OpCode, name, ErrNotMongo)
	}
	if err != nil {
		return nil, fmt.Errorf("reading the answer to %s: %w", name, err)
	}
	return doc, nil
}

// ErrNotMongo marks an answer no MongoDB server would send.
var ErrNotMongo = errors.New("not a MongoDB answer")

// MaxServerText bounds the server-supplied text (errmsg) an error carries: a peer, possibly an
// impostor, chooses it, and it ends up in findings and the journal.
const MaxServerText = 300

// ServerText cuts s to MaxServerText bytes on a character boundary, saying how much was cut.
func ServerText(s string) string {
	if len(s) <= MaxServerText {
		return s
	}
	cut := MaxServerText
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s... (%d more bytes)", s[:cut], len(s)-cut)
}

// CommandError is a command the server refused (ok: 0), with its code (MongoDB's error codes:
// 18 AuthenticationFailed, 13 Unauthorized, 59 CommandNotFound). 3.2 servers send no codeName.
type CommandError struct {
	Command  string
	Code     int32
	CodeName string
	// Message is the server's errmsg, cut to MaxServerText.
	Message string
}

func (e *CommandError) Error() string {
	code := fmt.Sprint(e.Code)
	if e.CodeName != "" {
		code += " " + e.CodeName
	}
	return fmt.Sprintf("%s refused: %s (code %s)", e.Command, e.Message, code)
}

// Command runs cmd against db over OP_QUERY on rw (the only command protocol every server
// version speaks) and returns the answer; an answer without ok: 1 is a *CommandError.
func Command(rw io.ReadWriter, db string, cmd bson.D) (bson.Raw, error) {
	doc, err := roundTrip(rw, db, cmd)
	if err != nil {
		return nil, err
	}
	var st struct {
		OK       float64 `bson:"ok"`
		Code     int32   `bson:"code"`
		CodeName string  `bson:"codeName"`
		ErrMsg   string  `bson:"errmsg"`
		Err      string  `bson:"$err"` // OP_REPLY with QueryFailure
	}
	if err := bson.Unmarshal(doc, &st); err != nil {
		return nil, fmt.Errorf("decoding the answer to %s: %w", cmd[0].Key, err)
	}
	if st.OK != 1 {
		msg := st.ErrMsg
		if msg == "" {
			msg = st.Err
		}
		return nil, &CommandError{Command: cmd[0].Key, Code: st.Code, CodeName: ServerText(st.CodeName), Message: ServerText(msg)}
	}
	return doc, nil
}
