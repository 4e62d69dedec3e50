package peertest

// A wire-level stand-in for what FerretDB cannot show (replica-set states, members advertising
// names that do not resolve, privilege documents, a 3.2-era server without hello). It speaks
// OP_QUERY and OP_MSG on a real socket and answers with documents shaped as the MongoDB
// server manual specifies:
//   - isMaster / hello: https://www.mongodb.com/docs/manual/reference/command/hello/
//     (ismaster, secondary, setName, hosts, primary, me, maxWireVersion)
//   - connectionStatus: https://www.mongodb.com/docs/manual/reference/command/connectionStatus/
//     (authInfo.authenticatedUsers, authInfo.authenticatedUserPrivileges[].resource/actions)
//   - replSetGetStatus: https://www.mongodb.com/docs/manual/reference/command/replSetGetStatus/

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"

	"go.mongodb.org/mongo-driver/bson"

	"github.com/haagent/haagent/internal/wire"
)

// MongoStandIn is one fake member.
type MongoStandIn struct {
	Addr string
	mu   sync.Mutex
	// Hello is the isMaster/hello answer (without ok); "me" is filled in.
	Hello bson.M
	// ConnectionStatus is the connectionStatus answer (without ok).
	ConnectionStatus bson.M
	// NoHello makes OP_MSG and hello unknown, as on a 3.2 server that only speaks OP_QUERY.
	NoHello bool
}

// StartMongoStandIn listens on a loopback port.
func StartMongoStandIn(t testing.TB) *MongoStandIn {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &MongoStandIn{Addr: l.Addr().String(), Hello: bson.M{"ismaster": true, "maxWireVersion": int32(17), "minWireVersion": int32(0)}}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go s.serve(c)
		}
	}()
	return s
}

// Set replaces the answers under the lock.
func (s *MongoStandIn) Set(f func(s *MongoStandIn)) { s.mu.Lock(); f(s); s.mu.Unlock() }

func (s *MongoStandIn) answer(cmd bson.Raw) bson.M {
	s.mu.Lock()
	defer s.mu.Unlock()
	name := ""
	if els, err := cmd.Elements(); err == nil && len(els) > 0 {
		name = els[0].Key()
	}
	switch strings.ToLower(name) {
	case "ismaster", "hello":
		if s.NoHello && name == "hello" {
			break
		}
		out := bson.M{"ok": 1.0, "me": s.Addr, "maxBsonObjectSize": int32(16 << 20), "maxMessageSizeBytes": int32(48000000), "maxWriteBatchSize": int32(100000)}
		for k, v := range s.Hello {
			out[k] = v
		}
		if name == "hello" {
			out["isWritablePrimary"] = out["ismaster"]
		}
		return out
	case "connectionstatus":
		if s.ConnectionStatus != nil {
			out := bson.M{"ok": 1.0}
			for k, v := range s.ConnectionStatus {
				out[k] = v
			}
			return out
		}
		return bson.M{"ok": 1.0, "authInfo": bson.M{"authenticatedUsers": bson.A{}, "authenticatedUserRoles": bson.A{}}}
	case "ping", "endsessions":
		return bson.M{"ok": 1.0}
	}
	return bson.M{"ok": 0.0, "code": int32(59), "codeName": "CommandNotFound", "errmsg": fmt.Sprintf("no such command: '%s'", name)}
}

func (s *MongoStandIn) serve(c net.Conn) {
	defer c.Close()
	for {
		h, body, err := wire.ReadMessage(c)
		if err != nil {
			return
		}
		var reply []byte
		switch h.OpCode {
		case wire.OpQuery:
			_, q, err := wire.ParseQuery(body)
			if err != nil {
				return
			}
			reply, err = wire.ReplyMessage(h.RequestID, s.answer(q))
			if err != nil {
				return
			}
		case wire.OpMsg:
			if s.NoHello {
				return // a 3.2 server does not know OP_MSG
			}
			q, err := wire.ParseMsg(body)
			if err != nil {
				return
			}
			reply, err = wire.MsgMessage(h.RequestID, s.answer(q))
			if err != nil {
				return
			}
		default:
			return
		}
		if _, err := c.Write(reply); err != nil {
			return
		}
	}
}
