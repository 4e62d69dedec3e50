package probes

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"syscall"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
	"go.mongodb.org/mongo-driver/x/mongo/driver"
	"go.mongodb.org/mongo-driver/x/mongo/driver/connstring"

	"github.com/haagent/haagent/internal/findings"
	"github.com/haagent/haagent/internal/settings"
	"github.com/haagent/haagent/internal/wire"
)

// MongoVariables are the URIs the services read.
var MongoVariables = []string{
	"CIRCLE_SECRETS_MONGODB_MAIN_URI", "CIRCLE_SECRETS_MONGODB_ACTION_LOGS_URI", "CIRCLE_SECRETS_MONGODB_BUILD_STATE_URI",
	"CIRCLE_SECRETS_MONGODB_CONTAINERS_URI", "CIRCLE_SECRETS_MONGODB_REMOTE_CONTAINERS_URI",
}

// readWrite is what the services need on each database their URIs name.
var readWrite = []string{"find", "insert", "update", "remove"}

// mongoGroup is one endpoint (hosts, user, auth source, replica set, TLS) and every database
// the URIs sharing it name: identical endpoints are connected once.
type mongoGroup struct {
	cs     *connstring.ConnString
	vars   []string
	varDBs []string
	dbs    []string
	target string
}

func (g *mongoGroup) authSource() string {
	if g.cs.AuthSourceSet {
		return g.cs.AuthSource
	}
	if g.cs.Database != "" {
		return g.cs.Database
	}
	return "admin"
}

func probeMongo(ctx context.Context, p *prober, s *settings.Settings) *result {
	res := &result{}
	groups := map[string]*mongoGroup{}
	var order []string
	for _, name := range MongoVariables {
		v, fs := s.Require("mongo", name)
		if len(fs) > 0 {
			res.addAll(fs)
			continue
		}
		cs, err := connstring.Parse(v.Value)
		if err != nil {
			// The parser's text may quote the password (whole, or the part it took for a host):
			// it is shown only when it holds nothing of the user information.
			msg := err.Error()
			parts, _ := findings.SplitURI(v.Value)
			if strings.Contains(msg, v.Value) || quotesPiece(msg, parts.Password) || (cs != nil && cs.Password != "" && strings.Contains(msg, cs.Password)) {
				msg = "the URI does not parse"
			}
			res.add(findings.New(findings.URIMalformed, v.Where(), fmt.Sprintf("%s is not a valid MongoDB URI: %s", name, msg), findings.URIEvidence(v.Value)))
			continue
		}
		// cs.AuthSource is the effective one: the parser sets a URI's own database (or admin)
		// when authSource= is absent, so such URIs are checked against their databases.
		key := strings.Join(cs.Hosts, ",") + "\x00" + cs.Username + "\x00" + cs.Password + "\x00" + cs.AuthSource + "\x00" + cs.ReplicaSet + "\x00" + cs.AuthMechanism + fmt.Sprint(cs.SSL)
		g, ok := groups[key]
		if !ok {
			user := ""
			if cs.Username != "" {
				user = cs.Username + "@"
			}
			g = &mongoGroup{cs: cs, target: user + strings.Join(cs.Hosts, ",")}
			if cs.ReplicaSet != "" {
				g.target += "?replicaSet=" + cs.ReplicaSet
			}
			groups[key] = g
			order = append(order, key)
		}
		g.vars = append(g.vars, name)
		g.varDBs = append(g.varDBs, cs.Database)
		if cs.Database != "" && !contains(g.dbs, cs.Database) {
			g.dbs = append(g.dbs, cs.Database)
		}
	}
	for _, k := range order {
		// Another service's settings may lead to the same endpoint and databases: probed once
		// (probes.go).
		g := groups[k]
		p.once(ctx, "mongo", k+"\x00"+strings.Join(g.vars, ",")+"\x00"+strings.Join(g.varDBs, ","), res, func(r *result) { p.mongoGroup(ctx, g, r) })
	}
	return res
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func splitHostPort(h string) endpoint {
	host, port, err := net.SplitHostPort(h)
	if err != nil {
		host, port = h, "27017"
	}
	return endpoint{Host: host, Port: port, Target: h}
}

// maxMembers is MongoDB's limit on a replica set's members: a server advertising more is not
// believed, and haagent does not dial an unbounded list a peer hands it.
const maxMembers = 50

func (p *prober) mongoGroup(ctx context.Context, g *mongoGroup, res *result) {
	useTLS := g.cs.SSL
	// haagent verifies the certificate even where the URIs say tlsInsecure: it never sends a
	// credential to a server it could not verify (see below), and the operator is told.
	verify := true
	var im wire.IsMaster
	var seed string
	for _, h := range g.cs.Hosts {
		ep := splitHostPort(h)
		ep.Target = g.target
		if f := p.reach(ctx, ep); f != nil {
			f.Summary += fmt.Sprintf(" (seed %s of %s)", h, strings.Join(g.vars, ", "))
			res.add(*f)
			continue
		}
		m, err := p.isMaster(ctx, h, useTLS, verify)
		if err != nil && verify {
			if f := tlsFinding(ep, err); f != nil {
				if g.cs.Username != "" {
					f.Summary += fmt.Sprintf("; haagent sent no credentials to it, so the password and privileges of %q are unchecked", g.cs.Username)
				}
				if g.cs.SSLInsecure {
					f.Summary += " (the URIs set tlsInsecure: the services would not verify it and would send the password to whoever answers)"
				}
				res.add(*f)
				// The unverified retry asks isMaster only: connectivity and the replica set
				// can still be checked without handing anything to an impostor.
				verify = false
				m, err = p.isMaster(ctx, h, useTLS, verify)
			}
		}
		if err != nil {
			res.add(mongoConnFinding(g, h, useTLS, err).WithHost(ep.addr()))
			continue
		}
		im, seed = m, h
		break
	}
	if seed == "" {
		res.check(Checked{Service: "mongo", Target: g.target})
		return
	}
	// What follows was learnt from the seed that answered, or is about a member (which names
	// its own host).
	defer res.stamp(len(res.findings), splitHostPort(seed).addr())
	ok := true
	detail := fmt.Sprintf("MongoDB %s", wire.Version(im.MaxWireVersion))
	if useTLS {
		detail += map[bool]string{true: ", TLS verified", false: ", TLS, certificate not verified"}[verify]
	}
	add := func(f findings.Finding) {
		if f.Severity == findings.Error {
			ok = false
		}
		res.add(f)
	}
	setName := wire.ServerText(im.SetName)
	members := im.Members()
	if len(members) > maxMembers {
		members = members[:maxMembers]
	}

	// Replica set: the name, a primary, and every advertised member reachable from here. Only
	// isMaster is asked: replSetGetStatus needs clusterMonitor, which the services' user lacks.
	if g.cs.ReplicaSet != "" && im.SetName != g.cs.ReplicaSet {
		got := fmt.Sprintf("%q", setName)
		if im.SetName == "" {
			got = "no replica set (a standalone server)"
		}
		add(findings.New(findings.MongoReplsetMismatch, g.target,
			fmt.Sprintf("the URI asks for replica set %q; %s answers %s", g.cs.ReplicaSet, seed, got), "isMaster.setName").
			WithFix(fmt.Sprintf("set replicaSet=%s in the URIs (%s), or connect to the intended set", setName, strings.Join(g.vars, ", "))))
	}
	if im.SetName != "" && g.cs.ReplicaSet == "" && len(g.cs.Hosts) == 1 {
		// One host and no replicaSet=: the services' driver talks to that host alone.
		add(findings.New(findings.MongoNoReplicaSetInURI, g.target,
			fmt.Sprintf("the URIs (%s) name the single host %s and no replicaSet=, but it is a member of replica set %q (now %s): the services talk to this host alone, and after a failover it no longer takes writes",
				strings.Join(g.vars, ", "), seed, setName, im.State()), "isMaster.setName").
			WithFix(fmt.Sprintf("add replicaSet=%s to the URIs and name the members as seeds: mongodb://USER:PASSWORD@%s/DB?replicaSet=%s&...",
				setName, wire.ServerText(strings.Join(members, ",")), setName)))
	}
	if im.SetName != "" {
		states := map[string]string{}
		for _, m := range members {
			ep := splitHostPort(m)
			ep.Target = wire.ServerText(m)
			if f := p.reach(ctx, ep); f != nil {
				states[m] = "unreachable: " + f.Summary
				add(findings.New(findings.MongoMemberUnreachable, ep.Target,
					fmt.Sprintf("replica set %s advertises member %s, which this machine cannot reach (%s)", setName, ep.Target, f.Code), f.Evidence).
					WithFix("the driver connects to the names the members advertise, not the URI's: make " + ep.Target + " resolve and reach from here, or rename the member (MongoDB manual, \"Change Hostnames in a Replica Set\": rs.conf(), edit members[n].host, rs.reconfig(cfg)); an AWS-internal name a primary adopted at rs.initiate() is the usual cause").
					WithHost(wire.ServerText(ep.addr()))) // the member's name is the peer's text
				continue
			}
			if mm, err := p.isMaster(ctx, m, useTLS, verify); err == nil {
				states[m] = mm.State()
			} else {
				states[m] = "no answer: " + wire.ServerText(err.Error())
			}
		}
		if im.Primary == "" && !im.IsMaster {
			var parts []string
			for _, m := range members {
				parts = append(parts, wire.ServerText(m)+": "+states[m])
			}
			sort.Strings(parts)
			add(findings.New(findings.MongoNoPrimary, g.target, fmt.Sprintf("replica set %s has no primary: writes fail until one is elected", setName),
				strings.Join(parts, "; ")).
				WithFix("check the members' logs and rs.status() on a member: a majority must be up and reach each other to elect a primary"))
		}
	}

	// Authentication. Never to a server whose certificate failed verification: the TLS
	// finding above says so, and everything that needs no credential has been checked.
	if useTLS && !verify {
		if g.cs.Username != "" {
			detail += ", password not sent"
		}
		res.check(Checked{Service: "mongo", Target: g.target, OK: ok, Detail: detail})
		return
	}
	mech := strings.ToUpper(g.cs.AuthMechanism)
	var status statusFunc
	switch {
	case im.MaxWireVersion >= wire.DriverMinWire:
		status = func(ctx context.Context, authSource string) (bson.Raw, error) {
			return p.connectionStatus(ctx, g, seed, authSource, useTLS)
		}
	case g.cs.Username == "" && mech == "":
		// No credentials in the URIs: nothing to authenticate with or to check privileges for.
	case im.MaxWireVersion >= wire.SCRAMMinWire && (mech == "" || mech == "SCRAM-SHA-1"):
		// 3.0 to 3.4: the driver refuses them; SCRAM-SHA-1 over OP_QUERY, as their drivers did.
		status = func(ctx context.Context, authSource string) (bson.Raw, error) {
			return p.legacyConnectionStatus(ctx, g, seed, authSource, useTLS)
		}
		detail += ", SCRAM-SHA-1 over OP_QUERY"
	default:
		what := fmt.Sprintf("MongoDB %s has no SCRAM-SHA-1 (from 3.0) and haagent does not speak MONGODB-CR", wire.Version(im.MaxWireVersion))
		if im.MaxWireVersion >= wire.SCRAMMinWire {
			what = fmt.Sprintf("the URIs ask for authMechanism=%s, which haagent checks on MongoDB 3.6 or later only (before that: SCRAM-SHA-1)", g.cs.AuthMechanism)
		}
		who := "the URIs' user"
		if g.cs.Username != "" {
			who = fmt.Sprintf("%q", g.cs.Username)
		}
		res.add(findings.New(findings.MongoVersionLimited, g.target,
			fmt.Sprintf("%s runs MongoDB %s (wire version %d); the password and privileges of %s were not checked: %s", seed, wire.Version(im.MaxWireVersion), im.MaxWireVersion, who, what),
			"isMaster.maxWireVersion").WithFix("nothing to do if the services already work with this server; haagent checked connectivity, TLS and the replica set"))
	}
	if status != nil {
		for _, f := range mongoAuthAndPrivileges(ctx, g, seed, im, status) {
			add(f)
		}
	}
	res.check(Checked{Service: "mongo", Target: g.target, OK: ok, Detail: detail})
}

// dialMongo opens a raw connection to hostport, TLS as the URI says.
func (p *prober) dialMongo(ctx context.Context, hostport string, useTLS, verify bool) (net.Conn, error) {
	ep := splitHostPort(hostport)
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ep.Host, ep.Port))
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", hostport, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl.Add(-100 * time.Millisecond))
	}
	if useTLS {
		tc := tls.Client(conn, &tls.Config{ServerName: ep.Host, RootCAs: p.opts.RootCAs, InsecureSkipVerify: !verify, MinVersion: tls.VersionTLS12}) //nolint:gosec // unverified only for isMaster, after the verified attempt failed and was reported
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, &tlsHandshakeError{err}
		}
		conn = tc
	}
	return conn, nil
}

// isMaster asks isMaster over OP_QUERY on a raw connection.
func (p *prober) isMaster(ctx context.Context, hostport string, useTLS, verify bool) (wire.IsMaster, error) {
	conn, err := p.dialMongo(ctx, hostport, useTLS, verify)
	if err != nil {
		return wire.IsMaster{}, err
	}
	defer conn.Close()
	return wire.LegacyIsMaster(conn)
}

type tlsHandshakeError struct{ err error }

func (e *tlsHandshakeError) Error() string { return "TLS handshake: " + e.err.Error() }
func (e *tlsHandshakeError) Unwrap() error { return e.err }

func mongoConnFinding(g *mongoGroup, host string, useTLS bool, err error) findings.Finding {
	var hs *tlsHandshakeError
	ev := wire.ServerText(err.Error())
	switch {
	case isTimeout(err):
		return findings.New(findings.ProtocolTimeout, g.target, fmt.Sprintf("%s accepts connections but did not answer isMaster", host), ev)
	case useTLS && errors.As(err, &hs):
		return findings.New(findings.TLSRequired, g.target, fmt.Sprintf("the URI says ssl=true but %s does not complete a TLS handshake (it may not use TLS)", host), ev).
			WithFix("remove ssl=true from the URIs if the server has no TLS, or enable TLS on the server (net.ssl.mode: requireSSL)")
	case !useTLS && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || strings.Contains(err.Error(), "not a MongoDB message")):
		return findings.New(findings.TLSRequired, g.target, fmt.Sprintf("%s closed the connection on a plain isMaster: it likely requires TLS, and the URI lacks ssl=true", host), ev).
			WithFix("add ssl=true (or tls=true) to the URIs: " + strings.Join(g.vars, ", "))
	}
	return findings.New(findings.ProbeInconclusive, g.target, fmt.Sprintf("isMaster on %s failed", host), ev)
}

// statusFunc authenticates against authSource as the URIs say and returns connectionStatus
// with showPrivileges, over the same connection.
type statusFunc func(ctx context.Context, authSource string) (bson.Raw, error)

// mongoAuthAndPrivileges authenticates as the services do and reads the user's effective
// privileges (connectionStatus with showPrivileges, so root, readWriteAnyDatabase and custom
// roles count), not its role names.
func mongoAuthAndPrivileges(ctx context.Context, g *mongoGroup, seed string, im wire.IsMaster, status statusFunc) []findings.Finding {
	raw, err := status(ctx, g.authSource())
	if err != nil {
		ev := wire.ServerText(err.Error())
		switch {
		case mongoCode(err) == 18:
			fix := "check the user name and password in " + strings.Join(g.vars, ", ") + "; percent-encode special characters in the password"
			if im.MaxWireVersion < 7 {
				// 3.x answers SCRAM for a user with only MONGODB-CR credentials with the
				// same code 18; haagent does not try MONGODB-CR (an MD5 exchange).
				fix += `. A user created before MongoDB 3.0 may hold only MONGODB-CR credentials, which this server refuses in the same words: upgrade them once, as a root user, with db.adminCommand({authSchemaUpgrade: 1}) (MongoDB 3.0 to 3.6), then check again`
			}
			f := findings.New(findings.MongoAuthFailed, g.target,
				fmt.Sprintf("MongoDB at %s rejected user %q authenticating against database %q", seed, g.cs.Username, g.authSource()), "AuthenticationFailed (code 18)").
				WithFix(fix)
			if g.authSource() != "admin" {
				if _, err2 := status(ctx, "admin"); err2 == nil {
					f = f.WithFix(fmt.Sprintf("the user exists in the admin database: add authSource=admin to the URIs (%s)", strings.Join(g.vars, ", ")))
					f.Summary += "; the same credentials work with authSource=admin"
				}
			}
			return []findings.Finding{f}
		case errors.Is(err, wire.ErrServerUnproven):
			return []findings.Finding{findings.New(findings.ProbeInconclusive, g.target,
				fmt.Sprintf("MongoDB at %s did not prove it holds the credentials of user %q (SCRAM server signature): an impostor at that address, or a broken server", seed, g.cs.Username), ev).
				WithFix("check that " + seed + " is the intended MongoDB server (use TLS with a verified certificate: ssl=true), and the user's credentials on it")}
		case isTimeout(err):
			return []findings.Finding{findings.New(findings.ProtocolTimeout, g.target, fmt.Sprintf("MongoDB at %s did not complete the authentication of user %q in time", seed, g.cs.Username), ev)}
		}
		return []findings.Finding{findings.New(findings.ProbeInconclusive, g.target, fmt.Sprintf("authenticating user %q against database %q on %s, or asking it for connectionStatus, failed", g.cs.Username, g.authSource(), seed), ev)}
	}
	var cs struct {
		AuthInfo struct {
			Users []struct {
				User string `bson:"user"`
				DB   string `bson:"db"`
			} `bson:"authenticatedUsers"`
			Privileges *[]struct {
				Resource struct {
					DB          *string `bson:"db"`
					Collection  *string `bson:"collection"`
					AnyResource bool    `bson:"anyResource"`
				} `bson:"resource"`
				Actions []string `bson:"actions"`
			} `bson:"authenticatedUserPrivileges"`
		} `bson:"authInfo"`
	}
	if err := bson.Unmarshal(raw, &cs); err != nil {
		return []findings.Finding{findings.New(findings.ProbeInconclusive, g.target, "cannot read the connectionStatus answer", wire.ServerText(err.Error()))}
	}
	user, userDB := g.cs.Username, g.authSource()
	if user == "" && len(cs.AuthInfo.Users) > 0 {
		// A URI without credentials on a server that authenticates otherwise (x509).
		user, userDB = cs.AuthInfo.Users[0].User, cs.AuthInfo.Users[0].DB
	}
	if user == "" {
		return nil // no authentication: nothing to check privileges for
	}
	if cs.AuthInfo.Privileges == nil {
		return []findings.Finding{findings.New(findings.ProbeInconclusive, g.target, fmt.Sprintf("the server did not report the privileges of user %q (connectionStatus showPrivileges)", user), "authInfo.authenticatedUserPrivileges is absent").
			WithFix(fmt.Sprintf("check by hand that %q has readWrite on %s: db.runCommand({connectionStatus: 1, showPrivileges: true}); FerretDB and some managed services do not report privileges", user, strings.Join(g.dbs, ", ")))}
	}
	authed := false
	for _, u := range cs.AuthInfo.Users {
		authed = authed || (u.User == user && u.DB == userDB)
	}
	if !authed {
		// The privileges would be an unauthenticated connection's (none): not the user's.
		return []findings.Finding{findings.New(findings.ProbeInconclusive, g.target,
			fmt.Sprintf("the authentication of user %q ended, but connectionStatus does not list it among the connection's users", user), "authInfo.authenticatedUsers")}
	}
	var out []findings.Finding
	for _, db := range g.dbs {
		have := map[string]bool{}
		for _, pr := range *cs.AuthInfo.Privileges {
			r := pr.Resource
			matches := r.AnyResource ||
				(r.DB != nil && (*r.DB == db || *r.DB == "") && r.Collection != nil && *r.Collection == "")
			if matches {
				for _, a := range pr.Actions {
					have[a] = true
				}
			}
		}
		var missing []string
		for _, a := range readWrite {
			if !have[a] && !have["anyAction"] {
				missing = append(missing, a)
			}
		}
		if len(missing) > 0 {
			out = append(out, findings.New(findings.MongoPrivilegeMissing, g.target,
				fmt.Sprintf("user %q cannot %s in database %q, which %s names", user, strings.Join(missing, "/"), db, varsNaming(g, db)),
				"connectionStatus authenticatedUserPrivileges").
				WithFix(fmt.Sprintf(`db.getSiblingDB(%q).grantRolesToUser(%q, [{role: "readWrite", db: %q}])`, userDB, user, db)))
		}
	}
	return out
}

var connectionStatusCmd = bson.D{{Key: "connectionStatus", Value: 1}, {Key: "showPrivileges", Value: true}}

// connectionStatus authenticates with the Go driver (3.6 and later) over a verified connection.
func (p *prober) connectionStatus(ctx context.Context, g *mongoGroup, seed, authSource string, useTLS bool) (bson.Raw, error) {
	o := options.Client().SetHosts([]string{seed}).SetDirect(true).SetAppName("haagent-probe")
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl) - 100*time.Millisecond
		o.SetServerSelectionTimeout(left).SetConnectTimeout(left)
	}
	if useTLS {
		o.SetTLSConfig(&tls.Config{RootCAs: p.opts.RootCAs, MinVersion: tls.VersionTLS12})
	}
	if g.cs.Username != "" {
		o.SetAuth(options.Credential{Username: g.cs.Username, Password: g.cs.Password, PasswordSet: g.cs.PasswordSet,
			AuthSource: authSource, AuthMechanism: g.cs.AuthMechanism})
	}
	c, err := mongo.Connect(ctx, o)
	if err != nil {
		return nil, err
	}
	defer c.Disconnect(context.Background())
	return c.Database(authSource).RunCommand(ctx, connectionStatusCmd).Raw()
}

// legacyConnectionStatus authenticates with SCRAM-SHA-1 over OP_QUERY (MongoDB 3.0 to 3.4) on
// a verified connection, then asks connectionStatus on the same one: the privileges are those
// of the connection the user authenticated on.
func (p *prober) legacyConnectionStatus(ctx context.Context, g *mongoGroup, seed, authSource string, useTLS bool) (bson.Raw, error) {
	conn, err := p.dialMongo(ctx, seed, useTLS, true)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if err := (wire.SCRAMSHA1{Source: authSource, User: g.cs.Username, Password: g.cs.Password}).Authenticate(conn); err != nil {
		return nil, fmt.Errorf("authenticating to %s: %w", seed, err)
	}
	raw, err := wire.Command(conn, authSource, connectionStatusCmd)
	if err != nil {
		return nil, fmt.Errorf("asking %s for connectionStatus: %w", seed, err)
	}
	return raw, nil
}

func mongoCode(err error) int32 {
	var we *wire.CommandError
	if errors.As(err, &we) {
		return we.Code
	}
	var de driver.Error
	if errors.As(err, &de) {
		return de.Code
	}
	var ce mongo.CommandError
	if errors.As(err, &ce) {
		return ce.Code
	}
	if strings.Contains(err.Error(), "AuthenticationFailed") || strings.Contains(err.Error(), "Authentication failed") {
		return 18
	}
	return 0
}

// varsNaming lists the variables whose URI names db.
func varsNaming(g *mongoGroup, db string) string {
	var out []string
	for i, v := range g.vars {
		if i < len(g.varDBs) && g.varDBs[i] == db {
			out = append(out, v)
		}
	}
	if len(out) == 0 {
		return strings.Join(g.vars, ", ")
	}
	return strings.Join(out, ", ")
}

// quotesPiece reports whether msg holds any 3 bytes in a row of secret: a parser quoting the
// piece of a password it took for a host or an option.
func quotesPiece(msg, secret string) bool {
	for i := 0; i+3 <= len(secret); i++ {
		if strings.Contains(msg, secret[i:i+3]) {
			return true
		}
	}
	return secret != "" && len(secret) < 3 && strings.Contains(msg, secret)
}
