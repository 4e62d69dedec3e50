package peertest

// A wire-level stand-in for what FerretDB cannot show: replica-set states, members advertising
// names that do not resolve, real roles and privileges, and a 3.x server (MongoDB 3.0 to 3.4,
// wire versions 3 to 5) that speaks only OP_QUERY and authenticates with SCRAM-SHA-1. It
// speaks OP_QUERY and OP_MSG on a real socket (TLS optional) and answers as these pages say a
// mongod does:
//   - isMaster / hello: https://www.mongodb.com/docs/manual/reference/command/hello/ and, for
//     3.2, https://www.mongodb.com/docs/v3.2/reference/command/isMaster/ (ismaster, secondary,
//     setName, hosts, primary, me, maxWireVersion; no hello and no OP_MSG before 3.6)
//   - SCRAM-SHA-1 over saslStart / saslContinue: the MongoDB authentication specification
//     (github.com/mongodb/specifications, source/auth/auth.md, "SCRAM-SHA-1" and "Backwards
//     Compatibility": a server before 4.4 answers the client's proof with "v=..." and done:
//     false, and only an empty saslContinue then gets done: true) and
//     https://www.mongodb.com/docs/v3.2/core/security-scram-sha-1/ (the default mechanism
//     from 3.0); the server side is xdg-go/scram's, keyed on MongoDB's password digest
//     hex(md5("user:mongo:password")), 10000 iterations (3.2's scramIterationCount default).
//     A wrong password or an unknown user is { ok: 0, errmsg: "Authentication failed.",
//     code: 18 } (codeName only from 3.4 on, as the server's error codes gained names then).
//   - connectionStatus: https://www.mongodb.com/docs/v3.2/reference/command/connectionStatus/
//     (authInfo.authenticatedUsers and authenticatedUserRoles of this connection, and with
//     showPrivileges authenticatedUserPrivileges[].resource/actions)
//   - the roles' privileges: https://www.mongodb.com/docs/v3.2/reference/built-in-roles/
//     (readWrite, read, dbAdmin, readWriteAnyDatabase, userAdminAnyDatabase, clusterMonitor,
//     root)
//   - replSetGetStatus: https://www.mongodb.com/docs/v3.2/reference/command/replSetGetStatus/
//     (needs clusterMonitor: others get code 13, "not authorized on admin to execute command")

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xdg-go/scram"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"

	"github.com/haagent/haagent/internal/wire"
)

// MongoRole is a role grant, as createUser's roles array holds it.
type MongoRole struct{ Role, DB string }

// MongoStandIn is one fake member.
type MongoStandIn struct {
	Addr string
	// CA signed the certificate of a stand-in started with StartMongoStandInTLS.
	CA *CA
	mu sync.Mutex
	// Hello is the isMaster/hello answer (without ok); "me" is filled in.
	Hello bson.M
	// ConnectionStatus, when set, is the connectionStatus answer (without ok) whoever is
	// authenticated; otherwise the answer is built from the connection's users.
	ConnectionStatus bson.M
	// Answers replace the answer to the named commands (ok included).
	Answers map[string]bson.M
	// NoHello makes OP_MSG and hello unknown, as on a 3.x server that only speaks OP_QUERY.
	NoHello bool

	users    map[string]*standInUser // by "db.user"
	received bytes.Buffer
	commands []string
}

type standInUser struct {
	db, name string
	roles    []MongoRole
	creds    scram.StoredCredentials
}

// StartMongoStandIn listens on a loopback port.
func StartMongoStandIn(t testing.TB) *MongoStandIn {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveStandIn(t, l, nil)
}

// StartMongoStandInTLS listens on a loopback port with TLS only, its certificate (for
// 127.0.0.1 and localhost) from a CA of its own that nothing trusts unless told to.
func StartMongoStandInTLS(t testing.TB) *MongoStandIn {
	t.Helper()
	ca := NewCA(t, "haagent test stand-in CA")
	certPEM, keyPEM := ca.Issue(t, []string{"127.0.0.1", "localhost"}, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveStandIn(t, tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}), ca)
}

func serveStandIn(t testing.TB, l net.Listener, ca *CA) *MongoStandIn {
	s := &MongoStandIn{Addr: l.Addr().String(), CA: ca, users: map[string]*standInUser{},
		Hello: bson.M{"ismaster": true, "maxWireVersion": int32(17), "minWireVersion": int32(0)}}
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

// CreateUser adds a user as db.createUser({user, pwd, roles}) in db does, with SCRAM-SHA-1
// credentials only (3.x's createUser stores no SCRAM-SHA-256 ones). Unknown roles fail the test.
func (s *MongoStandIn) CreateUser(t testing.TB, db, name, password string, roles ...MongoRole) {
	t.Helper()
	for _, r := range roles {
		if _, ok := rolePrivileges(r); !ok {
			t.Fatalf("stand-in: role %q is not one it knows", r.Role)
		}
	}
	salt := make([]byte, 16)
	rand.Read(salt)
	c, err := scram.SHA1.NewClientUnprepped(name, wire.PasswordDigest(name, password), "")
	if err != nil {
		t.Fatal(err)
	}
	creds := c.GetStoredCredentials(scram.KeyFactors{Salt: string(salt), Iters: 10000})
	s.Set(func(s *MongoStandIn) {
		s.users[db+"."+name] = &standInUser{db: db, name: name, roles: roles, creds: creds}
	})
}

// Runbook32 shapes s as a MongoDB 3.2 replica-set member (set rs0, itself the primary) as the
// runbook builds it: wire version 4, OP_QUERY only, authorization enabled, and its three users
// in admin: siteUserAdmin (userAdminAnyDatabase), circle-admin (root, dbAdmin) and circle, with
// circlePassword and readWrite on circleDBs (the runbook's createUser grants circle_ghe,
// build_state_dev_ghe and containers_dev_ghe; its URIs also use remote_containers_dev_ghe).
func (s *MongoStandIn) Runbook32(t testing.TB, circlePassword string, circleDBs ...string) *MongoStandIn {
	t.Helper()
	s.Set(func(s *MongoStandIn) {
		s.NoHello = true
		s.Hello = bson.M{"ismaster": true, "secondary": false, "setName": "rs0", "hosts": bson.A{s.Addr}, "primary": s.Addr,
			"maxWireVersion": int32(4), "minWireVersion": int32(0)}
	})
	s.CreateUser(t, "admin", "siteUserAdmin", "site-admin-pw", MongoRole{Role: "userAdminAnyDatabase", DB: "admin"})
	s.CreateUser(t, "admin", "circle-admin", "circle-admin-pw", MongoRole{Role: "root", DB: "admin"}, MongoRole{Role: "dbAdmin", DB: "admin"})
	var roles []MongoRole
	for _, db := range circleDBs {
		roles = append(roles, MongoRole{Role: "readWrite", DB: db})
	}
	s.CreateUser(t, "admin", "circle", circlePassword, roles...)
	return s
}

// Received is everything clients sent (after the TLS handshake: the plaintext), in order.
func (s *MongoStandIn) Received() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.received.Bytes())
}

// Commands lists the names of the commands received, in order.
func (s *MongoStandIn) Commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.commands...)
}

// The 3.2 built-in roles' data actions (Built-In Roles page).
var (
	readActions      = bson.A{"collStats", "dbHash", "dbStats", "find", "killCursors", "listIndexes", "listCollections"}
	readWriteActions = bson.A{"collStats", "convertToCapped", "createCollection", "dbHash", "dbStats", "dropCollection", "createIndex", "dropIndex",
		"emptycapped", "find", "insert", "killCursors", "listIndexes", "listCollections", "remove", "renameCollectionSameDB", "update"}
	dbAdminActions = bson.A{"bypassDocumentValidation", "collMod", "collStats", "compact", "convertToCapped", "createCollection", "createIndex",
		"dbStats", "dropCollection", "dropDatabase", "dropIndex", "enableProfiler", "reIndex", "renameCollectionSameDB", "repairDatabase", "storageDetails", "validate"}
	userAdminActions      = bson.A{"changeCustomData", "changePassword", "createRole", "createUser", "dropRole", "dropUser", "grantRole", "revokeRole", "viewRole", "viewUser"}
	clusterMonitorActions = bson.A{"connPoolStats", "getCmdLineOpts", "getLog", "getParameter", "getShardMap", "hostInfo", "inprog", "listDatabases",
		"listShards", "netstat", "replSetGetConfig", "replSetGetStatus", "serverStatus", "shardingState", "top"}
)

func priv(db string, actions bson.A) bson.M {
	return bson.M{"resource": bson.M{"db": db, "collection": ""}, "actions": actions}
}

func clusterPriv(actions bson.A) bson.M {
	return bson.M{"resource": bson.M{"cluster": true}, "actions": actions}
}

func rolePrivileges(r MongoRole) (bson.A, bool) {
	switch r.Role {
	case "read":
		return bson.A{priv(r.DB, readActions)}, true
	case "readWrite":
		return bson.A{priv(r.DB, readWriteActions)}, true
	case "dbAdmin":
		return bson.A{priv(r.DB, dbAdminActions), bson.M{"resource": bson.M{"db": r.DB, "collection": "system.profile"}, "actions": bson.A{"find"}}}, true
	case "readWriteAnyDatabase":
		return bson.A{priv("", readWriteActions), clusterPriv(bson.A{"listDatabases"})}, true
	case "userAdminAnyDatabase":
		return bson.A{priv("", userAdminActions), clusterPriv(bson.A{"authSchemaUpgrade", "invalidateUserCache", "listDatabases"})}, true
	case "clusterMonitor":
		return bson.A{clusterPriv(clusterMonitorActions)}, true
	case "root":
		return bson.A{priv("", readWriteActions), priv("", dbAdminActions), priv("", userAdminActions), clusterPriv(clusterMonitorActions)}, true
	}
	return nil, false
}

// session is one connection's state: its SASL conversation and who authenticated on it.
type session struct {
	conv      *scram.ServerConversation
	convUser  string // "db.user" once saslStart named a known user
	awaitLast bool   // the proof checked, an empty saslContinue awaited (before 4.4)
	skipEmpty bool   // saslStart's options.skipEmptyExchange
	authed    []*standInUser
}

func (s *MongoStandIn) refuse(code int32, codeName, msg string) bson.M {
	out := bson.M{"ok": 0.0, "errmsg": msg, "code": code}
	if w, _ := s.Hello["maxWireVersion"].(int32); w >= 5 {
		out["codeName"] = codeName // from 3.4
	}
	return out
}

func (s *MongoStandIn) answer(ss *session, db string, cmd bson.Raw) bson.M {
	s.mu.Lock()
	defer s.mu.Unlock()
	name := ""
	if els, err := cmd.Elements(); err == nil && len(els) > 0 {
		name = els[0].Key()
	}
	s.commands = append(s.commands, name)
	if a, ok := s.Answers[name]; ok {
		return a
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
	case "saslstart":
		return s.saslStart(ss, db, cmd)
	case "saslcontinue":
		return s.saslContinue(ss, cmd)
	case "connectionstatus":
		if s.ConnectionStatus != nil {
			out := bson.M{"ok": 1.0}
			for k, v := range s.ConnectionStatus {
				out[k] = v
			}
			return out
		}
		users, roles, privs := bson.A{}, bson.A{}, bson.A{}
		for _, u := range ss.authed {
			users = append(users, bson.M{"user": u.name, "db": u.db})
			for _, r := range u.roles {
				roles = append(roles, bson.M{"role": r.Role, "db": r.DB})
				p, _ := rolePrivileges(r)
				privs = append(privs, p...)
			}
		}
		info := bson.M{"authenticatedUsers": users, "authenticatedUserRoles": roles}
		if show, _ := cmd.Lookup("showPrivileges").BooleanOK(); show {
			info["authenticatedUserPrivileges"] = privs
		}
		return bson.M{"ok": 1.0, "authInfo": info}
	case "replsetgetstatus":
		if len(s.users) > 0 && !ss.hasRole("clusterMonitor", "root") {
			return s.refuse(13, "Unauthorized", "not authorized on admin to execute command { replSetGetStatus: 1 }")
		}
		return s.refuse(76, "NoReplicationEnabled", "not running with --replSet")
	case "ping", "endsessions", "buildinfo":
		return bson.M{"ok": 1.0}
	}
	return s.refuse(59, "CommandNotFound", fmt.Sprintf("no such command: '%s'", name))
}

func (ss *session) hasRole(roles ...string) bool {
	for _, u := range ss.authed {
		for _, r := range u.roles {
			for _, want := range roles {
				if r.Role == want {
					return true
				}
			}
		}
	}
	return false
}

func payloadOf(cmd bson.Raw) []byte {
	_, p, _ := cmd.Lookup("payload").BinaryOK()
	return p
}

func (s *MongoStandIn) authFailed(ss *session) bson.M {
	ss.conv, ss.convUser, ss.awaitLast = nil, "", false
	return s.refuse(18, "AuthenticationFailed", "Authentication failed.")
}

func (s *MongoStandIn) saslStart(ss *session, db string, cmd bson.Raw) bson.M {
	if mech, _ := cmd.Lookup("mechanism").StringValueOK(); mech != "SCRAM-SHA-1" {
		return s.refuse(2, "BadValue", "Unsupported mechanism "+wire.ServerText(mech))
	}
	srv, _ := scram.SHA1.NewServer(func(user string) (scram.StoredCredentials, error) {
		u, ok := s.users[db+"."+user]
		if !ok {
			return scram.StoredCredentials{}, fmt.Errorf("UserNotFound: could not find user %s@%s", user, db)
		}
		ss.convUser = db + "." + user
		return u.creds, nil
	})
	ss.conv, ss.awaitLast = srv.NewConversation(), false
	ss.skipEmpty, _ = cmd.Lookup("options", "skipEmptyExchange").BooleanOK()
	out, err := ss.conv.Step(string(payloadOf(cmd)))
	if err != nil {
		return s.authFailed(ss)
	}
	return bson.M{"ok": 1.0, "conversationId": int32(1), "done": false, "payload": primitive.Binary{Data: []byte(out)}}
}

func (s *MongoStandIn) saslContinue(ss *session, cmd bson.Raw) bson.M {
	if id, ok := cmd.Lookup("conversationId").Int32OK(); ss.conv == nil || !ok || id != 1 {
		return s.refuse(17, "ProtocolError", "No SASL session state found")
	}
	payload := payloadOf(cmd)
	if ss.awaitLast {
		if len(payload) != 0 {
			return s.authFailed(ss)
		}
		ss.authed = append(ss.authed, s.users[ss.convUser])
		ss.conv, ss.awaitLast = nil, false
		return bson.M{"ok": 1.0, "conversationId": int32(1), "done": true, "payload": primitive.Binary{Data: []byte{}}}
	}
	out, err := ss.conv.Step(string(payload))
	if err != nil || !ss.conv.Valid() {
		return s.authFailed(ss)
	}
	// From 4.4 (wire 9) the client's skipEmptyExchange ends the conversation here.
	if w, _ := s.Hello["maxWireVersion"].(int32); w >= 9 && ss.skipEmpty {
		ss.authed = append(ss.authed, s.users[ss.convUser])
		ss.conv = nil
		return bson.M{"ok": 1.0, "conversationId": int32(1), "done": true, "payload": primitive.Binary{Data: []byte(out)}}
	}
	ss.awaitLast = true
	return bson.M{"ok": 1.0, "conversationId": int32(1), "done": false, "payload": primitive.Binary{Data: []byte(out)}}
}

// recorder keeps what a connection reads.
type recorder struct {
	s *MongoStandIn
	r io.Reader
}

func (r recorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.s.mu.Lock()
	r.s.received.Write(p[:n])
	r.s.mu.Unlock()
	return n, err
}

func (s *MongoStandIn) serve(c net.Conn) {
	defer c.Close()
	in := recorder{s, c}
	ss := &session{}
	for {
		h, body, err := wire.ReadMessage(in)
		if err != nil {
			return
		}
		var reply []byte
		switch h.OpCode {
		case wire.OpQuery:
			coll, q, err := wire.ParseQuery(body)
			if err != nil {
				return
			}
			reply, err = wire.ReplyMessage(h.RequestID, s.answer(ss, strings.TrimSuffix(coll, ".$cmd"), q))
			if err != nil {
				return
			}
		case wire.OpMsg:
			if s.NoHello {
				return // a 3.x server does not know OP_MSG
			}
			q, err := wire.ParseMsg(body)
			if err != nil {
				return
			}
			db, _ := q.Lookup("$db").StringValueOK()
			reply, err = wire.MsgMessage(h.RequestID, s.answer(ss, db, q))
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
